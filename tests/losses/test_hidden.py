"""Tests for distil.losses.hidden: masked MSE (with TinyBERT's projection) and DistilBERT's cosine loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distil.errors import DistilError
from distil.losses import HiddenCosineLoss, HiddenMSELoss, hidden_cosine_loss, hidden_mse_loss


def _hidden(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # (B=2, L=4)


def test_hidden_mse_zero_for_identical_and_matches_f_mse_loss():
    s, t = _hidden(2, 4, 8, seed=1), _hidden(2, 4, 8, seed=2)
    assert hidden_mse_loss(s, s.clone(), MASK).item() == 0.0
    torch.testing.assert_close(hidden_mse_loss(s, t), F.mse_loss(s, t))


def test_hidden_mse_mask_averages_over_real_tokens_and_dims():
    s, t = _hidden(2, 4, 8, seed=3), _hidden(2, 4, 8, seed=4)
    real = MASK.bool()
    torch.testing.assert_close(hidden_mse_loss(s, t, MASK), F.mse_loss(s[real], t[real]))
    # Hand-sized case: one real token whose 2 dims differ by (1, 3) -> (1 + 9) / 2 = 5; the padding is ignored.
    student = torch.tensor([[[1.0, 3.0], [100.0, 100.0]]])
    teacher = torch.zeros(1, 2, 2)
    assert hidden_mse_loss(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(5.0)


def test_hidden_mse_width_mismatch_points_to_the_projection_module():
    with pytest.raises(DistilError, match=r"student width 8 != teacher width 16; use HiddenMSELoss\(student_dim=8"):
        hidden_mse_loss(_hidden(2, 4, 8), _hidden(2, 4, 16))
    with pytest.raises(DistilError, match="same tokenised batch"):
        hidden_mse_loss(_hidden(2, 4, 8), _hidden(2, 5, 8))


def test_hidden_mse_module_learns_a_projection_only_when_widths_differ():
    same = HiddenMSELoss(student_dim=16, teacher_dim=16)
    assert isinstance(same.projection, nn.Identity) and list(same.parameters()) == []

    loss_fn = HiddenMSELoss(student_dim=8, teacher_dim=16)
    assert isinstance(loss_fn.projection, nn.Linear)
    assert (loss_fn.projection.in_features, loss_fn.projection.out_features) == (8, 16)
    params = list(loss_fn.parameters())
    assert {tuple(p.shape) for p in params} == {(16, 8), (16,)} and all(p.requires_grad for p in params)

    student = _hidden(2, 4, 8, seed=5).requires_grad_()
    teacher = _hidden(2, 4, 16, seed=6)
    loss = loss_fn(student, teacher, MASK)
    expected = hidden_mse_loss(loss_fn.projection(student), teacher, MASK)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert loss_fn.projection.weight.grad is not None and student.grad is not None

    with pytest.raises(DistilError, match="student hidden width 12 != student_dim=8"):
        loss_fn(_hidden(2, 4, 12), teacher)
    with pytest.raises(DistilError, match="student_dim=0"):
        HiddenMSELoss(student_dim=0, teacher_dim=16)


def test_projection_is_trained_by_an_optimizer_over_loss_parameters():
    torch.manual_seed(0)
    loss_fn = HiddenMSELoss(student_dim=4, teacher_dim=6)
    student = _hidden(3, 5, 4, seed=7)
    teacher = student @ _hidden(4, 6, seed=8)  # a linear map exists, so the projection can drive the loss down
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    first = loss_fn(student, teacher).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = loss_fn(student, teacher)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_hidden_cosine_closed_forms():
    t = _hidden(1, 3, 8, seed=9)
    assert hidden_cosine_loss(2.5 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # parallel: 1 - 1
    assert hidden_cosine_loss(-t, t).item() == pytest.approx(2.0, abs=1e-6)  # opposite: 1 - (-1)
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    # token 0 orthogonal -> 1; token 1 at 45 degrees -> 1 - 1/sqrt(2) = 0.292893; token 2 is padding.
    loss = hidden_cosine_loss(student, teacher, torch.tensor([[1, 1, 0]]))
    assert loss.item() == pytest.approx((1.0 + 1.0 - 2**-0.5) / 2, abs=1e-6)


def test_hidden_cosine_matches_distilbert_cosine_embedding_loss():
    s, t = _hidden(2, 4, 8, seed=10), _hidden(2, 4, 8, seed=11)
    real = MASK.bool()
    # DistilBERT: select real tokens, CosineEmbeddingLoss(reduction="mean") with target 1.
    expected = nn.CosineEmbeddingLoss()(s[real], t[real], torch.ones(int(real.sum())))
    torch.testing.assert_close(hidden_cosine_loss(s, t, MASK), expected)


def test_hidden_cosine_module_with_projection():
    loss_fn = HiddenCosineLoss(student_dim=8, teacher_dim=12)
    assert sum(p.numel() for p in loss_fn.parameters()) == 8 * 12 + 12
    student, teacher = _hidden(2, 4, 8, seed=12), _hidden(2, 4, 12, seed=13)
    torch.testing.assert_close(
        loss_fn(student, teacher, MASK), hidden_cosine_loss(loss_fn.projection(student), teacher, MASK)
    )
    with pytest.raises(DistilError, match="use HiddenCosineLoss"):
        hidden_cosine_loss(student, teacher)
