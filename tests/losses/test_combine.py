"""Tests for distil.losses.combine: the weighted sum, logging floats, non-finite detection, module parameters."""

from __future__ import annotations

import math

import pytest
import torch

from distil.errors import DistilError
from distil.losses import combine


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
