"""KD losses for causal language models from a teacher's cached top-k next-token distributions (plus a tail bucket).

Why top-k plus a tail. A full next-token distribution is V floats per token (151,936 for Qwen2: ~300 KB at
float16), far too much to cache for a corpus. The teacher's mass sits on a few tokens, so the cache keeps, per
position, the log-probabilities (at temperature 1) of the teacher's k most likely next tokens and their ids, and
one more number, the log of the mass left over: ``tail = log(1 - sum(exp(logprobs)))``. With float16 log-probs and
uint16 ids that is 2 + 2 bytes per kept token, 256 B per position at k = 64 (DistillKit reports ~300 B per token at
k = 128 after compression). uint16 holds ids below 65,536; a larger vocabulary (Llama 3, Qwen2) needs int32 ids,
6 B per kept token. The loss compares teacher and student over k + 1 buckets: the teacher's k tokens, and one
bucket for every other token (the student's tail is its exact mass outside those k tokens). Without the tail bucket
the student would only be told how to share out the mass on the k tokens, never how much to leave elsewhere; with
it, k = V is exactly the full-vocabulary loss.

Temperature. The cache is at T = 1. At another T the teacher's k + 1 buckets are renormalised after dividing by T,
as if the tail were one token (``log_softmax(cat([logprobs, tail]) / T)``). That is an approximation: tempering the
tail's tokens one by one would give ``sum_i p_i^(1/T)``, which the cache cannot recover. It is exact at T = 1, and
at any T when k = V (the tail is -inf and ``log_softmax(logprobs / T) = log_softmax(logits / T)``). The student's
buckets are exact at every T (its full logits are at hand).

Divergences (per position, summed over the buckets, times T^2 as everywhere in distil): forward KL
(teacher || student, Hinton), reverse KL (student || teacher, MiniLLM) and TRL's generalised Jensen-Shannon
divergence with its beta (GKD). A bucket with zero probability adds exactly 0 (no ``0 * -inf = nan``).

Shift and reduction. Labels are unshifted (Hugging Face causal-LM convention, -100 = not trained on: prompt,
padding); the logits at t predict ``labels[:, t + 1]``. Both terms are sums over the labelled shifted positions
divided by N, the labelled tokens of the whole accumulated batch (``num_items``, as the HF Trainer counts them) or
of this batch, so the micro-batches of one step accumulate to the loss of one big batch. Conventions: docs/losses.md.

References:
    Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015. arXiv:1503.02531.
    Agarwal et al. "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes" (GKD),
    ICLR 2024. arXiv:2306.13649.
    Gu, Dong, Wei, Huang. "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024. arXiv:2306.08543.
    Arcee AI, DistillKit (github.com/arcee-ai/DistillKit): offline top-k logit distillation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distil.errors import DistilError
from distil.losses.logits import IGNORE_INDEX, _check_temperature, as_constant, check_same_shape

DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------------------
# the teacher signal


@dataclass(frozen=True)
class TopK:
    """A teacher's top-k next-token distributions at temperature 1, per position.

    Args:
        logprobs: (B, T, k) float log-probabilities of the teacher's k most likely next tokens.
        ids: (B, T, k) integer token ids of those tokens (any integer dtype, torch.uint16 included).
        tail: (B, T) float log of the remaining mass, ``log(1 - sum(exp(logprobs)))``; -inf when nothing remains.

    Raises:
        DistilError: the three shapes do not agree, or ids are not integers.

    Example:
        >>> t = topk_of(torch.randn(2, 5, 32), k=4)
        >>> t.k, tuple(t.ids.shape), tuple(t.tail.shape)
        (4, (2, 5, 4), (2, 5))
    """

    logprobs: Tensor
    ids: Tensor
    tail: Tensor

    def __post_init__(self) -> None:
        if self.logprobs.dim() != 3 or self.ids.shape != self.logprobs.shape:
            raise DistilError(
                f"TopK: logprobs shape {tuple(self.logprobs.shape)} and ids shape {tuple(self.ids.shape)} must be "
                "the same (B, T, k)"
            )
        if tuple(self.tail.shape) != tuple(self.logprobs.shape[:-1]):
            raise DistilError(
                f"TopK: tail shape {tuple(self.tail.shape)} must be {tuple(self.logprobs.shape[:-1])} (B, T): one "
                "log-mass per position"
            )
        if self.ids.is_floating_point() or self.ids.is_complex() or self.ids.dtype == torch.bool:
            raise DistilError(f"TopK: ids have dtype {self.ids.dtype}; expected an integer dtype (token ids)")

    @property
    def k(self) -> int:
        """How many tokens are kept per position."""
        return self.logprobs.shape[-1]

    def to(self, device: torch.device | str) -> TopK:
        """The same top-k on ``device`` (dtypes kept)."""
        return TopK(self.logprobs.to(device), self.ids.to(device), self.tail.to(device))


def topk_of(logits: Tensor, k: int) -> TopK:
    """The top-k log-probabilities (temperature 1), their ids and the tail log-mass of full next-token logits.

    The tail is the logsumexp of the log-probs outside the top k (computed, not ``log(1 - sum)``), so it is accurate
    when little mass remains and exactly -inf when k = V.

    Args:
        logits: (B, T, V) next-token logits, any float dtype (log_softmax runs in float32).
        k: how many tokens to keep, 1 <= k <= V.

    Returns:
        A :class:`TopK` with float32 log-probs (B, T, k), int64 ids (B, T, k) and float32 tail (B, T).

    Raises:
        DistilError: logits are not 3-D, or k is outside 1..V.

    Example:
        >>> t = topk_of(torch.randn(1, 3, 16), k=16)
        >>> bool(torch.isneginf(t.tail).all())
        True
    """
    if logits.dim() != 3:
        raise DistilError(f"topk_of: logits have shape {tuple(logits.shape)}; expected (B, T, V)")
    vocab = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise DistilError(f"causal_lm.top_k={k!r}: must be in 1..{vocab} (the vocabulary size)")
    log_probs = F.log_softmax(logits.detach().float(), dim=-1)  # (B, T, V)
    top_logprobs, top_ids = log_probs.topk(k, dim=-1)  # (B, T, k) each
    tail = log_probs.scatter(-1, top_ids, _NEG_INF).logsumexp(-1)  # (B, T)
    return TopK(top_logprobs, top_ids, tail)


def _check_topk(what: str, student_logits: Tensor, teacher: TopK) -> None:
    """(B, T) of both match; every teacher id is in the student's vocabulary (one host sync per batch: an
    out-of-range id would otherwise be a device-side assert in gather)."""
    if student_logits.dim() != 3:
        raise DistilError(f"{what}: student logits have shape {tuple(student_logits.shape)}; expected (B, T, V)")
    if tuple(teacher.ids.shape[:2]) != tuple(student_logits.shape[:2]):
        raise DistilError(
            f"{what}: teacher top-k ids/logprobs have shape {tuple(teacher.ids.shape)} but the student logits are "
            f"{tuple(student_logits.shape)}; the (B, T) of both must match (same rows, same token positions)"
        )
    vocab = student_logits.shape[-1]
    if teacher.k > vocab:
        raise DistilError(f"{what}: teacher keeps k={teacher.k} tokens but the student's vocabulary has {vocab}")
    low, high = torch.aminmax(teacher.ids.long()) if teacher.ids.numel() else (torch.tensor(0), torch.tensor(0))
    if int(low) < 0 or int(high) >= vocab:
        raise DistilError(
            f"{what}: teacher token ids span {int(low)}..{int(high)} but the student's vocabulary is 0..{vocab - 1}; "
            "teacher and student must share one tokenizer (and the cache must have been built with it)"
        )


def bucket_log_probs(student_logits: Tensor, teacher: TopK, temperature: float) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over k + 1 buckets (the teacher's k tokens, then the tail), at T.

    Student: ``student_logits / T - logsumexp(student_logits / T)`` gathered at the teacher's ids, and the tail
    ``log(1 - sum of those k probabilities)`` (one pass over the vocabulary, the logsumexp; the tail needs none; it
    is floored at 1e-6 of mass, and -inf where the teacher's tail is -inf, i.e. k = V). Teacher:
    ``log_softmax(cat([logprobs, tail]) / T)``: the tail is
    tempered as if it were one token (exact at T = 1, and at any T when k = V). Computed in float32.

    Args:
        student_logits: (B, T, V) raw student logits.
        teacher: the teacher's :class:`TopK` at the same (B, T); treated as a constant.
        temperature: T > 0.

    Returns:
        ``(student, teacher)``, each (B, T, k + 1) float32 log-probabilities; a bucket with no mass is -inf.

    Raises:
        DistilError: shapes disagree, teacher ids fall outside the student's vocabulary, or T <= 0.

    Example:
        >>> s, t = bucket_log_probs(torch.randn(2, 3, 16), topk_of(torch.randn(2, 3, 16), k=4), 2.0)
        >>> tuple(s.shape), tuple(t.shape)
        ((2, 3, 5), (2, 3, 5))
    """
    _check_topk("bucket_log_probs", student_logits, teacher)
    _check_temperature(temperature)
    scaled = student_logits.float() if temperature == 1 else student_logits.float() / temperature  # (B, T, V)
    return _buckets(scaled, torch.logsumexp(scaled, dim=-1), teacher, temperature)


_MAX_COVERED = 1.0 - 1e-6
"""The student's top-k mass is capped here before log(1 - mass): float32 cannot resolve a smaller tail."""


def _buckets(scaled: Tensor, lse: Tensor, teacher: TopK, temperature: float) -> tuple[Tensor, Tensor]:
    """`bucket_log_probs` from the student's tempered logits (B, T, V) and their logsumexp (B, T)."""
    ids = as_constant(teacher.ids).long()  # (B, T, k)
    student_top = scaled.gather(-1, ids) - lse.unsqueeze(-1)  # (B, T, k)
    covered = student_top.exp().sum(-1, keepdim=True).clamp(max=_MAX_COVERED)  # (B, T, 1)
    teacher_top = as_constant(teacher.logprobs).float()  # (B, T, k)
    teacher_tail = as_constant(teacher.tail).float().unsqueeze(-1)  # (B, T, 1)
    no_tail = torch.isneginf(teacher_tail)  # k = V: nothing outside the k tokens
    student_tail = torch.where(no_tail, _NEG_INF, torch.log1p(-covered))  # (B, T, 1)
    student = torch.cat([student_top, student_tail], dim=-1)  # (B, T, k + 1)
    teacher_buckets = torch.cat([teacher_top, teacher_tail], dim=-1)  # (B, T, k + 1)
    return student, F.log_softmax(teacher_buckets / temperature, dim=-1)


# ----------------------------------------------------------------------------------------------------------
# divergences over the last dimension (zero-probability safe)


def _kl_terms(p_log: Tensor, q_log: Tensor) -> Tensor:
    """Elementwise ``p * (log p - log q)``, exactly 0 where p = 0 (log p = -inf), with finite gradients there."""
    empty = torch.isneginf(p_log)
    zero = torch.zeros((), dtype=p_log.dtype, device=p_log.device)
    # replace both sides before the product so neither the value nor its gradient sees 0 * -inf
    p_safe = torch.where(empty, zero, p_log)
    q_safe = torch.where(empty, zero, q_log)
    return torch.where(empty, zero, p_safe.exp() * (p_safe - q_safe))


def forward_kl(student_log_probs: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """KL(teacher || student) = ``sum t.exp() * (t - s)`` over the last dim (mass-covering; Hinton's KD).

    Args:
        student_log_probs: (..., n) log-probabilities s.
        teacher_log_probs: (..., n) log-probabilities t.

    Returns:
        (...) per-position divergence; buckets with teacher probability 0 add 0.

    Example:
        >>> s = torch.tensor([0.5, 0.4, 0.1]).log()
        >>> round(float(forward_kl(s, s)), 6)
        0.0
    """
    return _kl_terms(teacher_log_probs, student_log_probs).sum(-1)


def reverse_kl(student_log_probs: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """KL(student || teacher) = ``sum s.exp() * (s - t)`` over the last dim (mode-seeking; MiniLLM).

    Args:
        student_log_probs: (..., n) log-probabilities s.
        teacher_log_probs: (..., n) log-probabilities t.

    Returns:
        (...) per-position divergence; buckets with student probability 0 add 0.

    References:
        Gu, Dong, Wei, Huang. "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024.
        arXiv:2306.08543.

    Example:
        >>> s = torch.tensor([0.5, 0.4, 0.1]).log()
        >>> round(float(reverse_kl(s, s)), 6)
        0.0
    """
    return _kl_terms(student_log_probs, teacher_log_probs).sum(-1)


def generalized_jsd(student_log_probs: Tensor, teacher_log_probs: Tensor, beta: float) -> Tensor:
    """TRL's generalised Jensen-Shannon divergence: ``beta KL(t || m) + (1 - beta) KL(s || m)``.

    ``m = (1 - beta) p_s + beta p_t`` (computed as a logsumexp in log space). As in TRL's
    ``GKDTrainer.generalized_jsd_loss`` (trl/trainer/gkd_trainer.py), beta = 0 is forward KL(t || s) and beta = 1 is
    reverse KL(s || t) by definition. Note the discontinuity: the mixture formula itself tends to 0 as beta -> 0 or
    1 (it behaves like ``beta KL(t || s)`` near 0), so beta = 0.01 gives a loss about 100 times smaller than
    beta = 0. TRL's F.kl_div gives nan where both probabilities are 0; here such buckets add 0.

    Args:
        student_log_probs: (..., n) log-probabilities s.
        teacher_log_probs: (..., n) log-probabilities t.
        beta: in [0, 1].

    Returns:
        (...) per-position divergence.

    Raises:
        DistilError: beta outside [0, 1].

    References:
        Agarwal et al. "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
        ICLR 2024, eq. (1). arXiv:2306.13649. TRL ``GKDTrainer.generalized_jsd_loss``.

    Example:
        >>> s, t = torch.tensor([0.5, 0.5]).log(), torch.tensor([1.0, 0.0]).log()
        >>> round(float(generalized_jsd(s, t, 0.5)), 4)  # 0.5 ln(4/3) + 0.25 ln(2/3) + 0.25 ln 2
        0.2158
    """
    _check_beta(beta)
    if beta == 0:
        return forward_kl(student_log_probs, teacher_log_probs)
    if beta == 1:
        return reverse_kl(student_log_probs, teacher_log_probs)
    # buckets empty on both sides would make the logsumexp -inf with a nan gradient; they add 0 anyway
    dead = torch.isneginf(student_log_probs) & torch.isneginf(teacher_log_probs)
    zero = torch.zeros((), dtype=student_log_probs.dtype, device=student_log_probs.device)
    s = torch.where(dead, zero, student_log_probs)
    t = torch.where(dead, zero, teacher_log_probs)
    mixture = torch.stack([s + math.log1p(-beta), t + math.log(beta)]).logsumexp(0)  # (..., n)
    kl_teacher = _kl_terms(torch.where(dead, _NEG_INF, t), mixture).sum(-1)
    kl_student = _kl_terms(torch.where(dead, _NEG_INF, s), mixture).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise DistilError(
            f"beta={beta!r}: must be in [0, 1] (generalised JSD: 0 = forward KL, 1 = reverse KL, between = mixture)"
        )


def _divergence(name: str, student_log_probs: Tensor, teacher_log_probs: Tensor, beta: float) -> Tensor:
    if name == "forward_kl":
        return forward_kl(student_log_probs, teacher_log_probs)
    if name == "reverse_kl":
        return reverse_kl(student_log_probs, teacher_log_probs)
    return generalized_jsd(student_log_probs, teacher_log_probs, beta)


# ----------------------------------------------------------------------------------------------------------
# the objective


def _check_settings(alpha: float, kd_temperature: float, divergence: str, beta: float) -> None:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise DistilError(f"alpha={alpha!r}: must be in [0, 1] (weight of the next-token cross-entropy)")
    _check_temperature(kd_temperature)
    if divergence not in DIVERGENCES:
        raise DistilError(f"divergence={divergence!r}: must be one of {list(DIVERGENCES)}")
    _check_beta(beta)


def _token_count(mask: Tensor, num_items: int | Tensor | None) -> Tensor:
    """N of the reduction: ``num_items`` (the accumulated batch's labelled tokens) or this batch's, at least 1."""
    if num_items is None:
        return mask.sum().clamp_min(1).float()
    if isinstance(num_items, Tensor):
        return num_items.detach().to(mask.device).float().clamp_min(1)
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
        raise DistilError(
            f"num_items={num_items!r}: must be a count >= 0 (labelled shifted tokens of the accumulated batch)"
        )
    return torch.tensor(float(max(num_items, 1)), device=mask.device)


def _kd_per_position(
    student_logits: Tensor, teacher: TopK | Tensor, kd_temperature: float, divergence: str, beta: float
) -> Tensor:
    """(B, T) divergence at each position, on the k + 1 buckets (TopK) or on the full vocabulary (logits)."""
    if isinstance(teacher, TopK):
        student_log_probs, teacher_log_probs = bucket_log_probs(student_logits, teacher, kd_temperature)
        return _divergence(divergence, student_log_probs, teacher_log_probs, beta)
    scaled = student_logits.float() if kd_temperature == 1 else student_logits.float() / kd_temperature
    with torch.no_grad():
        teacher_log_probs = F.log_softmax(as_constant(teacher).float() / kd_temperature, dim=-1)  # (B, T, V)
    if divergence == "forward_kl":  # sum p_t log p_t - sum p_t z_s + logsumexp z_s: two passes, no (B, T, V) graph
        with torch.no_grad():
            p = teacher_log_probs.exp()
            entropy_term = torch.xlogy(p, p).sum(-1)  # (B, T); 0 log 0 = 0
        return entropy_term - (p * scaled).sum(-1) + torch.logsumexp(scaled, dim=-1)
    return _divergence(divergence, F.log_softmax(scaled, dim=-1), teacher_log_probs, beta)


def causal_lm_kd_objective(
    student_logits: Tensor,
    teacher: TopK | Tensor | None,
    labels: Tensor | None,
    alpha: float,
    kd_temperature: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_items: int | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``alpha * CE + (1 - alpha) * T^2 * divergence`` per next-token position, normalised by the labelled tokens.

    Labels are unshifted (HF convention): the logits at t predict ``labels[:, t + 1]``, so the loss compares
    ``student_logits[:, :-1]`` and the teacher at ``[:, :-1]`` with ``labels[:, 1:]`` and keeps the positions whose
    shifted label is not -100. Both terms are sums over those positions divided by N = ``num_items`` (the labelled
    shifted tokens of the whole accumulated batch) or, without it, this batch's count (at least 1). Computed in
    float32.

    Args:
        student_logits: (B, T, V) raw student logits.
        teacher: the teacher's cached :class:`TopK` at (B, T); or (B, T, V) logits of a live teacher (the divergence
            then runs over the full vocabulary); or None for plain next-token cross-entropy (alpha ignored).
        labels: (B, T) unshifted token ids, -100 where not trained on (prompt, padding); None only when alpha = 0,
            and then every position but the last counts.
        alpha: weight in [0, 1] of the cross-entropy; the KD term gets ``1 - alpha``.
        kd_temperature: T > 0; the divergence is taken at T and scaled by T^2.
        divergence: "forward_kl" (teacher || student), "reverse_kl" (student || teacher) or "jsd" (TRL's, with beta).
        beta: the generalised JSD's beta in [0, 1] (used by "jsd" only).
        num_items: labelled shifted tokens of the accumulated batch (int or 0-d tensor), or None.

    Returns:
        ``(total, parts)``: the scalar total and the unweighted parts ``{"ce": ..., "kd": ...}`` (each present only if
        computed; "kd" already carries T^2), attached to the graph.

    Raises:
        DistilError: a bad alpha, kd_temperature, divergence, beta or num_items; labels and teacher both None;
            labels None while alpha > 0; or shapes that do not match.

    References:
        Hinton et al. 2015 (arXiv:1503.02531); Agarwal et al., GKD, 2024 (arXiv:2306.13649); Gu et al., MiniLLM, 2024
        (arXiv:2306.08543).

    Example:
        >>> logits, labels = torch.randn(2, 6, 32), torch.randint(0, 32, (2, 6))
        >>> total, parts = causal_lm_kd_objective(logits, topk_of(torch.randn(2, 6, 32), 4), labels, 0.5, 1.0)
        >>> sorted(parts)
        ['ce', 'kd']
    """
    _check_settings(alpha, kd_temperature, divergence, beta)
    if student_logits.dim() != 3:
        raise DistilError(
            f"causal_lm_kd_objective: student logits have shape {tuple(student_logits.shape)}; expected (B, T, V)"
        )
    batch, length, vocab = student_logits.shape
    if labels is None and teacher is None:
        raise DistilError("causal_lm_kd_objective: labels and teacher are both None; pass labels, a teacher, or both")
    if labels is None and alpha > 0:
        raise DistilError(f"causal_lm_kd_objective: labels=None but alpha={alpha}; pass labels or set alpha=0")
    if labels is not None and tuple(labels.shape) != (batch, length):
        raise DistilError(
            f"causal_lm_kd_objective: labels shape {tuple(labels.shape)} does not match the student logits "
            f"{tuple(student_logits.shape)}; expected {(batch, length)} unshifted token ids ({IGNORE_INDEX} = ignore)"
        )
    # The logits at t predict the token at t + 1. Every term is computed at all T positions (no (B, T - 1, V)
    # copy of the logits) and position T - 1, which predicts nothing, is masked out.
    device = student_logits.device
    if labels is not None:
        after = torch.full((batch, 1), IGNORE_INDEX, dtype=torch.long, device=device)
        targets = torch.cat([as_constant(labels)[:, 1:].long(), after], dim=1)  # (B, T): the token at t + 1
        mask = targets != IGNORE_INDEX  # (B, T)
    else:
        mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        mask[:, -1] = False
    count = _token_count(mask, num_items)
    zero = torch.zeros((), device=device)
    logits = student_logits.float()  # (B, T, V); no copy when already float32
    lse = torch.logsumexp(logits, dim=-1)  # (B, T): shared by the CE and, at T = 1, the buckets
    parts: dict[str, Tensor] = {}
    if labels is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and (alpha > 0 or teacher is None)):  # else: logged
            picked = logits.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T)
            parts["ce"] = torch.where(mask, lse - picked, zero).sum() / count
    if teacher is None:
        return parts["ce"], parts
    if isinstance(teacher, TopK):
        _check_topk("causal_lm_kd_objective", student_logits, teacher)  # shapes, and ids within the vocabulary
        if kd_temperature == 1:
            s, t = _buckets(logits, lse, teacher, 1.0)
        else:
            scaled = logits / kd_temperature
            s, t = _buckets(scaled, torch.logsumexp(scaled, dim=-1), teacher, kd_temperature)
        per_position = _divergence(divergence, s, t, beta)  # (B, T)
    else:
        fix = "full teacher logits must be (B, T, V) like the student's (same rows, positions, vocabulary)"
        check_same_shape("causal_lm_kd_objective", student_logits, teacher, fix)
        per_position = _kd_per_position(logits, teacher, kd_temperature, divergence, beta)  # (B, T)
    parts["kd"] = kd_temperature**2 * torch.where(mask, per_position, zero).sum() / count
    total = (1.0 - alpha) * parts["kd"]
    if "ce" in parts:
        total = alpha * parts["ce"] + total
    return total, parts


# ----------------------------------------------------------------------------------------------------------
# module


class CausalLMKDLoss(nn.Module):
    """Causal-LM KD: ``alpha * CE + (1 - alpha) * T^2 * divergence`` per labelled next-token position.

    Args:
        alpha: weight in [0, 1] of the next-token cross-entropy; the KD term gets ``1 - alpha``.
        kd_temperature: T > 0 of the divergence (scaled by T^2).
        divergence: "forward_kl", "reverse_kl" or "jsd".
        beta: the generalised JSD's beta in [0, 1] (TRL convention: 0 = forward KL, 1 = reverse KL).

    Forward args/returns: see :func:`causal_lm_kd_objective`; ``forward(student_logits, teacher, labels,
    num_items=None) -> (total, {"ce": ..., "kd": ...})`` with ``teacher`` a :class:`TopK`, full (B, T, V) teacher
    logits, or None.

    Raises:
        DistilError: on a bad alpha, kd_temperature, divergence or beta, at construction.

    References:
        Agarwal et al. "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes" (GKD),
        ICLR 2024. arXiv:2306.13649.

    Example:
        >>> loss_fn = CausalLMKDLoss(alpha=0.5, kd_temperature=1.0, divergence="jsd", beta=0.5)
        >>> logits, labels = torch.randn(2, 6, 32), torch.randint(0, 32, (2, 6))
        >>> total, parts = loss_fn(logits, topk_of(torch.randn(2, 6, 32), k=8), labels)
    """

    def __init__(self, alpha: float, kd_temperature: float, divergence: str = "forward_kl", beta: float = 0.5):
        super().__init__()
        _check_settings(alpha, kd_temperature, divergence, beta)
        self.alpha = float(alpha)
        self.kd_temperature = float(kd_temperature)
        self.divergence = divergence
        self.beta = float(beta)

    def forward(
        self,
        student_logits: Tensor,
        teacher: TopK | Tensor | None,
        labels: Tensor | None,
        num_items: int | Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return causal_lm_kd_objective(
            student_logits,
            teacher,
            labels,
            self.alpha,
            self.kd_temperature,
            self.divergence,
            self.beta,
            num_items,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, kd_temperature={self.kd_temperature}, divergence={self.divergence!r}, "
            f"beta={self.beta}"
        )
