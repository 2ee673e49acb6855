"""Relational knowledge distillation (Park et al. 2019): match the geometry of a batch of embeddings, not the
embeddings themselves, so student and teacher widths may differ.

Both losses use the Huber loss with delta = 1 (``F.smooth_l1_loss``). They average over distinct pairs i != j
(distance) and distinct triplets i, j, k (angle); the authors' code averages over all B^2 / B^3 entries including
degenerate ones that are 0 on both sides, which only rescales the loss by a constant, e.g. (B - 1) / B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distil.errors import DistilError
from distil.losses.logits import as_constant

_EPS = 1e-12


def _check_embeddings(what: str, student_emb: Tensor, teacher_emb: Tensor, min_batch: int) -> None:
    if student_emb.dim() != 2 or teacher_emb.dim() != 2:
        raise DistilError(
            f"{what}: embeddings must be (B, D); got student {tuple(student_emb.shape)}, "
            f"teacher {tuple(teacher_emb.shape)}; pool token states first (e.g. the [CLS] vector)"
        )
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise DistilError(
            f"{what}: student batch {student_emb.shape[0]} != teacher batch {teacher_emb.shape[0]}; "
            "embed the same examples with both models"
        )
    if student_emb.shape[0] < min_batch:
        raise DistilError(
            f"{what}: batch size {student_emb.shape[0]} is too small; this loss needs at least {min_batch} "
            "examples per batch (raise the batch size)"
        )


def _normalised_distances(emb: Tensor) -> Tensor:
    """Distances ||e_i - e_j|| over ordered pairs i != j, divided by their mean: (B * (B - 1),)."""
    batch = emb.shape[0]
    diff = emb.unsqueeze(0) - emb.unsqueeze(1)  # (B, B, D)
    # Clamp before sqrt: the zero diagonal would otherwise give an infinite gradient.
    distances = diff.pow(2).sum(-1).clamp_min(_EPS).sqrt()  # (B, B)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=emb.device)  # (B, B)
    distances = distances[off_diagonal]  # (B * (B - 1),)
    return distances / distances.mean().clamp_min(_EPS)


def _angles(emb: Tensor) -> Tensor:
    """cos of the angle at e_j between e_i and e_k, over distinct triplets: (B * (B - 1) * (B - 2),)."""
    batch = emb.shape[0]
    diff = emb.unsqueeze(0) - emb.unsqueeze(1)  # (B, B, D): diff[j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=-1)  # (B, B, D)
    cosines = unit @ unit.transpose(1, 2)  # (B, B, B): [j, i, k] = <e_ij, e_kj>
    index = torch.arange(batch, device=emb.device)
    j, i, k = index[:, None, None], index[None, :, None], index[None, None, :]
    distinct = (i != j) & (k != j) & (i != k)  # (B, B, B)
    return cosines[distinct]  # (B * (B - 1) * (B - 2),)


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD distance-wise loss: Huber between mean-normalised pairwise distances of student and teacher.

    ``psi_D(x_i, x_j) = ||x_i - x_j|| / mu`` with ``mu`` the mean distance over pairs i != j of the batch;
    ``loss = mean_{i != j} smooth_l1(psi_D(s_i, s_j), psi_D(t_i, t_j))``. Computed in float32.

    Args:
        student_emb: (B, D_s) student embeddings, B >= 2.
        teacher_emb: (B, D_t) teacher embeddings of the same examples; treated as a constant.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: not 2-D, batch sizes differ, or B < 2.

    References:
        Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019. arXiv:1904.05068.

    Example:
        >>> t = torch.randn(8, 64)
        >>> round(float(rkd_distance_loss(2 * t, t)), 6)  # distances are scale-normalised
        0.0
    """
    _check_embeddings("rkd_distance_loss", student_emb, teacher_emb, min_batch=2)
    teacher = _normalised_distances(as_constant(teacher_emb).float())
    student = _normalised_distances(student_emb.float())
    return F.smooth_l1_loss(student, teacher, beta=1.0)


def rkd_angle_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD angle-wise loss: Huber between the cosines of the angles that triplets of examples form.

    ``psi_A(x_i, x_j, x_k) = <(x_i - x_j) / ||x_i - x_j||, (x_k - x_j) / ||x_k - x_j||>``;
    ``loss = mean over distinct (i, j, k) of smooth_l1(psi_A(s), psi_A(t))``. Computed in float32; memory is
    O(B^2 D + B^3).

    Args:
        student_emb: (B, D_s) student embeddings, B >= 3.
        teacher_emb: (B, D_t) teacher embeddings of the same examples; treated as a constant.

    Returns:
        Scalar float32 tensor.

    Raises:
        DistilError: not 2-D, batch sizes differ, or B < 3.

    References:
        Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019. arXiv:1904.05068.

    Example:
        >>> t = torch.randn(8, 64)
        >>> round(float(rkd_angle_loss(3 * t + 1, t)), 6)  # angles survive scaling and shifting
        0.0
    """
    _check_embeddings("rkd_angle_loss", student_emb, teacher_emb, min_batch=3)
    teacher = _angles(as_constant(teacher_emb).float())
    student = _angles(student_emb.float())
    return F.smooth_l1_loss(student, teacher, beta=1.0)


class RKDDistanceLoss(nn.Module):
    """Module form of :func:`rkd_distance_loss`.

    Forward: ``forward(student_emb (B, D_s), teacher_emb (B, D_t)) -> scalar``.

    Raises:
        DistilError: see :func:`rkd_distance_loss`.

    References:
        Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.

    Example:
        >>> loss = RKDDistanceLoss()(torch.randn(8, 32), torch.randn(8, 64))
    """

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        return rkd_distance_loss(student_emb, teacher_emb)


class RKDAngleLoss(nn.Module):
    """Module form of :func:`rkd_angle_loss`.

    Forward: ``forward(student_emb (B, D_s), teacher_emb (B, D_t)) -> scalar``.

    Raises:
        DistilError: see :func:`rkd_angle_loss`.

    References:
        Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.

    Example:
        >>> loss = RKDAngleLoss()(torch.randn(8, 32), torch.randn(8, 64))
    """

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        return rkd_angle_loss(student_emb, teacher_emb)
