"""What each distillation term needs from a teacher/student pair, and why it cannot run on this one.

Used by `Distiller` (refusing at construction) and `distil inspect` (reporting before any training);
decided from the models alone (architectures, head counts, widths, hookable modules), never from weights.
"""

from __future__ import annotations

import math

from torch import nn
from transformers import PreTrainedModel

from distil.config import FEATURE_WEIGHTS, LossConfig
from distil.errors import DistilError
from distil.models.features import (
    FeatureSpec,
    FeatureTap,
    encoder_layers,
    map_layers,
    model_hidden_size,
    model_num_heads,
    model_num_layers,
)

HEAD_PAIRED_WEIGHTS = ("attention_weight", "attention_kl_weight", "minilm_attention_weight")
"""Terms that compare attention head h of the student with head h of the teacher."""


def is_transformer(model: nn.Module) -> bool:
    """True for a transformers model with one encoder layer stack (what feature capture hooks), or a wrapper of one
    (a sentence encoder: its ``base_model``)."""
    if not isinstance(model if isinstance(model, PreTrainedModel) else getattr(model, "base_model", None),
                      PreTrainedModel):  # fmt: skip
        return False
    try:
        encoder_layers(model)
    except DistilError:
        return False
    return True


def has_mlm_head(model: nn.Module) -> bool:
    """True when the model predicts tokens (``get_output_embeddings()`` is a vocabulary projection)."""
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    return callable(get_output_embeddings) and get_output_embeddings() is not None


def uses_value_v1(loss_cfg: LossConfig) -> bool:
    """MiniLM v1's value relation (heads paired one to one) rather than MiniLMv2's relation heads."""
    return loss_cfg.minilm_value_weight > 0 and loss_cfg.minilm_relation_heads is None


def suggest_relation_heads(student_width: int, teacher_width: int, teacher_heads: int) -> int:
    """The largest R <= the teacher's head count that divides both widths (MiniLMv2 uses 12 for base teachers)."""
    common = math.gcd(student_width, teacher_width)
    return max(r for r in range(1, min(common, max(teacher_heads, 1)) + 1) if common % r == 0)


def term_specs(
    weight_name: str, loss_cfg: LossConfig, pairs: list[tuple[int, int]]
) -> tuple[FeatureSpec, FeatureSpec]:
    """(student spec, teacher spec) of the features one configured term reads, given the layer pairs."""
    student_last, teacher_minilm = pairs[-1]
    s_layers, t_layers = tuple(s for s, _ in pairs), tuple(t for _, t in pairs)
    if weight_name == "embedding_weight":
        return FeatureSpec(embeddings=True), FeatureSpec(embeddings=True)
    if weight_name == "hidden_weight":
        return FeatureSpec(hidden_layers=s_layers), FeatureSpec(hidden_layers=t_layers)
    if weight_name in ("attention_weight", "attention_kl_weight"):
        return FeatureSpec(attention_layers=s_layers), FeatureSpec(attention_layers=t_layers)
    if weight_name == "minilm_attention_weight":
        return FeatureSpec(attention_layers=(student_last,)), FeatureSpec(attention_layers=(teacher_minilm,))
    if weight_name == "minilm_value_weight":
        return FeatureSpec(qkv_layers=(student_last,)), FeatureSpec(qkv_layers=(teacher_minilm,))
    return FeatureSpec(), FeatureSpec()  # last hidden states: added by feature_specs, which knows the teacher depth


def feature_specs(
    loss_cfg: LossConfig, pairs: list[tuple[int, int]], teacher_layers: int
) -> tuple[FeatureSpec, FeatureSpec]:
    """(student spec, teacher spec): the union of what every term with a weight > 0 reads, nothing more."""
    specs = [term_specs(name, loss_cfg, pairs) for name in FEATURE_WEIGHTS if getattr(loss_cfg, name) > 0]
    last_hidden = any(
        getattr(loss_cfg, n) > 0 for n in ("hidden_cosine_weight", "rkd_distance_weight", "rkd_angle_weight")
    )
    merged = []
    for side, last in ((0, pairs[-1][0]), (1, teacher_layers - 1)):
        parts = [spec[side] for spec in specs]
        merged.append(
            FeatureSpec(
                embeddings=any(p.embeddings for p in parts),
                hidden_layers=tuple(layer for p in parts for layer in p.hidden_layers)
                + ((last,) if last_hidden else ()),
                attention_layers=tuple(layer for p in parts for layer in p.attention_layers),
                qkv_layers=tuple(layer for p in parts for layer in p.qkv_layers),
            )
        )
    return merged[0], merged[1]


def term_problems(loss_cfg: LossConfig, teacher: nn.Module, student: nn.Module) -> dict[str, str]:
    """Why each configured term (weight > 0) cannot run on this teacher/student pair; {} when all can.

    Checks what the models alone decide: a Transformer layer stack on both sides for feature terms, the layer
    map, head counts for head-paired terms (MiniLM v1 included), relation heads dividing both widths, hookable
    embeddings/q/k/v modules, an MLM head for ``mlm_weight``, and the label count for the logit terms. Works on
    models built on the meta device (no weights needed). Tokenisation is the caller's concern.

    Returns:
        {weight name: one-line reason}.
    """
    problems: dict[str, str] = {}
    if loss_cfg.logits_weight > 0:
        problems.update(_logit_problems(teacher, student))
    wanted = [name for name in FEATURE_WEIGHTS if getattr(loss_cfg, name) > 0]
    if not wanted:
        return problems
    for role, model in (("student", student), ("teacher", teacher)):
        if not is_transformer(model):
            extra = "use the kd recipe for an LSTM student" if role == "student" else "use a Transformer teacher"
            for name in wanted:
                problems.setdefault(
                    name,
                    f"needs the {role}'s Transformer layers, but the {role} is "
                    f"{type(model).__name__}: this recipe needs layers; {extra}",
                )
    if problems.keys() >= set(wanted):
        return problems
    try:
        pairs = map_layers(loss_cfg.layer_map, model_num_layers(student), model_num_layers(teacher))
    except DistilError as error:
        return {**problems, **{name: f"layer map: {error}" for name in wanted if name not in problems}}
    for name in wanted:
        if name not in problems and (reason := _feature_problem(name, loss_cfg, teacher, student, pairs)):
            problems[name] = reason
    return problems


def _logit_problems(teacher: nn.Module, student: nn.Module) -> dict[str, str]:
    t_labels, s_labels = num_outputs(teacher), num_outputs(student)
    if t_labels is not None and s_labels is not None and t_labels != s_labels:
        return {
            "logits_weight": f"teacher predicts {t_labels} outputs, student {s_labels}: logit distillation needs "
            "the same label set (same classes in the same order)"
        }
    return {}


def num_outputs(model: nn.Module) -> int | None:
    """Width of the logits: vocabulary size for an MLM head, label count for a classifier, None for a bare encoder."""
    if not getattr(type(model), "labelled", True):  # a sentence encoder: the task's KD term checks sizes
        return None
    if has_mlm_head(model):
        return getattr(model.get_output_embeddings(), "out_features", None)
    if isinstance(model, PreTrainedModel) and model.base_model is model:  # e.g. BertModel: no head, no logits yet
        return None
    return getattr(getattr(model, "config", None), "num_labels", None)


def _feature_problem(
    name: str, loss_cfg: LossConfig, teacher: nn.Module, student: nn.Module, pairs: list[tuple[int, int]]
) -> str | None:
    s_heads, t_heads = model_num_heads(student), model_num_heads(teacher)
    s_width, t_width = model_hidden_size(student), model_hidden_size(teacher)
    head_paired = name in HEAD_PAIRED_WEIGHTS or (name == "minilm_value_weight" and uses_value_v1(loss_cfg))
    if head_paired and s_heads != t_heads:
        r = suggest_relation_heads(s_width, t_width, t_heads)
        return (
            f"compares attention heads one to one, but the student has {s_heads} heads and the teacher "
            f"{t_heads}; use MiniLMv2 relations instead: minilm_value_weight > 0 with minilm_relation_heads "
            f"(e.g. {r}, which divides both widths {s_width} and {t_width})"
        )
    r = loss_cfg.minilm_relation_heads
    if name == "minilm_value_weight" and r is not None and (s_width % r or t_width % r):
        return (
            f"minilm_relation_heads={r} must divide the student width {s_width} and the teacher width "
            f"{t_width}; e.g. {suggest_relation_heads(s_width, t_width, t_heads)}"
        )
    if name == "mlm_weight":
        if not has_mlm_head(student):
            return (
                f"the student ({type(student).__name__}) has no masked-LM head; the MLM term needs a *ForMaskedLM "
                "student and batches carrying mlm_labels"
            )
        return None
    student_spec, teacher_spec = term_specs(name, loss_cfg, pairs)
    for role, model, spec in (("student", student, student_spec), ("teacher", teacher, teacher_spec)):
        try:
            FeatureTap(model, spec)  # resolves every hook target up front; registers nothing
        except DistilError as error:
            return f"cannot capture the {role}'s features: {error}"
    return None
