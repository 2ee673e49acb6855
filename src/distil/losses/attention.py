"""Losses on attention maps: MSE on pre-softmax scores (TinyBERT) and KL on probabilities, head by head.

Both compare head h of the student with head h of the teacher, so head counts must match; with different head
counts use a relation loss (``minilmv2_qkv_relation``). Positions whose query or key is padding are excluded
(TinyBERT instead replaced the ``-inf`` padding scores by 0 and kept them in the mean).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distil.errors import DistilError
from distil.losses.logits import as_constant, check_mask


def check_attention_shapes(what: str, student: Tensor, teacher: Tensor) -> None:
    """Raise DistilError unless both are (B, H, L, L) with the same B, H and L; a head mismatch suggests MiniLMv2."""
    if student.dim() != 4 or teacher.dim() != 4:
        raise DistilError(
            f"{what}: attention maps must be (B, H, L, L); got student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)}"
        )
    if student.shape[1] != teacher.shape[1]:
        raise DistilError(
            f"{what}: student has {student.shape[1]} attention heads, teacher has {teacher.shape[1]}; this loss "
            "compares heads one to one. Use 'minilmv2_qkv_relation' (qkv_relation_loss), which splits queries/"
            "keys/values into a shared number of relation heads and works across head counts"
        )
    if student.shape != teacher.shape:
        raise DistilError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}; feed both "
            "models the same tokenised batch"
        )


def pair_mask(what: str, attention_mask: Tensor | None, batch: int, length: int) -> Tensor | None:
    """(B, L) token mask -> (B, 1, L, L) bool mask, True where both the query and the key are real tokens."""
    mask = check_mask(what, attention_mask, (batch, length))
    if mask is None:
        return None
    return mask[:, None, :, None] & mask[:, None, None, :]  # (B, 1, L, L)


def masked_row_kl(
    teacher_log_probs: Tensor, student_log_probs: Tensor, attention_mask: Tensor | None, what: str
) -> Tensor:
    """KL(teacher || student) of each query row over the real keys, averaged over heads and real query rows.

    Args:
        teacher_log_probs: (B, H, L, L) log-probabilities over keys (last dim); a constant.
        student_log_probs: (B, H, L, L).
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.
        what: the calling loss, for error messages.

    Returns:
        Scalar float32 tensor; 0 when no token is real.
    """
    batch, heads, length, _ = student_log_probs.shape
    elementwise = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)  # (B, H, L, L)
    mask = check_mask(what, attention_mask, (batch, length))
    if mask is None:
        return elementwise.sum(-1).mean()
    zero = torch.zeros((), dtype=elementwise.dtype, device=elementwise.device)
    per_row = torch.where(mask[:, None, None, :], elementwise, zero).sum(-1)  # (B, H, L) over real keys
    per_row = torch.where(mask[:, None, :], per_row, zero)  # (B, H, L) real queries only
    return per_row.sum() / (mask.sum() * heads).clamp_min(1).to(per_row.dtype)


def safe_log(probs: Tensor) -> Tensor:
    """float32 log of probabilities, clamped at the smallest normal float so a zero gives a finite log, not -inf."""
    probs = probs.float()
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def attention_mse_loss(student_scores: Tensor, teacher_scores: Tensor, attention_mask: Tensor | None) -> Tensor:
    """TinyBERT's attention loss: MSE between pre-softmax attention scores, head by head, padding excluded.

    ``mean over heads h and real (query, key) pairs of (A^S_h - A^T_h)^2``. Pairs whose query or key is padding
    are masked out of both the sum and the count; TinyBERT replaced the ``-inf`` padding scores by 0 and kept them,
    which dilutes the loss by the padding fraction. Computed in float32.

    Args:
        student_scores: (B, H, L, L) pre-softmax scores (padding keys may hold ~finfo.min; they are ignored).
        teacher_scores: (B, H, L, L); treated as a constant.
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: not 4-D, head counts differ (names both and suggests a relation loss), other shape mismatch.

    References:
        Jiao et al. "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020.

    Example:
        >>> s = torch.randn(2, 4, 5, 5)
        >>> float(attention_mse_loss(s, s, torch.ones(2, 5)))
        0.0
    """
    check_attention_shapes("attention_mse_loss", student_scores, teacher_scores)
    batch, heads, length, _ = student_scores.shape
    valid = pair_mask("attention_mse_loss", attention_mask, batch, length)
    student, teacher = student_scores.float(), as_constant(teacher_scores).float()
    if valid is None:
        return (student - teacher).pow(2).mean()
    # Zero both sides before subtracting: padding scores near finfo.min could overflow to inf and give nan grads.
    zero = torch.zeros((), dtype=student.dtype, device=student.device)
    student, teacher = torch.where(valid, student, zero), torch.where(valid, teacher, zero)  # (B, H, L, L)
    return (student - teacher).pow(2).sum() / (valid.sum() * heads).clamp_min(1).to(student.dtype)


def attention_kl_loss(student_probs: Tensor, teacher_probs: Tensor, attention_mask: Tensor | None) -> Tensor:
    """KL(teacher || student) between attention distributions of each query row, averaged over heads and real rows.

    Padding keys are left out of the sum over keys (the probabilities are not renormalised: a model that masks
    padding puts ~0 mass there) and padding query rows out of the average. Computed in float32.

    Args:
        student_probs: (B, H, L, L) attention probabilities (softmax over the last dim).
        teacher_probs: (B, H, L, L); treated as a constant.
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: not 4-D, head counts differ (names both and suggests a relation loss), other shape mismatch.

    References:
        Wang et al. "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
        Transformers", NeurIPS 2020 (its attention-transfer term; see also minilm.py).

    Example:
        >>> p = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> round(float(attention_kl_loss(p, p, torch.ones(2, 5))), 6)
        0.0
    """
    check_attention_shapes("attention_kl_loss", student_probs, teacher_probs)
    teacher_log_probs = safe_log(as_constant(teacher_probs))  # (B, H, L, L)
    student_log_probs = safe_log(student_probs)  # (B, H, L, L)
    return masked_row_kl(teacher_log_probs, student_log_probs, attention_mask, "attention_kl_loss")


class AttentionMSELoss(nn.Module):
    """Module form of :func:`attention_mse_loss` (TinyBERT's attention-score MSE).

    Forward: ``forward(student_scores (B, H, L, L), teacher_scores (B, H, L, L), attention_mask (B, L) | None)``
    -> scalar.

    Raises:
        DistilError: see :func:`attention_mse_loss`.

    References:
        Jiao et al. "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020.

    Example:
        >>> loss = AttentionMSELoss()(torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5), torch.ones(2, 5))
    """

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return attention_mse_loss(student_scores, teacher_scores, attention_mask)


class AttentionKLLoss(nn.Module):
    """Module form of :func:`attention_kl_loss` (KL teacher || student over keys, per head and query row).

    Forward: ``forward(student_probs (B, H, L, L), teacher_probs (B, H, L, L), attention_mask (B, L) | None)``
    -> scalar.

    Raises:
        DistilError: see :func:`attention_kl_loss`.

    References:
        Wang et al. "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
        Transformers", NeurIPS 2020.

    Example:
        >>> p = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> loss = AttentionKLLoss()(p, p, torch.ones(2, 5))
    """

    def forward(self, student_probs: Tensor, teacher_probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return attention_kl_loss(student_probs, teacher_probs, attention_mask)
