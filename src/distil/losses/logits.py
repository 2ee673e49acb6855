"""Losses on output logits: Hinton's KD (KL at a temperature, times T^2), MSE on logits, and the KD objective.

Conventions (written out in docs/losses.md): alpha weights the hard-label cross-entropy and ``1 - alpha`` the
soft term; the KL runs teacher || student and carries the T^2 factor; "batchmean" means summed over classes and
averaged over rows (examples, or selected tokens for (B, L, C) logits). Also home to the small helpers every
loss family shares (teacher targets out of inference mode, masked means).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distil.errors import DistilError

SOFT_LOSSES: tuple[str, ...] = ("kl", "mse")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------
# helpers shared by every loss family


def as_constant(tensor: Tensor) -> Tensor:
    """A teacher output (or mask) as a constant for a loss: detached and, if needed, cloned out of inference mode.

    The teacher runs under ``torch.inference_mode``; autograd refuses to save such tensors for backward
    ("Inference tensors cannot be saved for backward"), so every loss passes teacher tensors through here.
    """
    tensor = tensor.detach()
    if tensor.is_inference():
        with torch.inference_mode(False):
            return tensor.clone()
    return tensor


def check_same_shape(what: str, student: Tensor, teacher: Tensor, fix: str) -> None:
    """Raise DistilError unless ``student`` and ``teacher`` have the same shape."""
    if student.shape != teacher.shape:
        raise DistilError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}; {fix}"
        )


def check_mask(what: str, mask: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    """Validate a token mask (1 = token, 0 = padding) against the leading ``shape``; return it as a bool constant."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise DistilError(
            f"{what}: mask shape {tuple(mask.shape)} does not match {tuple(shape)}; pass the batch's attention "
            "mask with 1 for real tokens and 0 for padding"
        )
    return as_constant(mask).bool()


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` over the positions where the bool ``mask`` (same shape) is True; 0 if none is."""
    if mask is None:
        return values.mean()
    values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return values.sum() / mask.sum().clamp_min(1).to(values.dtype)


def _check_temperature(kd_temperature: float) -> None:
    if not (isinstance(kd_temperature, (int, float)) and math.isfinite(kd_temperature) and kd_temperature > 0):
        raise DistilError(f"kd_temperature={kd_temperature!r}: must be a finite number > 0 (1.0 = no softening)")


def _check_logits(what: str, student_logits: Tensor, teacher_logits: Tensor) -> None:
    check_same_shape(
        what, student_logits, teacher_logits, "student and teacher must share the label set (same number of classes)"
    )
    if student_logits.dim() not in (2, 3):
        raise DistilError(f"{what}: logits have shape {tuple(student_logits.shape)}; expected (B, C) or (B, L, C)")


# ----------------------------------------------------------------------------------------------------------
# pure functions


def kd_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, kd_temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Hinton's soft-target loss: T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch-averaged.

    Summed over classes, averaged over rows: over the B examples for (B, C) logits (exactly
    ``T**2 * F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean")``), over the selected tokens for
    (B, L, C) logits (``F.kl_div``'s "batchmean" would divide by B only). Computed in float32.

    Args:
        student_logits: (B, C) or (B, L, C) raw student logits.
        teacher_logits: same shape as ``student_logits``; treated as a constant.
        kd_temperature: T > 0; both distributions are softened by it and the result is scaled by T^2 so the
            soft gradients keep their magnitude as T changes.
        mask: optional (B,) or (B, L) mask, 1 for rows/tokens to include and 0 for padding.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: shapes differ, logits are not 2-D or 3-D, the mask shape is wrong, or kd_temperature <= 0.

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015. arXiv:1503.02531.

    Example:
        >>> s, t = torch.randn(4, 3), torch.randn(4, 3)
        >>> kd_kl_loss(s, t, kd_temperature=2.0).shape
        torch.Size([])
    """
    _check_logits("kd_kl_loss", student_logits, teacher_logits)
    _check_temperature(kd_temperature)
    mask = check_mask("kd_kl_loss", mask, tuple(student_logits.shape[:-1]))
    student_log_probs = F.log_softmax(student_logits.float() / kd_temperature, dim=-1)  # (..., C)
    teacher_log_probs = F.log_softmax(as_constant(teacher_logits).float() / kd_temperature, dim=-1)  # (..., C)
    per_row = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)  # (B,) or (B, L)
    return kd_temperature**2 * masked_mean(per_row, mask)


def logits_mse_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between raw student and teacher logits (no temperature): logit matching, Ba & Caruana 2014.

    Without a mask it equals ``F.mse_loss(student_logits, teacher_logits)``; with a mask, the mean runs over the
    classes of the selected rows/tokens. Computed in float32.

    Args:
        student_logits: (B, C) or (B, L, C).
        teacher_logits: same shape; treated as a constant.
        mask: optional (B,) or (B, L) mask, 1 = include.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: shapes differ, logits are not 2-D or 3-D, or the mask shape is wrong.

    References:
        Ba, Caruana. "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.

    Example:
        >>> s = torch.randn(4, 3)
        >>> float(logits_mse_loss(s, s))
        0.0
    """
    _check_logits("logits_mse_loss", student_logits, teacher_logits)
    mask = check_mask("logits_mse_loss", mask, tuple(student_logits.shape[:-1]))
    per_row = (student_logits.float() - as_constant(teacher_logits).float()).pow(2).mean(-1)  # (B,) or (B, L)
    return masked_mean(per_row, mask)


def _cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise DistilError(
            f"kd_objective: labels shape {tuple(labels.shape)} does not match logits {tuple(student_logits.shape)}; "
            f"expected {tuple(student_logits.shape[:-1])} (class indices, {IGNORE_INDEX} = ignore)"
        )
    num_classes = student_logits.shape[-1]
    flat_logits = student_logits.float().reshape(-1, num_classes)  # (B * L, C) or (B, C)
    return F.cross_entropy(flat_logits, as_constant(labels).reshape(-1).long(), ignore_index=IGNORE_INDEX)


def kd_objective(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    alpha: float,
    kd_temperature: float,
    soft_loss: str = "kl",
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The classic KD objective: ``alpha * CE(student, labels) + (1 - alpha) * soft``.

    ``soft`` is :func:`kd_kl_loss` (already scaled by T^2) or :func:`logits_mse_loss`. With no teacher logits the
    objective is plain cross-entropy (alpha is ignored); with no labels, alpha must be 0.

    Args:
        student_logits: (B, C) or (B, L, C).
        teacher_logits: same shape, or None for label-only training.
        labels: (B,) or (B, L) class indices (-100 = ignored), or None when alpha == 0.
        alpha: weight in [0, 1] of the hard-label cross-entropy; the soft term gets ``1 - alpha``.
        kd_temperature: T for the KL soft term (unused by "mse").
        soft_loss: "kl" or "mse".
        mask: optional (B,) or (B, L) mask for the soft term (1 = include); CE uses -100 labels instead.

    Returns:
        ``(total, parts)``: scalar total, and the unweighted parts ``{"ce": ..., "kd": ...}`` (each present only
        if computed), still attached to the graph.

    Raises:
        DistilError: alpha outside [0, 1], unknown soft_loss, labels missing while alpha > 0 or without a teacher,
            or any shape error from the parts.

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015. arXiv:1503.02531.

    Example:
        >>> s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
        >>> total, parts = kd_objective(s, t, y, alpha=0.5, kd_temperature=2.0)
        >>> sorted(parts)
        ['ce', 'kd']
    """
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise DistilError(f"alpha={alpha!r}: must be in [0, 1] (weight of the hard-label cross-entropy)")
    if soft_loss not in SOFT_LOSSES:
        raise DistilError(f"soft_loss={soft_loss!r}: must be one of {list(SOFT_LOSSES)}")
    parts: dict[str, Tensor] = {}
    if labels is not None:
        parts["ce"] = _cross_entropy(student_logits, labels)
    elif teacher_logits is None:
        raise DistilError("kd_objective: labels and teacher_logits are both None; pass labels, a teacher, or both")
    elif alpha > 0:
        raise DistilError(f"kd_objective: labels=None but alpha={alpha}; pass labels or set alpha=0 (soft term only)")
    if teacher_logits is None:
        return parts["ce"], parts
    if soft_loss == "kl":
        parts["kd"] = kd_kl_loss(student_logits, teacher_logits, kd_temperature, mask)
    else:
        parts["kd"] = logits_mse_loss(student_logits, teacher_logits, mask)
    total = (1.0 - alpha) * parts["kd"]
    if "ce" in parts:
        total = alpha * parts["ce"] + total
    return total, parts


# ----------------------------------------------------------------------------------------------------------
# module


class KDLoss(nn.Module):
    """The KD objective ``alpha * CE + (1 - alpha) * soft`` as a module holding alpha, T and the soft loss.

    Args:
        alpha: weight in [0, 1] of the hard-label cross-entropy; the soft term gets ``1 - alpha``.
        kd_temperature: T > 0 of the KL soft term (the KL is scaled by T^2).
        soft_loss: "kl" (Hinton) or "mse" (on raw logits).

    Forward args/returns: see :func:`kd_objective`; ``forward(student_logits, teacher_logits, labels=None,
    mask=None) -> (total, {"ce": ..., "kd": ...})``.

    Raises:
        DistilError: on a bad alpha, kd_temperature or soft_loss, at construction.

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015. arXiv:1503.02531.

    Example:
        >>> loss_fn = KDLoss(alpha=0.5, kd_temperature=2.0)
        >>> total, parts = loss_fn(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 0]))
    """

    def __init__(self, alpha: float, kd_temperature: float, soft_loss: str = "kl"):
        super().__init__()
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise DistilError(f"alpha={alpha!r}: must be in [0, 1] (weight of the hard-label cross-entropy)")
        _check_temperature(kd_temperature)
        if soft_loss not in SOFT_LOSSES:
            raise DistilError(f"soft_loss={soft_loss!r}: must be one of {list(SOFT_LOSSES)}")
        self.alpha = float(alpha)
        self.kd_temperature = float(kd_temperature)
        self.soft_loss = soft_loss

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return kd_objective(
            student_logits, teacher_logits, labels, self.alpha, self.kd_temperature, self.soft_loss, mask
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, kd_temperature={self.kd_temperature}, soft_loss={self.soft_loss!r}"
