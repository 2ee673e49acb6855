"""Closed-form tests for distil.losses.topk: top-k + tail teacher signal, buckets, divergences, causal-LM KD loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distil.errors import DistilError
from distil.losses.topk import (
    DIVERGENCES,
    CausalLMKDLoss,
    TopK,
    bucket_log_probs,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    topk_of,
)

V = 32


def _logits(*shape: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _labels(batch: int, length: int, prompt: list[int], seed: int = 0) -> torch.Tensor:
    """Random token ids with the first ``prompt[b]`` tokens of row b set to -100 (a prompt), plus 1 pad at the end."""
    labels = torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))
    for row, n in enumerate(prompt):
        labels[row, :n] = -100
    labels[-1, -1] = -100
    return labels


P = torch.tensor([0.6, 0.3, 0.1])  # teacher
Q = torch.tensor([0.5, 0.4, 0.1])  # student


# ----------------------------------------------------------------------------------------------------------
# topk_of and buckets


@pytest.mark.parametrize("k", [1, 5, 31])
def test_topk_of_tail_completes_the_mass_to_one(k):
    teacher = topk_of(_logits(2, 4, V, seed=k), k)
    assert teacher.k == k and teacher.ids.dtype == torch.int64
    total = teacher.logprobs.exp().sum(-1) + teacher.tail.exp()  # (B, T)
    torch.testing.assert_close(total, torch.ones(2, 4), atol=1e-6, rtol=0)
    # the kept ids are the k largest logits, in order
    assert bool((teacher.logprobs[..., :-1] >= teacher.logprobs[..., 1:]).all())


def test_topk_of_keeping_the_whole_vocabulary_leaves_a_neg_inf_tail():
    teacher = topk_of(_logits(2, 3, V).half(), V)
    assert bool(torch.isneginf(teacher.tail).all())
    assert teacher.logprobs.dtype == torch.float32


def test_buckets_are_distributions_and_exact_at_t_1():
    s, t = _logits(2, 3, V, seed=1), _logits(2, 3, V, seed=2)
    teacher = topk_of(t, 6)
    for temperature in (1.0, 3.0):
        student_buckets, teacher_buckets = bucket_log_probs(s, teacher, temperature)  # (B, T, k + 1) each
        assert student_buckets.shape == (2, 3, 7)
        torch.testing.assert_close(student_buckets.exp().sum(-1), torch.ones(2, 3))
        torch.testing.assert_close(teacher_buckets.exp().sum(-1), torch.ones(2, 3))
        # the student's tail is its exact tempered mass outside the teacher's ids
        full = F.softmax(s / temperature, -1)
        outside = full.sum(-1) - full.gather(-1, teacher.ids).sum(-1)
        torch.testing.assert_close(student_buckets[..., -1].exp(), outside)
        # the teacher's tail is tempered as if it were one token (the documented approximation)
        cached = torch.cat([teacher.logprobs, teacher.tail[..., None]], -1)  # (B, T, k + 1)
        torch.testing.assert_close(teacher_buckets, F.log_softmax(cached / temperature, -1))
    # at T = 1 the teacher's buckets are its true probabilities (the tail = the mass outside the top k)
    _, teacher_buckets = bucket_log_probs(s, teacher, 1.0)
    true = F.softmax(t, -1)
    torch.testing.assert_close(teacher_buckets[..., :-1].exp(), true.gather(-1, teacher.ids))
    torch.testing.assert_close(teacher_buckets[..., -1].exp(), 1 - true.gather(-1, teacher.ids).sum(-1))


# ----------------------------------------------------------------------------------------------------------
# divergences


def test_forward_and_reverse_kl_closed_forms_on_three_tokens():
    # KL(p || q) = 0.6 ln(0.6/0.5) + 0.3 ln(0.3/0.4) + 0 = 0.023088
    # KL(q || p) = 0.5 ln(0.5/0.6) + 0.4 ln(0.4/0.3) + 0 = 0.023912
    s, t = Q.log(), P.log()
    assert forward_kl(s, t).item() == pytest.approx(0.023088, abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(0.023912, abs=1e-6)
    torch.testing.assert_close(forward_kl(s, t), F.kl_div(s, t, reduction="sum", log_target=True))
    torch.testing.assert_close(reverse_kl(s, t), F.kl_div(t, s, reduction="sum", log_target=True))


def test_jsd_at_beta_0_and_1_is_forward_and_reverse_kl():
    s, t = F.log_softmax(_logits(3, 4, 7, seed=3), -1), F.log_softmax(_logits(3, 4, 7, seed=4), -1)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward_kl(s, t))
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    # TRL's convention is discontinuous at the limits: just inside them the mixture formula is ~beta * KL
    assert generalized_jsd(s, t, 1e-3).sum() < 0.01 * forward_kl(s, t).sum()


def test_jsd_at_beta_half_is_the_symmetric_js_divergence():
    m = (P + Q) / 2  # (0.55, 0.35, 0.10)
    by_hand = 0.5 * sum(p * math.log(p / mi) for p, mi in zip(P.tolist(), m.tolist()))
    by_hand += 0.5 * sum(q * math.log(q / mi) for q, mi in zip(Q.tolist(), m.tolist()))
    assert by_hand == pytest.approx(0.005859, abs=1e-6)
    assert generalized_jsd(Q.log(), P.log(), 0.5).item() == pytest.approx(by_hand, abs=1e-6)
    # symmetric at beta = 1/2
    assert generalized_jsd(P.log(), Q.log(), 0.5).item() == pytest.approx(by_hand, abs=1e-6)


def test_jsd_matches_trls_mixture_at_an_asymmetric_beta():
    # TRL GKDTrainer.generalized_jsd_loss: m = (1 - beta) p_s + beta p_t, jsd = beta KL(t || m) + (1 - beta) KL(s || m)
    s, t = F.log_softmax(_logits(3, 6, seed=25), -1), F.log_softmax(_logits(3, 6, seed=26), -1)
    beta = 0.3
    mixture = ((1 - beta) * s.exp() + beta * t.exp()).log()
    kl_teacher = F.kl_div(mixture, t, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(mixture, s, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(generalized_jsd(s, t, beta), beta * kl_teacher + (1 - beta) * kl_student)
    assert not torch.allclose(generalized_jsd(s, t, beta), generalized_jsd(t, s, beta))


def test_zero_probability_buckets_add_zero_and_keep_gradients_finite():
    # student (0.5, 0.5) vs teacher (1, 0): 0.5 ln(4/3) + 0.25 ln(2/3) + 0.25 ln 2 = 0.215762
    s = torch.tensor([0.5, 0.5]).log().requires_grad_()
    t = torch.tensor([1.0, 0.0]).log()
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(0.215762, abs=1e-6)
    assert forward_kl(s, t).item() == pytest.approx(math.log(2), abs=1e-6)
    assert math.isinf(reverse_kl(s, t).item())  # the student puts mass where the teacher has none
    # a bucket empty on both sides (the tail at k = V): no nan in value or gradient
    both = torch.tensor([0.0, float("-inf")])
    s2 = torch.stack([torch.tensor(0.0), torch.tensor(float("-inf"))]).requires_grad_()
    for divergence in (forward_kl(s2, both), reverse_kl(s2, both), generalized_jsd(s2, both, 0.3)):
        assert divergence.item() == pytest.approx(0.0, abs=1e-6)
        (grad,) = torch.autograd.grad(divergence, s2)
        assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_divergences_are_zero_for_identical_inputs_and_nonnegative(beta):
    s, t = F.log_softmax(_logits(4, 9, seed=5), -1), F.log_softmax(_logits(4, 9, seed=6), -1)
    assert generalized_jsd(s, s.clone(), beta).abs().max().item() < 1e-6
    assert bool((generalized_jsd(s, t, beta) > 0).all())
    assert forward_kl(t, t).abs().max().item() < 1e-6 and reverse_kl(t, t).abs().max().item() < 1e-6


# ----------------------------------------------------------------------------------------------------------
# CausalLMKDLoss


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_top_k_equal_to_vocab_is_the_full_vocabulary_loss(divergence, temperature):
    s, t = _logits(2, 5, V, seed=7), _logits(2, 5, V, seed=8)
    labels = _labels(2, 5, prompt=[1, 2])
    loss_fn = CausalLMKDLoss(alpha=0.0, kd_temperature=temperature, divergence=divergence, beta=0.3)
    student = s.clone().requires_grad_()
    full, full_parts = loss_fn(student, t, labels)
    (full_grad,) = torch.autograd.grad(full, student)
    top, top_parts = loss_fn(student, topk_of(t, V), labels)
    (top_grad,) = torch.autograd.grad(top, student)
    assert full_parts["kd"].item() > 1e-3
    torch.testing.assert_close(top, full)
    torch.testing.assert_close(top_grad, full_grad)
    assert bool(torch.isfinite(top_grad).all())


def test_kd_part_carries_t_squared_and_matches_a_direct_computation():
    s, t = _logits(2, 4, V, seed=9), _logits(2, 4, V, seed=10)
    labels = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(0))
    _, parts = CausalLMKDLoss(alpha=0.5, kd_temperature=3.0)(s, t, labels)
    kl = F.kl_div(F.log_softmax(s[:, :-1] / 3, -1), F.log_softmax(t[:, :-1] / 3, -1), log_target=True, reduction="sum")
    assert parts["kd"].item() == pytest.approx(9.0 * kl.item() / 6, rel=1e-5)  # 2 rows x 3 shifted positions


def test_prompt_and_padding_positions_do_not_count():
    s, t = _logits(2, 6, V, seed=11), topk_of(_logits(2, 6, V, seed=12), 4)
    labels = _labels(2, 6, prompt=[3, 1])  # row 0: labels[:, 1:3] = -100, so logits at 0, 1 are not trained on
    loss_fn = CausalLMKDLoss(alpha=0.5, kd_temperature=2.0)
    total, parts = loss_fn(s, t, labels)
    changed = s.clone()
    changed[0, :2] += _logits(2, V, seed=13)  # positions whose shifted label is -100
    changed[1, 4] += _logits(V, seed=14)  # row 1's label at 5 is padding
    changed[:, -1] += 5.0  # the last position predicts nothing
    total2, parts2 = loss_fn(changed, t, labels)
    assert total2.item() == total.item() and parts2["ce"].item() == parts["ce"].item()
    changed[0, 2] += _logits(V, seed=15)  # predicts labels[0, 3], a trained token
    total3, parts3 = loss_fn(changed, t, labels)
    assert parts3["ce"].item() != parts["ce"].item() and parts3["kd"].item() != parts["kd"].item()


def test_logits_at_t_predict_labels_at_t_plus_1():
    labels = _labels(2, 6, prompt=[2, 0])
    right, wrong = torch.zeros(2, 6, V), torch.zeros(2, 6, V)
    for b in range(2):
        for pos in range(5):
            if labels[b, pos + 1] != -100:
                right[b, pos, labels[b, pos + 1]] = 30.0
            if labels[b, pos] != -100:
                wrong[b, pos, labels[b, pos]] = 30.0
    loss_fn = CausalLMKDLoss(alpha=1.0, kd_temperature=1.0)
    assert loss_fn(right, None, labels)[0].item() < 1e-6
    assert loss_fn(wrong, None, labels)[0].item() > 1.0


@pytest.mark.parametrize("teacher_kind", ["topk", "full"])
def test_micro_batches_with_num_items_sum_to_the_whole_batch(teacher_kind):
    s, t = _logits(4, 7, V, seed=16), _logits(4, 7, V, seed=17)
    labels = _labels(4, 7, prompt=[1, 5, 2, 4])  # different labelled counts per row
    teacher = topk_of(t, 5) if teacher_kind == "topk" else t
    loss_fn = CausalLMKDLoss(alpha=0.3, kd_temperature=2.0, divergence="jsd", beta=0.5)
    whole_total, whole = loss_fn(s, teacher, labels)
    num_items = int(labels[:, 1:].ne(-100).sum())  # as the HF Trainer counts them across accumulation steps
    halves = [slice(0, 2), slice(2, 4)]
    sums = {"total": 0.0, "ce": 0.0, "kd": 0.0}
    for rows in halves:
        if teacher_kind == "topk":
            part_teacher = TopK(teacher.logprobs[rows], teacher.ids[rows], teacher.tail[rows])
        else:
            part_teacher = t[rows]
        total, parts = loss_fn(s[rows], part_teacher, labels[rows], num_items=num_items)
        sums["total"] += total.item()
        sums["ce"] += parts["ce"].item()
        sums["kd"] += parts["kd"].item()
    assert sums["total"] == pytest.approx(whole_total.item(), abs=1e-5)
    assert sums["ce"] == pytest.approx(whole["ce"].item(), abs=1e-5)
    assert sums["kd"] == pytest.approx(whole["kd"].item(), abs=1e-5)
    # without num_items each half is its own mean, which differs here
    own = [loss_fn(s[rows], None, labels[rows])[0].item() for rows in halves]
    assert sum(own) / 2 != pytest.approx(whole["ce"].item(), abs=1e-3)


def test_gradients_reach_only_the_student_with_an_inference_mode_teacher():
    with torch.inference_mode():
        teacher_logits = _logits(2, 5, V, seed=18)
        teacher = topk_of(teacher_logits, 4)
    labels = _labels(2, 5, prompt=[1, 1])
    student = _logits(2, 5, V, seed=19).requires_grad_()
    loss_fn = CausalLMKDLoss(alpha=0.5, kd_temperature=2.0, divergence="reverse_kl")
    for signal in (teacher, teacher_logits):
        total, _ = loss_fn(student, signal, labels)
        (grad,) = torch.autograd.grad(total, student)
        assert grad.abs().sum().item() > 0
    live = _logits(2, 5, V, seed=20).requires_grad_()
    loss_fn(student, live, labels)[0].backward()
    assert live.grad is None and student.grad is not None


def test_uint16_ids_give_the_same_loss_as_int64():
    s, t = _logits(2, 5, V, seed=21), topk_of(_logits(2, 5, V, seed=22), 6)
    compact = TopK(t.logprobs.half(), t.ids.to(torch.uint16), t.tail.half())
    labels = _labels(2, 5, prompt=[2, 0])
    loss_fn = CausalLMKDLoss(alpha=0.0, kd_temperature=1.0)
    reference = loss_fn(s, TopK(compact.logprobs.float(), t.ids, compact.tail.float()), labels)[0]
    torch.testing.assert_close(loss_fn(s, compact, labels)[0], reference)
    assert compact.to("cpu").ids.dtype == torch.uint16


def test_no_teacher_is_cross_entropy_and_no_labels_uses_every_position_but_the_last():
    s, t = _logits(2, 5, V, seed=23), topk_of(_logits(2, 5, V, seed=24), 4)
    labels = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    total, parts = CausalLMKDLoss(alpha=0.2, kd_temperature=2.0)(s, None, labels)
    expected = F.cross_entropy(s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert set(parts) == {"ce"} and total.item() == pytest.approx(expected.item(), rel=1e-6)
    loss_fn = CausalLMKDLoss(alpha=0.0, kd_temperature=2.0)
    no_labels, no_label_parts = loss_fn(s, t, None)
    assert set(no_label_parts) == {"kd"}
    assert no_labels.item() == pytest.approx(loss_fn(s, t, labels)[1]["kd"].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(alpha=1.5, kd_temperature=1.0), "alpha=1.5"),
        (dict(alpha=0.5, kd_temperature=0.0), "kd_temperature=0.0"),
        (dict(alpha=0.5, kd_temperature=float("inf")), "kd_temperature=inf"),
        (dict(alpha=0.5, kd_temperature=1.0, divergence="kl"), "divergence='kl'"),
        (dict(alpha=0.5, kd_temperature=1.0, divergence="jsd", beta=-0.1), "beta=-0.1"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(DistilError, match=match):
        CausalLMKDLoss(**kwargs)


def test_bad_inputs_raise():
    s = _logits(2, 5, V)
    labels = _labels(2, 5, prompt=[1, 1])
    loss_fn = CausalLMKDLoss(alpha=0.5, kd_temperature=1.0)
    for k in (0, V + 1):
        with pytest.raises(DistilError, match=rf"causal_lm.top_k={k}: must be in 1\.\.{V}"):
            topk_of(s, k)
    with pytest.raises(DistilError, match="labels=None but alpha=0.5"):
        loss_fn(s, topk_of(s, 4), None)
    with pytest.raises(DistilError, match="both None"):
        CausalLMKDLoss(alpha=0.0, kd_temperature=1.0)(s, None, None)
    with pytest.raises(DistilError, match="labels shape"):
        loss_fn(s, None, labels[:, :-1])
    with pytest.raises(DistilError, match=r"the \(B, T\) of both must match"):
        loss_fn(s, topk_of(_logits(2, 4, V), 4), labels)
    with pytest.raises(DistilError, match="student shape"):
        loss_fn(s, _logits(2, 5, V + 1), labels)
    with pytest.raises(DistilError, match="token ids span"):
        CausalLMKDLoss(alpha=0.0, kd_temperature=1.0)(s[..., :16], topk_of(s, 4), None)  # ids from a larger vocab
    with pytest.raises(DistilError, match="tail shape"):
        TopK(torch.zeros(2, 5, 4), torch.zeros(2, 5, 4, dtype=torch.long), torch.zeros(2, 4))


def test_a_one_token_sequence_has_nothing_to_predict():
    s, t = _logits(2, 1, V, seed=27), topk_of(_logits(2, 1, V, seed=28), 4)
    total, parts = CausalLMKDLoss(alpha=0.5, kd_temperature=1.0)(s, t, torch.zeros(2, 1, dtype=torch.long))
    assert total.item() == 0.0 and parts["ce"].item() == 0.0 and parts["kd"].item() == 0.0


def test_extra_repr_names_the_settings():
    text = repr(CausalLMKDLoss(alpha=0.5, kd_temperature=2.0, divergence="jsd", beta=0.25))
    assert "alpha=0.5" in text and "kd_temperature=2.0" in text and "divergence='jsd'" in text and "beta=0.25" in text
