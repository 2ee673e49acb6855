"""MiniLM's deep self-attention distillation: attention distributions and value relations (v1), and multi-head
query/key/value relations (v2), all as KL(teacher || student) over keys, padding excluded.

A relation of X (B, L, D) split into R heads is ``softmax(X_r X_r^T / sqrt(d_r))`` (B, R, L, L): an L x L map whatever
the width, which is why these losses work when student and teacher hidden sizes differ, and (v2) head counts too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distil.errors import DistilError
from distil.losses.attention import check_attention_shapes, masked_row_kl, safe_log
from distil.losses.hidden import check_same_tokens
from distil.losses.logits import as_constant, check_mask


def _check_sequences(what: str, student_x: Tensor, teacher_x: Tensor) -> None:
    check_same_tokens(what, student_x, teacher_x, kind="inputs (q/k/v projection outputs)")


def relation_log_probs(x: Tensor, num_heads: int, attention_mask: Tensor | None, what: str, role: str) -> Tensor:
    """``log_softmax(X_r X_r^T / sqrt(d_r))`` over keys for each of ``num_heads`` heads, padding keys masked.

    Args:
        x: (B, L, D) queries, keys or values (heads concatenated, as the q/k/v Linear outputs them).
        num_heads: R; D must be divisible by R.
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.
        what, role: the calling loss and "student"/"teacher", for error messages.

    Returns:
        (B, R, L, L) float32 log-probabilities.
    """
    batch, length, width = x.shape
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise DistilError(f"{what}: {role} head count {num_heads!r} must be a positive int")
    if width % num_heads != 0:
        divisors = [r for r in range(1, width + 1) if width % r == 0]
        raise DistilError(
            f"{what}: {role} width {width} is not divisible by {num_heads} heads; choose a head count that "
            f"divides {width}, e.g. one of {divisors[-8:]}"
        )
    head_dim = width // num_heads
    heads = x.float().reshape(batch, length, num_heads, head_dim).transpose(1, 2)  # (B, R, L, d_r)
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(head_dim)  # (B, R, L, L)
    mask = check_mask(what, attention_mask, (batch, length))
    if mask is not None:
        # finfo.min rather than -inf: an all-padding row stays finite (uniform) instead of nan.
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)  # (B, R, L, L)
    return F.log_softmax(scores, dim=-1)


def self_attention_distribution_loss(
    student_probs: Tensor, teacher_probs: Tensor, attention_mask: Tensor | None
) -> Tensor:
    """MiniLM's attention transfer: KL(teacher || student) of the last layer's attention distributions.

    ``1 / (H |x|) * sum_h sum_t KL(A^T_{h,t} || A^S_{h,t})`` over real query rows t, padding keys excluded; the
    same computation as :func:`distil.losses.attention.attention_kl_loss`. Head counts must match.

    Args:
        student_probs: (B, H, L, L) attention probabilities of the student's last layer.
        teacher_probs: (B, H, L, L) of the teacher's last layer; treated as a constant.
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: not 4-D, head counts differ (suggests qkv_relation_loss), or other shape mismatch.

    References:
        Wang et al. "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
        Transformers", NeurIPS 2020. arXiv:2002.10957.

    Example:
        >>> p = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> round(float(self_attention_distribution_loss(p, p, torch.ones(2, 5))), 6)
        0.0
    """
    what = "self_attention_distribution_loss"
    check_attention_shapes(what, student_probs, teacher_probs)
    teacher_log_probs = safe_log(as_constant(teacher_probs))  # (B, H, L, L)
    return masked_row_kl(teacher_log_probs, safe_log(student_probs), attention_mask, what)


def value_relation_loss(
    student_values: Tensor,
    teacher_values: Tensor,
    num_heads_student: int,
    num_heads_teacher: int,
    attention_mask: Tensor | None,
) -> Tensor:
    """MiniLM's value-relation transfer: KL(teacher || student) of ``softmax(V_h V_h^T / sqrt(d_h))`` per head.

    The widths may differ (d_h = D / H on each side); v1 pairs heads one to one, so the head counts must match.

    Args:
        student_values: (B, L, D_s) output of the student's value projection (heads concatenated).
        teacher_values: (B, L, D_t) of the teacher; treated as a constant.
        num_heads_student: H of the student; D_s must be divisible by it.
        num_heads_teacher: H of the teacher; must equal num_heads_student.
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.

    Returns:
        Scalar float32 tensor, averaged over heads and real query rows.

    Raises:
        DistilError: head counts differ (suggests qkv_relation_loss), D not divisible by H, (B, L) mismatch.

    References:
        Wang et al. "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
        Transformers", NeurIPS 2020. arXiv:2002.10957.

    Example:
        >>> v = torch.randn(2, 5, 32)
        >>> round(float(value_relation_loss(v, v, 4, 4, torch.ones(2, 5))), 6)
        0.0
    """
    what = "value_relation_loss"
    _check_sequences(what, student_values, teacher_values)
    if num_heads_student != num_heads_teacher:
        raise DistilError(
            f"{what}: num_heads_student={num_heads_student} != num_heads_teacher={num_heads_teacher}; MiniLM v1 "
            "pairs heads one to one. Use 'minilmv2_qkv_relation' (qkv_relation_loss) with a num_relation_heads "
            "that divides both widths"
        )
    teacher = relation_log_probs(as_constant(teacher_values), num_heads_teacher, attention_mask, what, "teacher")
    student = relation_log_probs(student_values, num_heads_student, attention_mask, what, "student")
    return masked_row_kl(teacher, student, attention_mask, what)  # over (B, H, L, L)


def qkv_relation_loss(
    student_x: Tensor, teacher_x: Tensor, num_relation_heads: int, attention_mask: Tensor | None
) -> Tensor:
    """MiniLMv2's self-attention relation transfer for one of Q-Q, K-K or V-V.

    Both sides are split into the same number R of relation heads (concatenate the attention heads, re-split into
    R), ``relation = softmax(X_r X_r^T / sqrt(d_r))`` and the loss is KL(teacher || student) averaged over relation
    heads and real query rows. Hidden sizes and attention-head counts may differ; only D_s and D_t must be
    divisible by R. The paper sums this over Q-Q, K-K and V-V; call it once per relation and weight the parts.

    Args:
        student_x: (B, L, D_s) student queries, keys or values (the q/k/v Linear output).
        teacher_x: (B, L, D_t) the teacher's of the same kind; treated as a constant.
        num_relation_heads: R, e.g. 12 for base-size teachers, 48 for large ones (MiniLMv2).
        attention_mask: (B, L), 1 = token, 0 = padding; None = no padding.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: D_s or D_t not divisible by R (lists valid R), R not a positive int, (B, L) mismatch.

    References:
        Wang et al. "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing Pretrained
        Transformers", Findings of ACL 2021. arXiv:2012.15828.

    Example:
        >>> q_s, q_t = torch.randn(2, 5, 32), torch.randn(2, 5, 48)
        >>> loss = qkv_relation_loss(q_s, q_t, num_relation_heads=8, attention_mask=torch.ones(2, 5))
    """
    what = "qkv_relation_loss"
    _check_sequences(what, student_x, teacher_x)
    d_s, d_t = student_x.shape[-1], teacher_x.shape[-1]
    valid_r = (
        isinstance(num_relation_heads, int) and not isinstance(num_relation_heads, bool) and num_relation_heads > 0
    )
    if valid_r and (d_s % num_relation_heads or d_t % num_relation_heads):
        common = [r for r in range(1, math.gcd(d_s, d_t) + 1) if d_s % r == 0 and d_t % r == 0]
        raise DistilError(
            f"{what}: num_relation_heads={num_relation_heads} must divide both the student width {d_s} and the "
            f"teacher width {d_t}; valid values include {common[-8:]}"
        )
    teacher = relation_log_probs(as_constant(teacher_x), num_relation_heads, attention_mask, what, "teacher")
    student = relation_log_probs(student_x, num_relation_heads, attention_mask, what, "student")
    return masked_row_kl(teacher, student, attention_mask, what)  # over (B, R, L, L)


class MiniLMAttentionLoss(nn.Module):
    """Module form of :func:`self_attention_distribution_loss` (MiniLM's last-layer attention KL).

    Forward: ``forward(student_probs (B, H, L, L), teacher_probs (B, H, L, L), attention_mask (B, L) | None)``.

    Raises:
        DistilError: see :func:`self_attention_distribution_loss`.

    References:
        Wang et al. "MiniLM", NeurIPS 2020. arXiv:2002.10957.

    Example:
        >>> p = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> loss = MiniLMAttentionLoss()(p, p, torch.ones(2, 5))
    """

    def forward(self, student_probs: Tensor, teacher_probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self_attention_distribution_loss(student_probs, teacher_probs, attention_mask)


class ValueRelationLoss(nn.Module):
    """Module form of :func:`value_relation_loss`, holding both head counts.

    Args:
        num_heads_student: H of the student.
        num_heads_teacher: H of the teacher (must be equal; checked here, at construction).

    Forward: ``forward(student_values (B, L, D_s), teacher_values (B, L, D_t), attention_mask (B, L) | None)``.

    Raises:
        DistilError: head counts differ; see also :func:`value_relation_loss`.

    References:
        Wang et al. "MiniLM", NeurIPS 2020. arXiv:2002.10957.

    Example:
        >>> loss = ValueRelationLoss(4, 4)(torch.randn(2, 5, 32), torch.randn(2, 5, 64), torch.ones(2, 5))
    """

    def __init__(self, num_heads_student: int, num_heads_teacher: int):
        super().__init__()
        if num_heads_student != num_heads_teacher:
            raise DistilError(
                f"ValueRelationLoss: num_heads_student={num_heads_student} != num_heads_teacher={num_heads_teacher}; "
                "use QKVRelationLoss (MiniLMv2), which works across head counts"
            )
        self.num_heads_student, self.num_heads_teacher = num_heads_student, num_heads_teacher

    def forward(self, student_values: Tensor, teacher_values: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return value_relation_loss(
            student_values, teacher_values, self.num_heads_student, self.num_heads_teacher, attention_mask
        )


class QKVRelationLoss(nn.Module):
    """Module form of :func:`qkv_relation_loss`, holding the number of relation heads.

    Args:
        num_relation_heads: R; must divide both the student's and the teacher's width.

    Forward: ``forward(student_x (B, L, D_s), teacher_x (B, L, D_t), attention_mask (B, L) | None)``.

    Raises:
        DistilError: see :func:`qkv_relation_loss`.

    References:
        Wang et al. "MiniLMv2", Findings of ACL 2021. arXiv:2012.15828.

    Example:
        >>> loss = QKVRelationLoss(8)(torch.randn(2, 5, 32), torch.randn(2, 5, 48), torch.ones(2, 5))
    """

    def __init__(self, num_relation_heads: int):
        super().__init__()
        if isinstance(num_relation_heads, bool) or not isinstance(num_relation_heads, int) or num_relation_heads <= 0:
            raise DistilError(f"num_relation_heads={num_relation_heads!r}: must be a positive int")
        self.num_relation_heads = num_relation_heads

    def forward(self, student_x: Tensor, teacher_x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return qkv_relation_loss(student_x, teacher_x, self.num_relation_heads, attention_mask)

    def extra_repr(self) -> str:
        return f"num_relation_heads={self.num_relation_heads}"
