"""Tests for the explicit LOSSES registry: its names, and that every registered loss trains against a teacher
whose outputs were computed under torch.inference_mode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distil import losses
from distil.losses import LOSSES

CONFIG_NAMES = {
    "kd_kl",
    "logits_mse",
    "hidden_mse",
    "hidden_cosine",
    "attention_mse",
    "attention_kl",
    "minilm_attention",
    "minilm_value_relation",
    "minilmv2_qkv_relation",
    "rkd_distance",
    "rkd_angle",
}
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # (B=2, L=4)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _probs(seed: int) -> torch.Tensor:
    return torch.softmax(_rand(2, 4, 4, 4, seed=seed), dim=-1)  # (B, H, L, L)


# name -> (make student, make teacher, extra args after (student, teacher))
CASES = {
    "kd_kl": (lambda: _rand(2, 4, 5, seed=1), lambda: _rand(2, 4, 5, seed=2), (2.0, MASK)),
    "logits_mse": (lambda: _rand(2, 5, seed=1), lambda: _rand(2, 5, seed=2), ()),
    "hidden_mse": (lambda: _rand(2, 4, 8, seed=1), lambda: _rand(2, 4, 8, seed=2), (MASK,)),
    "hidden_cosine": (lambda: _rand(2, 4, 8, seed=1), lambda: _rand(2, 4, 8, seed=2), (MASK,)),
    "attention_mse": (lambda: _rand(2, 4, 4, 4, seed=1), lambda: _rand(2, 4, 4, 4, seed=2), (MASK,)),
    "attention_kl": (lambda: _probs(1), lambda: _probs(2), (MASK,)),
    "minilm_attention": (lambda: _probs(1), lambda: _probs(2), (MASK,)),
    "minilm_value_relation": (lambda: _rand(2, 4, 8, seed=1), lambda: _rand(2, 4, 12, seed=2), (4, 4, MASK)),
    "minilmv2_qkv_relation": (lambda: _rand(2, 4, 8, seed=1), lambda: _rand(2, 4, 12, seed=2), (4, MASK)),
    "rkd_distance": (lambda: _rand(5, 8, seed=1), lambda: _rand(5, 12, seed=2), ()),
    "rkd_angle": (lambda: _rand(5, 8, seed=1), lambda: _rand(5, 12, seed=2), ()),
}


def test_registry_holds_exactly_the_config_names_and_pure_functions():
    assert set(LOSSES) == CONFIG_NAMES == set(CASES)
    for name, fn in LOSSES.items():
        assert not isinstance(fn, torch.nn.Module), name
        assert getattr(losses, fn.__name__) is fn, f"{name} -> {fn.__name__} is not a public name of distil.losses"


def test_public_names_are_importable():
    for name in losses.__all__:
        assert hasattr(losses, name), name


@pytest.mark.parametrize("name", sorted(CONFIG_NAMES))
def test_every_loss_backpropagates_with_an_inference_mode_teacher(name):
    make_student, make_teacher, extra = CASES[name]
    with torch.inference_mode():
        teacher = make_teacher()
    student = make_student().requires_grad_()
    loss = LOSSES[name](student, teacher, *extra)
    assert loss.shape == () and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", sorted(CONFIG_NAMES))
def test_every_loss_is_zero_for_a_teacher_equal_to_the_student(name):
    make_student, _, extra = CASES[name]
    student = make_student()
    assert LOSSES[name](student, student.clone(), *extra).item() == pytest.approx(0.0, abs=1e-5)


def test_docs_describe_every_registered_loss():
    docs = Path(__file__).resolve().parents[2] / "docs" / "losses.md"
    text = docs.read_text(encoding="utf-8")
    missing = [name for name in sorted(LOSSES) if f"`{name}`" not in text]
    assert not missing, f"docs/losses.md does not mention {missing}"
