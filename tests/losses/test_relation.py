"""Tests for distil.losses.relation (RKD): hand-computed triangles, invariances, errors."""

from __future__ import annotations

import math

import pytest
import torch

from distil.errors import DistilError
from distil.losses import RKDAngleLoss, RKDDistanceLoss, rkd_angle_loss, rkd_distance_loss

# Teacher: three collinear points 0, 1, 2 (D_t = 1). Student: a unit equilateral triangle (D_s = 2).
LINE = torch.tensor([[0.0], [1.0], [2.0]])
TRIANGLE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def _emb(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_rkd_distance_hand_computed():
    # Teacher distances (pairs 01, 02, 12) = 1, 2, 1, mean 4/3 -> normalised 0.75, 1.5, 0.75.
    # Student distances all 1, mean 1 -> 1, 1, 1. Differences 0.25, 0.5, 0.25 (all < 1, so Huber = x^2 / 2):
    # 0.03125, 0.125, 0.03125 -> mean = 0.1875 / 3 = 0.0625 (ordered pairs repeat each value twice).
    assert rkd_distance_loss(TRIANGLE, LINE).item() == pytest.approx(0.0625, abs=1e-6)


def test_rkd_angle_hand_computed():
    # Teacher (collinear): the angle at point 0 between 1 and 2 is 0 (cos 1), at point 1 between 0 and 2 it is
    # 180 degrees (cos -1), at point 2 it is 0 (cos 1). Student (equilateral): every angle is 60 degrees (cos 0.5).
    # Differences 0.5, 1.5, 0.5 -> Huber 0.125, 1.5 - 0.5 = 1.0, 0.125 -> mean = 1.25 / 3 = 0.416667.
    assert rkd_angle_loss(TRIANGLE, LINE).item() == pytest.approx(1.25 / 3, abs=1e-6)


def test_rkd_losses_are_invariant_to_scale_rotation_and_translation():
    teacher = _emb(6, 8, seed=1)
    rotation, _ = torch.linalg.qr(_emb(8, 8, seed=2))
    student = 3.0 * teacher @ rotation + 0.7
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_losses_work_across_widths_and_give_finite_gradients_with_duplicates():
    student = _emb(5, 16, seed=3)
    student[1] = student[0]  # a duplicated example: zero distance, undefined direction
    student.requires_grad_()
    teacher = _emb(5, 64, seed=4)
    loss = rkd_distance_loss(student, teacher) + RKDAngleLoss()(student, teacher)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(student.grad).all()
    torch.testing.assert_close(RKDDistanceLoss()(student, teacher), rkd_distance_loss(student, teacher))


def test_rkd_errors_name_the_problem():
    with pytest.raises(DistilError, match="batch size 2 is too small; this loss needs at least 3"):
        rkd_angle_loss(_emb(2, 4), _emb(2, 4))
    with pytest.raises(DistilError, match="needs at least 2"):
        rkd_distance_loss(_emb(1, 4), _emb(1, 4))
    with pytest.raises(DistilError, match="student batch 4 != teacher batch 5"):
        rkd_distance_loss(_emb(4, 4), _emb(5, 4))
    with pytest.raises(DistilError, match=r"must be \(B, D\).*pool token states"):
        rkd_distance_loss(_emb(4, 3, 4), _emb(4, 3, 4))
