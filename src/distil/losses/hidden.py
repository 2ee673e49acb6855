"""Losses on hidden states: MSE with a learned projection (TinyBERT) and cosine alignment (DistilBERT).

Padding tokens are excluded through the batch's (B, L) attention mask. When student and teacher widths differ,
the modules hold a trainable ``nn.Linear(student_dim, teacher_dim)`` (TinyBERT's W_h); it is reachable through
``.parameters()`` so the optimizer trains it, and it belongs to the loss, not to the saved student.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distil.errors import DistilError
from distil.losses.logits import as_constant, check_mask, masked_mean


def check_same_tokens(what: str, student_x: Tensor, teacher_x: Tensor, kind: str = "hidden states") -> None:
    """Raise DistilError unless both are (B, L, D) over the same batch and tokens (widths may differ)."""
    if student_x.dim() != 3 or teacher_x.dim() != 3:
        raise DistilError(
            f"{what}: {kind} must be (B, L, D); got student {tuple(student_x.shape)}, teacher {tuple(teacher_x.shape)}"
        )
    if student_x.shape[:2] != teacher_x.shape[:2]:
        raise DistilError(
            f"{what}: student (B, L) = {tuple(student_x.shape[:2])} != teacher "
            f"{tuple(teacher_x.shape[:2])}; feed both models the same tokenised batch"
        )


def _check_hidden(what: str, student_hidden: Tensor, teacher_hidden: Tensor, module: str) -> None:
    check_same_tokens(what, student_hidden, teacher_hidden)
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        d_s, d_t = student_hidden.shape[-1], teacher_hidden.shape[-1]
        raise DistilError(
            f"{what}: student width {d_s} != teacher width {d_t}; use {module}(student_dim={d_s}, "
            f"teacher_dim={d_t}), which learns a projection"
        )


def hidden_mse_loss(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between student and teacher hidden states of the same width, padding excluded.

    The mean runs over the selected tokens and all D dimensions (TinyBERT's ``MSE(H^S W_h, H^T)`` with the
    projection applied beforehand; see :class:`HiddenMSELoss`). Without a mask it equals ``F.mse_loss``.

    Args:
        student_hidden: (B, L, D) student hidden states (already projected if widths differed).
        teacher_hidden: (B, L, D) teacher hidden states; treated as a constant.
        mask: optional (B, L) attention mask, 1 = token, 0 = padding.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: not 3-D, (B, L) differ, widths differ (the message points to HiddenMSELoss), bad mask shape.

    References:
        Jiao et al. "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020.

    Example:
        >>> import torch
        >>> h = torch.randn(2, 5, 8)
        >>> float(hidden_mse_loss(h, h, torch.ones(2, 5)))
        0.0
    """
    _check_hidden("hidden_mse_loss", student_hidden, teacher_hidden, "HiddenMSELoss")
    mask = check_mask("hidden_mse_loss", mask, tuple(student_hidden.shape[:2]))
    per_token = (student_hidden.float() - as_constant(teacher_hidden).float()).pow(2).mean(-1)  # (B, L)
    return masked_mean(per_token, mask)


def hidden_cosine_loss(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the selected tokens of ``1 - cos(student_token, teacher_token)``.

    DistilBERT's ``CosineEmbeddingLoss`` with target 1 on the last hidden states of non-padding tokens.

    Args:
        student_hidden: (B, L, D) student hidden states (already projected if widths differed).
        teacher_hidden: (B, L, D) teacher hidden states; treated as a constant.
        mask: optional (B, L) attention mask, 1 = token, 0 = padding.

    Returns:
        Scalar float32 tensor in [0, 2].

    Raises:
        DistilError: not 3-D, (B, L) differ, widths differ (the message points to HiddenCosineLoss), bad mask.

    References:
        Sanh et al. "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter", 2019.
        arXiv:1910.01108.

    Example:
        >>> import torch
        >>> h = torch.randn(2, 5, 8)
        >>> round(float(hidden_cosine_loss(h, 3 * h)), 6)
        0.0
    """
    _check_hidden("hidden_cosine_loss", student_hidden, teacher_hidden, "HiddenCosineLoss")
    mask = check_mask("hidden_cosine_loss", mask, tuple(student_hidden.shape[:2]))
    cosine = F.cosine_similarity(student_hidden.float(), as_constant(teacher_hidden).float(), dim=-1)  # (B, L)
    return masked_mean(1.0 - cosine, mask)


def make_projection(student_dim: int, teacher_dim: int) -> nn.Module:
    """``nn.Linear(student_dim, teacher_dim)`` with bias (TinyBERT's fit_dense) if widths differ, else Identity."""
    for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DistilError(f"{name}={value!r}: must be a positive int (the model's hidden size)")
    return nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim)


def _project(what: str, projection: nn.Module, student_dim: int, student_hidden: Tensor) -> Tensor:
    if student_hidden.shape[-1] != student_dim:
        raise DistilError(
            f"{what}: student hidden width {student_hidden.shape[-1]} != student_dim={student_dim} given at "
            "construction; build the loss with the student's hidden size"
        )
    return projection(student_hidden)  # (B, L, teacher_dim)


class HiddenMSELoss(nn.Module):
    """:func:`hidden_mse_loss` after a learned projection of the student (TinyBERT's W_h) when widths differ.

    Args:
        student_dim: student hidden size D_s.
        teacher_dim: teacher hidden size D_t; if different, ``self.projection = nn.Linear(D_s, D_t)`` (trainable,
            reachable through ``.parameters()``; not part of the saved student), else ``nn.Identity()``.

    Forward:
        ``forward(student_hidden (B, L, D_s), teacher_hidden (B, L, D_t), mask (B, L) | None) -> scalar``.

    Raises:
        DistilError: non-positive dims, or a student width other than ``student_dim`` at forward.

    References:
        Jiao et al. "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020.

    Example:
        >>> import torch
        >>> loss_fn = HiddenMSELoss(student_dim=32, teacher_dim=64)
        >>> loss = loss_fn(torch.randn(2, 5, 32), torch.randn(2, 5, 64), torch.ones(2, 5))
        >>> optimizer = torch.optim.AdamW([*student.parameters(), *loss_fn.parameters()])  # doctest: +SKIP
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.projection = make_projection(student_dim, teacher_dim)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        projected = _project("HiddenMSELoss", self.projection, self.student_dim, student_hidden)
        return hidden_mse_loss(projected, teacher_hidden, mask)


class HiddenCosineLoss(nn.Module):
    """:func:`hidden_cosine_loss` after a learned projection of the student when widths differ.

    Args:
        student_dim: student hidden size D_s.
        teacher_dim: teacher hidden size D_t; if different, ``self.projection = nn.Linear(D_s, D_t)`` (trainable,
            not part of the saved student), else ``nn.Identity()``.

    Forward:
        ``forward(student_hidden (B, L, D_s), teacher_hidden (B, L, D_t), mask (B, L) | None) -> scalar``.

    Raises:
        DistilError: non-positive dims, or a student width other than ``student_dim`` at forward.

    References:
        Sanh et al. "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter", 2019.

    Example:
        >>> import torch
        >>> loss_fn = HiddenCosineLoss(student_dim=32, teacher_dim=32)
        >>> loss = loss_fn(torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.ones(2, 5))
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.projection = make_projection(student_dim, teacher_dim)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        projected = _project("HiddenCosineLoss", self.projection, self.student_dim, student_hidden)
        return hidden_cosine_loss(projected, teacher_hidden, mask)
