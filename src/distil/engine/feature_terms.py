"""The feature terms a distiller can add to the task's KD term, as one table.

Each entry names its weight in `distil.config.LossConfig`, the learned module it needs (a projection when the
widths differ) and how it computes its parts from the features both models' taps captured. The distiller sums
``weight * part`` over the table's entries whose weight is > 0; nothing else lists the terms.

    embedding        TinyBERT: MSE(E_s W_e, E_t)
    hidden           TinyBERT: mean over mapped layers of MSE(H_s W_h, H_t) (the paper sums)
    hidden_cosine    DistilBERT: 1 - cos between the last hidden states
    attention        TinyBERT: mean over mapped layers of MSE(pre-softmax scores) (the paper sums)
    attention_kl     mean over mapped layers of KL(attention probabilities)
    minilm_attention MiniLM: KL of the MiniLM layer's attention distributions
    minilm_value     MiniLM v1 value relation, or MiniLMv2's Q-Q, K-K and V-V relations (three parts, one weight)
    rkd_distance/rkd_angle  RKD on the first ([CLS]) token of the last hidden states
    mlm              DistilBERT: the student's masked-LM cross-entropy on ``mlm_labels``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distil.config import FEATURE_WEIGHTS, LossConfig
from distil.engine.compatibility import uses_value_v1
from distil.losses import (
    HiddenCosineLoss,
    HiddenMSELoss,
    attention_kl_loss,
    attention_mse_loss,
    qkv_relation_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    self_attention_distribution_loss,
    value_relation_loss,
)
from distil.losses.logits import IGNORE_INDEX
from distil.models.features import Features


@dataclass
class TermInputs:
    """What a feature term reads for one batch."""

    cfg: LossConfig
    modules: nn.ModuleDict  # the learned projections, by term name
    s: Features | None  # the student's captured features
    t: Features | None  # the teacher's
    pairs: list[tuple[int, int]]  # (student layer, teacher layer)
    teacher_last: int
    heads: tuple[int, int]  # (student heads, teacher heads)
    mask: Tensor | None  # (B, L) attention mask
    logits: Tensor  # the student's (B, ..., V)
    mlm_labels: Tensor | None  # (B, L), -100 where not masked


def _mean_over_pairs(fn: Callable[[int, int], Tensor], pairs: list[tuple[int, int]]) -> Tensor:
    return torch.stack([fn(i, j) for i, j in pairs]).mean()


def _minilm_relations(x: TermInputs) -> dict[str, Tensor]:
    s_layer, t_layer = x.pairs[-1]  # the MiniLM layer: the student's last and the teacher layer mapped to it
    if uses_value_v1(x.cfg):
        values = value_relation_loss(x.s.values[s_layer], x.t.values[t_layer], *x.heads, x.mask)
        return {"minilm_value": values}
    heads = x.cfg.minilm_relation_heads
    sides = {"query": (x.s.queries, x.t.queries), "key": (x.s.keys, x.t.keys), "value": (x.s.values, x.t.values)}
    # (B, L, D_s) and (B, L, D_t) projection outputs; the relations (B, R, L, L) are formed inside the loss
    return {f"minilm_{k}": qkv_relation_loss(s[s_layer], t[t_layer], heads, x.mask) for k, (s, t) in sides.items()}


def _cls(x: TermInputs) -> tuple[Tensor, Tensor]:
    """(B, D) first-token vectors of both models' last layers."""
    return x.s.hidden[x.pairs[-1][0]][:, 0], x.t.hidden[x.teacher_last][:, 0]


def _rkd(loss: Callable[[Tensor, Tensor], Tensor], min_batch: int) -> Callable[[TermInputs], Tensor]:
    """An RKD term; a batch too small for it (a last partial batch) contributes 0."""

    def part(x: TermInputs) -> Tensor:
        s, t = _cls(x)
        return loss(s, t) if s.shape[0] >= min_batch else s.new_zeros((), dtype=torch.float32)

    return part


def _mlm(x: TermInputs) -> Tensor:
    vocab = x.logits.shape[-1]
    flat = x.logits.float().reshape(-1, vocab), x.mlm_labels.reshape(-1).long()  # (B*L, V), (B*L,)
    return F.cross_entropy(*flat, ignore_index=IGNORE_INDEX)  # over the masked tokens


@dataclass(frozen=True)
class FeatureTerm:
    """One row of the table: the weight field, how its parts are computed, and its learned module if any."""

    weight: str
    parts: Callable[[TermInputs], dict[str, Tensor]]
    module: Callable[[int, int], nn.Module] | None = None  # (student width, teacher width) -> projection
    needs_features: bool = True


def _one(name: str, fn: Callable[[TermInputs], Tensor]) -> Callable[[TermInputs], dict[str, Tensor]]:
    return lambda x: {name: fn(x)}


FEATURE_TERMS: dict[str, FeatureTerm] = {
    "embedding": FeatureTerm(
        "embedding_weight",
        _one("embedding", lambda x: x.modules["embedding"](x.s.embeddings, x.t.embeddings, x.mask)),
        HiddenMSELoss,  # TinyBERT's W_e
    ),
    "hidden": FeatureTerm(
        "hidden_weight",
        _one(
            "hidden",
            lambda x: _mean_over_pairs(
                lambda i, j: x.modules["hidden"](x.s.hidden[i], x.t.hidden[j], x.mask), x.pairs
            ),
        ),
        HiddenMSELoss,  # TinyBERT's W_h, shared by every mapped layer
    ),
    "hidden_cosine": FeatureTerm(
        "hidden_cosine_weight",
        _one(
            "hidden_cosine",
            lambda x: x.modules["hidden_cosine"](x.s.hidden[x.pairs[-1][0]], x.t.hidden[x.teacher_last], x.mask),
        ),
        HiddenCosineLoss,
    ),
    "attention": FeatureTerm(
        "attention_weight",
        _one(
            "attention",
            lambda x: _mean_over_pairs(
                lambda i, j: attention_mse_loss(x.s.attention_scores(i), x.t.attention_scores(j), x.mask), x.pairs
            ),
        ),
    ),
    "attention_kl": FeatureTerm(
        "attention_kl_weight",
        _one(
            "attention_kl",
            lambda x: _mean_over_pairs(
                lambda i, j: attention_kl_loss(x.s.attention_probs(i), x.t.attention_probs(j), x.mask), x.pairs
            ),
        ),
    ),
    "minilm_attention": FeatureTerm(
        "minilm_attention_weight",
        _one(
            "minilm_attention",
            lambda x: self_attention_distribution_loss(
                x.s.attention_probs(x.pairs[-1][0]), x.t.attention_probs(x.pairs[-1][1]), x.mask
            ),
        ),
    ),
    "minilm_value": FeatureTerm("minilm_value_weight", _minilm_relations),
    "rkd_distance": FeatureTerm("rkd_distance_weight", _one("rkd_distance", _rkd(rkd_distance_loss, 2))),
    "rkd_angle": FeatureTerm("rkd_angle_weight", _one("rkd_angle", _rkd(rkd_angle_loss, 3))),
    "mlm": FeatureTerm("mlm_weight", _one("mlm", _mlm), needs_features=False),
}
assert {t.weight for t in FEATURE_TERMS.values()} == set(FEATURE_WEIGHTS), "the table and LossConfig disagree"


def active_terms(cfg: LossConfig) -> dict[str, FeatureTerm]:
    """The table's entries whose weight is > 0, in table order."""
    return {name: term for name, term in FEATURE_TERMS.items() if getattr(cfg, term.weight) > 0}


def term_modules(cfg: LossConfig, student_width: int, teacher_width: int) -> nn.ModuleDict:
    """The learned modules (projections) of the active terms."""
    built = {name: t.module(student_width, teacher_width) for name, t in active_terms(cfg).items() if t.module}
    return nn.ModuleDict(built)


def part_weights(cfg: LossConfig) -> dict[str, float]:
    """Feature part name -> weight in the total; MiniLMv2 sums its Q-Q, K-K and V-V relations at one weight."""
    weights = {name: getattr(cfg, t.weight) for name, t in active_terms(cfg).items()}
    if "minilm_value" in weights and not uses_value_v1(cfg):
        weights["minilm_query"] = weights["minilm_key"] = weights["minilm_value"]
    return weights


def feature_parts(x: TermInputs) -> dict[str, Tensor]:
    """Every active term's parts (unweighted scalars) for one batch."""
    parts: dict[str, Tensor] = {}
    for term in active_terms(x.cfg).values():
        if term.needs_features and x.s is None:
            continue
        parts.update(term.parts(x))
    return parts
