"""Tests for distil.losses.attention: hand-computed 3x3 examples, padding exclusion, head-count errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distil.errors import DistilError
from distil.losses import AttentionKLLoss, AttentionMSELoss, attention_kl_loss, attention_mse_loss

NEG = torch.finfo(torch.float32).min  # what an additive padding mask puts into pre-softmax scores


def _scores(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_attention_mse_hand_computed_3x3_with_padding():
    # One head, L = 3, the third token is padding, so only the 2 x 2 block of (query, key) pairs counts.
    # student block [[1, 2], [0, 1]], teacher block [[1, 0], [2, 1]]:
    # differences 0, 2, -2, 0 -> squares 0, 4, 4, 0 -> mean over 4 pairs = 8 / 4 = 2.0.
    student = torch.tensor([[[[1.0, 2.0, NEG], [0.0, 1.0, NEG], [5.0, 6.0, NEG]]]])  # (1, 1, 3, 3)
    teacher = torch.tensor([[[[1.0, 0.0, -1e4], [2.0, 1.0, -1e4], [-7.0, 3.0, -1e4]]]])
    mask = torch.tensor([[1, 1, 0]])
    assert attention_mse_loss(student, teacher, mask).item() == pytest.approx(2.0)


def test_attention_mse_without_mask_matches_f_mse_loss_and_zero_for_identical():
    s, t = _scores(2, 4, 5, 5, seed=1), _scores(2, 4, 5, 5, seed=2)
    torch.testing.assert_close(attention_mse_loss(s, t, None), F.mse_loss(s, t))
    assert attention_mse_loss(s, s.clone(), torch.ones(2, 5)).item() == 0.0


def test_attention_mse_gradients_stay_finite_with_extreme_padding_scores():
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    student = _scores(1, 2, 5, 5, seed=3).masked_fill(mask[:, None, None, :] == 0, NEG).requires_grad_()
    teacher = _scores(1, 2, 5, 5, seed=4).masked_fill(mask[:, None, None, :] == 0, -math.inf)
    loss = attention_mse_loss(student, teacher, mask)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(student.grad).all()
    assert (student.grad[..., 3:] == 0).all() and (student.grad[..., 3:, :] == 0).all()


def test_attention_kl_hand_computed_3x3_with_padding():
    # One head, L = 3, token 2 is padding. Rows are query distributions over keys.
    # row 0: teacher (0.5, 0.5, 0), student (0.25, 0.75, 0):
    #        KL = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4 / 3) = 0.143841
    # row 1: teacher = student = (0.8, 0.2, 0): KL = 0
    # row 2: padding query, excluded although the rows differ.
    # mean over the 2 real rows: 0.143841 / 2 = 0.0719205.
    teacher = torch.tensor([[[[0.5, 0.5, 0.0], [0.8, 0.2, 0.0], [1 / 3, 1 / 3, 1 / 3]]]])
    student = torch.tensor([[[[0.25, 0.75, 0.0], [0.8, 0.2, 0.0], [1.0, 0.0, 0.0]]]])
    loss = attention_kl_loss(student, teacher, torch.tensor([[1, 1, 0]]))
    assert loss.item() == pytest.approx(0.5 * math.log(4 / 3) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.0719205, abs=1e-6)


def test_attention_kl_without_mask_matches_f_kl_div_per_row():
    s = torch.softmax(_scores(2, 3, 4, 4, seed=5), dim=-1)
    t = torch.softmax(_scores(2, 3, 4, 4, seed=6), dim=-1)
    expected = F.kl_div(s.log(), t, reduction="sum") / (2 * 3 * 4)  # sum over keys, mean over B, H, query rows
    torch.testing.assert_close(attention_kl_loss(s, t, None), expected)
    assert attention_kl_loss(s, s.clone(), torch.ones(2, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_padding_keys_do_not_matter():
    mask = torch.tensor([[1, 1, 1, 0]])
    scores_s = _scores(1, 2, 4, 4, seed=7).masked_fill(mask[:, None, None, :] == 0, NEG)
    scores_t = _scores(1, 2, 4, 4, seed=8).masked_fill(mask[:, None, None, :] == 0, NEG)
    student = torch.softmax(scores_s, -1).requires_grad_()
    loss = attention_kl_loss(student, torch.softmax(scores_t, -1), mask)
    reference = attention_kl_loss(student[:, :, :3, :3], torch.softmax(scores_t, -1)[:, :, :3, :3], None)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("loss_fn", [attention_mse_loss, attention_kl_loss])
def test_head_count_mismatch_names_both_counts_and_suggests_a_relation_loss(loss_fn):
    with pytest.raises(DistilError, match=r"student has 4 attention heads, teacher has 12.*minilmv2_qkv_relation"):
        loss_fn(_scores(2, 4, 5, 5), _scores(2, 12, 5, 5), torch.ones(2, 5))


def test_attention_shape_errors():
    with pytest.raises(DistilError, match=r"must be \(B, H, L, L\)"):
        attention_mse_loss(_scores(2, 5, 5), _scores(2, 5, 5), None)
    with pytest.raises(DistilError, match="same tokenised batch"):
        attention_kl_loss(_scores(2, 4, 5, 5), _scores(2, 4, 6, 6), None)
    with pytest.raises(DistilError, match=r"mask shape \(2, 4\)"):
        attention_mse_loss(_scores(2, 4, 5, 5), _scores(2, 4, 5, 5), torch.ones(2, 4))


def test_modules_match_functions():
    s, t, mask = _scores(1, 2, 3, 3, seed=9), _scores(1, 2, 3, 3, seed=10), torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(AttentionMSELoss()(s, t, mask), attention_mse_loss(s, t, mask))
    p, q = torch.softmax(s, -1), torch.softmax(t, -1)
    torch.testing.assert_close(AttentionKLLoss()(p, q, mask), attention_kl_loss(p, q, mask))
