"""Tests for distil.losses.minilm: attention transfer, value relations (v1), q/k/v relations (v2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distil.errors import DistilError
from distil.losses import (
    MiniLMAttentionLoss,
    QKVRelationLoss,
    ValueRelationLoss,
    attention_kl_loss,
    qkv_relation_loss,
    self_attention_distribution_loss,
    value_relation_loss,
)


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference_relation_kl(student: torch.Tensor, teacher: torch.Tensor, heads: int) -> float:
    """Loop-by-loop MiniLM relation KL without padding: per batch item, head and query row."""
    batch, length, _ = student.shape
    total = 0.0
    for b in range(batch):
        for s_head, t_head in zip(student[b].chunk(heads, -1), teacher[b].chunk(heads, -1), strict=True):
            s_rel = torch.softmax(s_head @ s_head.T / math.sqrt(s_head.shape[-1]), -1)  # (L, L)
            t_rel = torch.softmax(t_head @ t_head.T / math.sqrt(t_head.shape[-1]), -1)  # (L, L)
            total += F.kl_div(s_rel.log(), t_rel, reduction="sum").item()
    return total / (batch * heads * length)


def test_self_attention_distribution_loss_is_attention_kl():
    s = torch.softmax(_x(2, 4, 5, 5, seed=1), -1)
    t = torch.softmax(_x(2, 4, 5, 5, seed=2), -1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    torch.testing.assert_close(self_attention_distribution_loss(s, t, mask), attention_kl_loss(s, t, mask))
    torch.testing.assert_close(MiniLMAttentionLoss()(s, t, mask), attention_kl_loss(s, t, mask))
    with pytest.raises(DistilError, match="student has 4 attention heads, teacher has 12"):
        self_attention_distribution_loss(s, torch.softmax(_x(2, 12, 5, 5), -1), mask)


def test_value_relation_hand_computed():
    # B = 1, L = 2, D = H = 1 (d_h = 1). Teacher V = (1, 2): V V^T = [[1, 2], [2, 4]],
    # rows softmax to (0.268941, 0.731059) and (0.119203, 0.880797). Student V = (0, 0): both rows uniform.
    # KL row 0 = 0.268941 ln(0.268941 / 0.5) + 0.731059 ln(0.731059 / 0.5) = -0.166775 + 0.277719 = 0.110944
    # KL row 1 = 0.119203 ln(0.119203 / 0.5) + 0.880797 ln(0.880797 / 0.5) = -0.170916 + 0.498729 = 0.327813
    # mean over the 2 query rows = 0.219379.
    teacher = torch.tensor([[[1.0], [2.0]]])
    student = torch.zeros(1, 2, 1)
    loss = value_relation_loss(student, teacher, 1, 1, torch.ones(1, 2))
    assert loss.item() == pytest.approx(0.219379, abs=1e-5)


def test_value_relation_matches_reference_across_widths_and_is_zero_for_identical():
    s, t = _x(2, 5, 16, seed=3), _x(2, 5, 32, seed=4)  # widths differ, 4 heads each: d_h = 4 and 8
    expected = _reference_relation_kl(s, t, heads=4)
    assert value_relation_loss(s, t, 4, 4, None).item() == pytest.approx(expected, rel=1e-5)
    assert ValueRelationLoss(4, 4)(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert value_relation_loss(s, s.clone(), 4, 4, None).item() == pytest.approx(0.0, abs=1e-6)


def test_value_relation_requires_equal_head_counts():
    with pytest.raises(DistilError, match=r"num_heads_student=4 != num_heads_teacher=12.*minilmv2_qkv_relation"):
        value_relation_loss(_x(2, 5, 32), _x(2, 5, 48), 4, 12, None)
    with pytest.raises(DistilError, match="use QKVRelationLoss"):
        ValueRelationLoss(4, 12)
    with pytest.raises(DistilError, match="student width 30 is not divisible by 4 heads"):
        value_relation_loss(_x(2, 5, 30), _x(2, 5, 32), 4, 4, None)


def test_qkv_relation_works_across_widths_and_head_counts():
    # Student: 32 wide (4 attention heads); teacher: 48 wide (12 heads); 8 relation heads split both.
    s, t = _x(2, 6, 32, seed=5).requires_grad_(), _x(2, 6, 48, seed=6)
    loss = qkv_relation_loss(s, t, num_relation_heads=8, attention_mask=None)
    assert loss.item() == pytest.approx(_reference_relation_kl(s.detach(), t, heads=8), rel=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(QKVRelationLoss(8)(s, t), loss)
    assert qkv_relation_loss(t, t.clone(), 8, None).item() == pytest.approx(0.0, abs=1e-6)


def test_qkv_relation_with_r_equal_to_h_is_value_relation():
    s, t = _x(2, 5, 16, seed=7), _x(2, 5, 16, seed=8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(qkv_relation_loss(s, t, 4, mask), value_relation_loss(s, t, 4, 4, mask))


def test_qkv_relation_rejects_r_that_does_not_divide_both_widths():
    with pytest.raises(DistilError, match=r"num_relation_heads=5 must divide both the student width 32 .* 48"):
        qkv_relation_loss(_x(1, 3, 32), _x(1, 3, 48), 5, None)
    with pytest.raises(DistilError, match="num_relation_heads=0"):
        QKVRelationLoss(0)


def test_relation_losses_ignore_padding_tokens():
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    s, t = _x(1, 5, 16, seed=9), _x(1, 5, 24, seed=10)
    loss = qkv_relation_loss(s, t, 4, mask)
    reference = qkv_relation_loss(s[:, :3], t[:, :3], 4, None)  # the same batch with the padding cut off
    torch.testing.assert_close(loss, reference)
    s_changed, t_changed = s.clone(), t.clone()
    s_changed[:, 3:], t_changed[:, 3:] = 50.0, -50.0
    torch.testing.assert_close(qkv_relation_loss(s_changed, t_changed, 4, mask), reference)


def test_relation_losses_handle_an_all_padding_row_and_inference_teacher():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with torch.inference_mode():
        teacher = _x(2, 3, 8, seed=11)
    student = _x(2, 3, 8, seed=12).requires_grad_()
    loss = value_relation_loss(student, teacher, 2, 2, mask)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(student.grad).all()
