"""Closed-form tests for distil.losses.logits: KL at a temperature (with T^2), MSE on logits, the KD objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distil.errors import DistilError
from distil.losses import KDLoss, kd_kl_loss, kd_objective, logits_mse_loss


def _logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# kd_kl_loss


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5)])
def test_kd_kl_is_zero_for_identical_logits(shape):
    logits = _logits(*shape)
    assert kd_kl_loss(logits, logits.clone(), kd_temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kd_temperature", [1.0, 2.0, 4.0])
def test_kd_kl_matches_f_kl_div_batchmean_times_t_squared(kd_temperature):
    s, t = _logits(6, 5, seed=1), _logits(6, 5, seed=2)
    expected = kd_temperature**2 * F.kl_div(
        F.log_softmax(s / kd_temperature, dim=-1), F.softmax(t / kd_temperature, dim=-1), reduction="batchmean"
    )
    torch.testing.assert_close(kd_kl_loss(s, t, kd_temperature), expected)


def test_kd_kl_worked_example_is_0_0231_not_0_0969():
    # Teacher p = (0.6, 0.3, 0.1), student q = (0.5, 0.4, 0.1), T = 1, log-probs used as logits:
    # KL(p || q) = 0.6 ln(0.6/0.5) + 0.3 ln(0.3/0.4) + 0.1 ln(0.1/0.1)
    #            = 0.6 * 0.182322 + 0.3 * (-0.287682) + 0 = 0.109393 - 0.086305 = 0.023088 nats.
    # (A design doc printed 0.0969 for this example; that figure is wrong.)
    teacher = torch.tensor([[0.6, 0.3, 0.1]]).log()
    student = torch.tensor([[0.5, 0.4, 0.1]]).log()
    loss = kd_kl_loss(student, teacher, kd_temperature=1.0).item()
    assert loss == pytest.approx(0.023088, abs=1e-5)
    assert round(loss, 4) == 0.0231


def test_kd_kl_carries_t_squared():
    s, t = _logits(8, 4, seed=3), _logits(8, 4, seed=4)
    for kd_temperature in (2.0, 5.0):
        student_log_probs = F.log_softmax(s / kd_temperature, -1)
        teacher_log_probs = F.log_softmax(t / kd_temperature, -1)
        unscaled = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
        assert kd_kl_loss(s, t, kd_temperature).item() == pytest.approx(kd_temperature**2 * unscaled.item(), rel=1e-5)


def test_kd_kl_gradient_magnitude_is_independent_of_t_for_large_t():
    # Hinton 2015, sec. 2.1: d KL / d z_i = (q_i - p_i) / T, and for large T with zero-mean logits
    # q_i - p_i ~= (z_i - v_i) / (N T), so the unscaled gradient shrinks as 1/T^2. With the T^2 factor the gradient
    # tends to (z - v) / N per row (divided by B for the batch mean), whatever T is.
    B, N = 4, 5
    z = _logits(B, N, seed=5)
    v = _logits(B, N, seed=6)
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    grads = {}
    for kd_temperature in (50.0, 100.0):
        student = z.clone().requires_grad_()
        kd_kl_loss(student, v, kd_temperature).backward()
        grads[kd_temperature] = student.grad
    limit = (z - v) / (N * B)
    torch.testing.assert_close(grads[100.0], limit, atol=2e-4, rtol=0.02)
    torch.testing.assert_close(grads[50.0], grads[100.0], atol=4e-4, rtol=0.05)


def test_kd_kl_3d_mask_averages_over_selected_tokens_only():
    s, t = _logits(2, 4, 6, seed=7), _logits(2, 4, 6, seed=8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    selected = mask.bool()
    expected = F.kl_div(F.log_softmax(s[selected], -1), F.softmax(t[selected], -1), reduction="batchmean")
    torch.testing.assert_close(kd_kl_loss(s, t, 1.0, mask), expected)
    s_changed = s.clone()
    s_changed[~selected] = 100.0  # padding logits must not matter
    torch.testing.assert_close(kd_kl_loss(s_changed, t, 1.0, mask), expected)


def test_kd_kl_3d_without_mask_averages_over_all_tokens():
    s, t = _logits(2, 3, 5, seed=9), _logits(2, 3, 5, seed=10)
    expected = kd_kl_loss(s.reshape(6, 5), t.reshape(6, 5), 2.0)
    torch.testing.assert_close(kd_kl_loss(s, t, 2.0), expected)


def test_kd_kl_rejects_bad_inputs():
    s = _logits(2, 3)
    with pytest.raises(DistilError, match=r"student shape \(2, 3\) != teacher shape \(2, 4\)"):
        kd_kl_loss(s, _logits(2, 4), 1.0)
    with pytest.raises(DistilError, match="kd_temperature=0"):
        kd_kl_loss(s, s, 0)
    with pytest.raises(DistilError, match=r"mask shape \(3,\)"):
        kd_kl_loss(s, s, 1.0, mask=torch.ones(3))
    with pytest.raises(DistilError, match=r"expected \(B, C\) or \(B, L, C\)"):
        kd_kl_loss(_logits(6), _logits(6), 1.0)


# ----------------------------------------------------------------------------------------------------------
# logits_mse_loss


def test_logits_mse_matches_f_mse_loss_and_is_zero_for_identical():
    s, t = _logits(3, 4, 5, seed=11), _logits(3, 4, 5, seed=12)
    torch.testing.assert_close(logits_mse_loss(s, t), F.mse_loss(s, t))
    assert logits_mse_loss(s, s.clone()).item() == 0.0


def test_logits_mse_mask_excludes_padding():
    s, t = _logits(2, 3, 4, seed=13), _logits(2, 3, 4, seed=14)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    selected = mask.bool()
    torch.testing.assert_close(logits_mse_loss(s, t, mask), F.mse_loss(s[selected], t[selected]))


# ----------------------------------------------------------------------------------------------------------
# kd_objective and KDLoss


def test_kd_objective_weights_ce_by_alpha_and_returns_unweighted_parts():
    s, t = _logits(5, 3, seed=15), _logits(5, 3, seed=16)
    labels = torch.tensor([0, 2, 1, 1, 0])
    total, parts = kd_objective(s, t, labels, alpha=0.3, kd_temperature=2.0)
    assert set(parts) == {"ce", "kd"}
    torch.testing.assert_close(parts["ce"], F.cross_entropy(s, labels))
    torch.testing.assert_close(parts["kd"], kd_kl_loss(s, t, 2.0))
    torch.testing.assert_close(total, 0.3 * parts["ce"] + 0.7 * parts["kd"])


def test_kd_objective_mse_soft_loss():
    s, t = _logits(5, 3, seed=17), _logits(5, 3, seed=18)
    total, parts = kd_objective(s, t, None, alpha=0.0, kd_temperature=2.0, soft_loss="mse")
    assert set(parts) == {"kd"}
    torch.testing.assert_close(total, F.mse_loss(s, t))


def test_kd_objective_without_teacher_is_plain_cross_entropy():
    s, labels = _logits(4, 3, seed=19), torch.tensor([0, 1, 2, 0])
    total, parts = kd_objective(s, None, labels, alpha=0.2, kd_temperature=2.0)
    assert set(parts) == {"ce"}
    torch.testing.assert_close(total, F.cross_entropy(s, labels))


def test_kd_objective_token_level_ignores_minus_100_labels():
    s, t = _logits(2, 3, 4, seed=20), _logits(2, 3, 4, seed=21)
    labels = torch.tensor([[1, -100, 3], [0, 2, -100]])
    _, parts = kd_objective(s, t, labels, alpha=0.5, kd_temperature=1.0)
    keep = labels != -100
    torch.testing.assert_close(parts["ce"], F.cross_entropy(s[keep], labels[keep]))


def test_kd_objective_rejects_bad_settings():
    s = _logits(2, 3)
    labels = torch.tensor([0, 1])
    with pytest.raises(DistilError, match="labels=None but alpha=0.5"):
        kd_objective(s, s, None, alpha=0.5, kd_temperature=1.0)
    with pytest.raises(DistilError, match="alpha=1.5"):
        kd_objective(s, s, labels, alpha=1.5, kd_temperature=1.0)
    with pytest.raises(DistilError, match="soft_loss='cosine'"):
        kd_objective(s, s, labels, alpha=0.5, kd_temperature=1.0, soft_loss="cosine")
    with pytest.raises(DistilError, match="both None"):
        kd_objective(s, None, None, alpha=0.0, kd_temperature=1.0)
    with pytest.raises(DistilError, match=r"labels shape \(3,\)"):
        kd_objective(s, s, torch.tensor([0, 1, 2]), alpha=0.5, kd_temperature=1.0)


def test_kd_loss_module_matches_function_and_validates_at_construction():
    s, t, labels = _logits(4, 3, seed=22), _logits(4, 3, seed=23), torch.tensor([2, 1, 0, 0])
    total, _ = KDLoss(alpha=0.5, kd_temperature=3.0)(s, t, labels)
    expected, _ = kd_objective(s, t, labels, 0.5, 3.0)
    torch.testing.assert_close(total, expected)
    assert list(KDLoss(0.5, 3.0).parameters()) == []
    with pytest.raises(DistilError, match="kd_temperature=-1"):
        KDLoss(alpha=0.5, kd_temperature=-1)
    with pytest.raises(DistilError, match="alpha=-0.1"):
        KDLoss(alpha=-0.1, kd_temperature=1.0)


def test_teacher_logits_from_inference_mode_can_be_backpropagated_through():
    with torch.inference_mode():
        teacher = _logits(4, 3, seed=24) * 2
    student = _logits(4, 3, seed=25).requires_grad_()
    total, _ = kd_objective(student, teacher, torch.tensor([0, 1, 2, 0]), alpha=0.5, kd_temperature=2.0)
    (total + logits_mse_loss(student, teacher)).backward()
    assert student.grad is not None and math.isfinite(student.grad.abs().sum().item())
