"""Tests for distil.losses.combine: the weighted sum, logging floats, non-finite detection, module parameters."""

from __future__ import annotations

import math

import pytest
import torch

from distil.errors import DistilError
from distil.losses import CombinedLoss, HiddenMSELoss, combine, kd_kl_loss


def test_combine_returns_weighted_total_and_unweighted_floats():
    ce = torch.tensor(0.8, requires_grad=True)
    kd = torch.tensor(0.2, requires_grad=True)
    total, logged = combine({"ce": ce, "kd": kd}, {"ce": 0.25, "kd": 0.75})
    assert total.item() == pytest.approx(0.25 * 0.8 + 0.75 * 0.2)
    assert logged == {"ce": pytest.approx(0.8), "kd": pytest.approx(0.2)}
    assert all(type(v) is float for v in logged.values())
    total.backward()
    assert ce.grad.item() == pytest.approx(0.25) and kd.grad.item() == pytest.approx(0.75)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_combine_names_the_non_finite_part(bad):
    parts = {"ce": torch.tensor(0.5), "attention_mse": torch.tensor(bad)}
    with pytest.raises(DistilError, match=f"loss part 'attention_mse' is {bad}"):
        combine(parts, {"ce": 1.0, "attention_mse": 1.0})


def test_combine_rejects_mismatched_names_but_allows_zero_weight_for_skipped_terms():
    parts = {"ce": torch.tensor(1.0)}
    with pytest.raises(DistilError, match=r"parts \['ce'\] have no weight"):
        combine(parts, {"kd": 1.0})
    with pytest.raises(DistilError, match=r"weights \['hiden_mse'\] name no computed part"):
        combine(parts, {"ce": 1.0, "hiden_mse": 0.5})
    total, logged = combine(parts, {"ce": 1.0, "hidden_mse": 0.0})
    assert total.item() == 1.0 and logged == {"ce": 1.0}
    with pytest.raises(DistilError, match="must be a scalar"):
        combine({"ce": torch.ones(3)}, {"ce": 1.0})
    with pytest.raises(DistilError, match="no loss parts"):
        combine({}, {})


def test_combined_loss_registers_module_parameters_and_dispatches():
    projection_loss = HiddenMSELoss(student_dim=4, teacher_dim=8)
    losses = CombinedLoss({"kd": (1.0, kd_kl_loss), "hidden_mse": (0.5, projection_loss)})
    assert {id(p) for p in losses.parameters()} == {id(p) for p in projection_loss.parameters()}
    assert losses.term("kd") is kd_kl_loss and losses.term("hidden_mse") is projection_loss

    s_logits, t_logits = torch.randn(3, 5), torch.randn(3, 5)
    s_hidden, t_hidden = torch.randn(3, 2, 4), torch.randn(3, 2, 8)
    parts = {
        "kd": losses.compute("kd", s_logits, t_logits, kd_temperature=2.0),
        "hidden_mse": losses.compute("hidden_mse", s_hidden, t_hidden),
    }
    total, logged = losses.combine(parts)
    torch.testing.assert_close(total, parts["kd"] + 0.5 * parts["hidden_mse"])
    assert set(logged) == {"kd", "hidden_mse"}
    total.backward()
    assert projection_loss.projection.weight.grad is not None

    with pytest.raises(DistilError, match=r"no term named 'rkd'; terms are \['hidden_mse', 'kd'\]"):
        losses.term("rkd")


def test_combined_loss_validates_terms():
    with pytest.raises(DistilError, match="weight of 'kd' is -1"):
        CombinedLoss({"kd": (-1, kd_kl_loss)})
    with pytest.raises(DistilError, match="contain no '.'"):
        CombinedLoss({"a.b": (1.0, kd_kl_loss)})
    with pytest.raises(DistilError, match="not a loss function"):
        CombinedLoss({"kd": (1.0, "kd_kl")})
