"""`distil inspect TEACHER STUDENT`: a pre-flight check of a teacher/student pair, without training.

It shows both architectures side by side, the layer map the loss settings give, the projections that hidden-state
losses would learn, whether the two tokenizers read text into the same token ids, and, for every loss in
``distil.losses.LOSSES`` and every term the loss settings switch on, whether it can run and why not. Models given
as paths are built on the meta device from their config (no weights are read), so large teachers are cheap.

Example::

    report = inspect_pair("runs/a/teacher", "runs/a/student", LossConfig(hidden_weight=1.0))
    print(render_inspection(report))
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from distil.config import FEATURE_WEIGHTS, LossConfig
from distil.data.prepare import tokens_align
from distil.engine.compatibility import (
    has_mlm_head,
    is_transformer,
    num_outputs,
    suggest_relation_heads,
    term_problems,
    uses_value_v1,
)
from distil.errors import DistilError
from distil.losses import LOSSES
from distil.models.features import map_layers, model_hidden_size, model_num_heads, model_num_layers
from distil.models.loading import count_parameters, load_classifier
from distil.models.lstm import LSTM_MODEL_TYPE
from distil.models.packaged import resolve_model

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json", "spiece.model")
LOGIT_LOSSES = ("kd_kl", "logits_mse")
PROJECTED_TERMS = (
    ("embedding_weight", "hidden_mse"),
    ("hidden_weight", "hidden_mse"),
    ("hidden_cosine_weight", "hidden_cosine"),
)
_FFN_KEYS = ("intermediate_size", "hidden_dim", "ffn_dim", "dim_feedforward")


# ----------------------------------------------------------------------------------------------------------
# loading and describing one side


def _load(path_or_model: str | nn.Module) -> tuple[nn.Module, str, Any, str | None]:
    """(model, source, tokenizer or None, why the tokenizer is missing or None)."""
    if isinstance(path_or_model, nn.Module):
        return path_or_model, type(path_or_model).__name__, None, "given as a model object"
    source = resolve_model(str(path_or_model))
    path = Path(source)
    config_file = path / "config.json"
    if (
        config_file.is_file()
        and json.loads(config_file.read_text(encoding="utf-8")).get("distil_model") == LSTM_MODEL_TYPE
    ):
        model = load_classifier(str(path))
    else:
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise DistilError(
                f"inspect: cannot read a model config from '{path_or_model}' "
                f"({str(error).splitlines()[0]}); pass a saved model directory"
            ) from None
        with torch.device("meta"):  # shapes and parameter counts without reading or allocating weights
            model = _model_class(config).from_config(config)
    tokenizer, why = _load_tokenizer(path)
    return model, str(path_or_model), tokenizer, why


def _model_class(config) -> type:
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForMaskedLM") for name in architectures):
        return AutoModelForMaskedLM
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return AutoModelForSequenceClassification
    return AutoModel  # a bare encoder (e.g. all-MiniLM-L6-v2): `distil run` adds a classification head


def _load_tokenizer(path: Path) -> tuple[Any, str | None]:
    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None, "no tokenizer files in the directory"
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True), None
    except (OSError, ValueError, KeyError) as error:
        return None, f"tokenizer files did not load ({str(error).splitlines()[0]})"


def describe_model(model: nn.Module, source: str) -> dict[str, Any]:
    """Architecture summary: class, layers, hidden, heads, FFN, vocabulary, outputs, parameters, MLM head."""
    config = getattr(model, "config", None)
    transformer = is_transformer(model)
    info: dict[str, Any] = {
        "source": source,
        "class": type(model).__name__,
        "transformer": transformer,
        "model_type": getattr(config, "model_type", None) or getattr(config, "distil_model", None),
    }
    if transformer:
        info.update(
            layers=model_num_layers(model),
            hidden=model_hidden_size(model),
            heads=model_num_heads(model),
            ffn=next((getattr(config, k) for k in _FFN_KEYS if isinstance(getattr(config, k, None), int)), None),
        )
    else:  # e.g. distil's LSTM: its config names layers and hidden units, and it has no attention
        info.update(
            layers=getattr(config, "num_layers", None),
            hidden=getattr(config, "hidden_size", None),
            heads=None,
            ffn=None,
        )
    mlm = has_mlm_head(model)
    info.update(
        vocab_size=getattr(config, "vocab_size", None),
        mlm_head=mlm,
        parameters=count_parameters(model),
        num_outputs=num_outputs(model),
    )
    return info


PROBE_TEXTS = (
    "A thoroughly enjoyable film, with a naive but charming lead.",
    "The plot drags; the jokes don't land, and the ending is a mess.",
    "Shares rose 3.5% after the company's quarterly results beat forecasts.",
    "I can't believe how good this was!!! 10/10 would watch again :)",
    "Neither the script nor the direction rises above the cliches of the genre.",
    "The minister said the new law would take effect in January 2025.",
    "Great phone, terrible battery life.",
    "An ambitious, sprawling epic that never quite finds its footing.",
)
"""Sentences on which `distil inspect` checks whether two tokenizers split text into the same word pieces."""
MIN_ALIGNED = 0.75
"""Token-level terms across two tokenizers run only when at least this share of the probe sentences align."""


def compare_vocabularies(
    teacher: dict, student: dict, teacher_tok: Any, student_tok: Any, why: tuple[str | None, str | None]
) -> dict[str, Any]:
    """Whether both models read the same token ids: tokenizers when both load, else embedding table sizes.

    Returns:
        {"same": True | False | None (unknown), "teacher_tokens", "student_tokens", "detail"}.
    """
    out: dict[str, Any] = {
        "teacher_tokens": len(teacher_tok) if teacher_tok is not None else None,
        "student_tokens": len(student_tok) if student_tok is not None else None,
    }
    both = teacher_tok is not None and student_tok is not None
    if both:  # share of probe sentences both split into the same word pieces (token-level terms need it)
        same = [
            tokens_align(student_tok, teacher_tok, student_tok(t)["input_ids"], teacher_tok(t)["input_ids"])
            for t in PROBE_TEXTS
        ]
        out["aligned_probe"] = sum(same) / len(PROBE_TEXTS)
    rows = (teacher["vocab_size"], student["vocab_size"])
    if None not in rows and rows[0] != rows[1]:
        return {
            **out,
            "same": False,
            "detail": f"embedding tables differ: teacher {rows[0]} rows, student {rows[1]} rows",
        }
    if both:
        t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
        if t_vocab == s_vocab:
            return {**out, "same": True, "detail": f"same vocabulary ({len(t_vocab)} tokens)"}
        differing = len(set(t_vocab.items()) ^ set(s_vocab.items()))
        return {
            **out,
            "same": False,
            "detail": f"tokenizers differ: {len(t_vocab)} vs {len(s_vocab)} tokens, "
            f"{differing} token->id pairs differ",
        }
    missing = "; ".join(f"{role}: {reason}" for role, reason in zip(("teacher", "student"), why) if reason)
    return {**out, "same": None, "detail": f"not compared ({missing}); the embedding tables have the same size"}


# ----------------------------------------------------------------------------------------------------------
# feasibility of every loss


def _registry_configs(
    loss_cfg: LossConfig, teacher: nn.Module, student: nn.Module
) -> dict[str, tuple[str, LossConfig]]:
    """Registry loss name -> (the LossConfig weight that switches it on, a config with only that term)."""
    relation_heads = loss_cfg.minilm_relation_heads
    if relation_heads is None and is_transformer(teacher) and is_transformer(student):
        relation_heads = suggest_relation_heads(
            model_hidden_size(student), model_hidden_size(teacher), model_num_heads(teacher)
        )
    only = {
        "kd_kl": ("logits_weight", {"soft_loss": "kl"}),
        "logits_mse": ("logits_weight", {"soft_loss": "mse"}),
        "hidden_mse": ("hidden_weight", {}),
        "hidden_cosine": ("hidden_cosine_weight", {}),
        "attention_mse": ("attention_weight", {}),
        "attention_kl": ("attention_kl_weight", {}),
        "minilm_attention": ("minilm_attention_weight", {}),
        "minilm_value_relation": ("minilm_value_weight", {"minilm_relation_heads": None}),
        "minilmv2_qkv_relation": ("minilm_value_weight", {"minilm_relation_heads": relation_heads or 1}),
        "rkd_distance": ("rkd_distance_weight", {}),
        "rkd_angle": ("rkd_angle_weight", {}),
        "mlm": ("mlm_weight", {}),
    }
    base = {f.name: getattr(loss_cfg, f.name) for f in dataclasses.fields(LossConfig)}
    base.update({name: 0.0 for name in ("logits_weight", *FEATURE_WEIGHTS)})
    return {
        loss: (only[loss][0], LossConfig(**{**base, only[loss][0]: 1.0, **only[loss][1]})) for loss in (*LOSSES, "mlm")
    }


def _loss_name(weight: str, loss_cfg: LossConfig) -> str:
    if weight == "logits_weight":
        return "kd_kl" if loss_cfg.soft_loss == "kl" else "logits_mse"
    if weight == "minilm_value_weight":
        return "minilm_value_relation" if uses_value_v1(loss_cfg) else "minilmv2_qkv_relation"
    names = {
        "embedding_weight": "hidden_mse",
        "hidden_weight": "hidden_mse",
        "hidden_cosine_weight": "hidden_cosine",
        "attention_weight": "attention_mse",
        "attention_kl_weight": "attention_kl",
        "minilm_attention_weight": "minilm_attention",
        "rkd_distance_weight": "rkd_distance",
        "rkd_angle_weight": "rkd_angle",
        "mlm_weight": "mlm",
    }
    return names[weight]


def _verdict(weight: str, problems: dict[str, str], vocab: dict, student: nn.Module) -> tuple[bool, str]:
    """(can run, reason or note) of one term, adding the tokenisation rule to the model-level problems."""
    if weight in problems:
        return False, problems[weight]
    token_level = weight != "logits_weight" or has_mlm_head(student)
    if vocab["same"] is False and (weight == "mlm_weight" or (weight == "logits_weight" and has_mlm_head(student))):
        return False, f"{vocab['detail']}: masked-LM outputs are over each model's own vocabulary"
    aligned = vocab.get("aligned_probe")
    if vocab["same"] is False and token_level and (aligned is None or aligned < MIN_ALIGNED):
        share = "unknown" if aligned is None else f"{aligned:.0%}"
        return False, (
            f"{vocab['detail']}: token-level terms compare position i of both models, but the two tokenizers give "
            f"the same word pieces on {share} of the probe sentences (need {MIN_ALIGNED:.0%})"
        )
    if vocab["same"] is False and token_level:
        return True, (
            f"{vocab['detail']}: each model reads its own tokens (student.allow_different_vocab); position i is "
            "compared only on rows both split into the same word pieces, the others are left out of this term"
        )
    if vocab["same"] is False:
        return True, "needs the same label set only; each model reads its own tokens (student.allow_different_vocab)"
    return True, ""


# ----------------------------------------------------------------------------------------------------------
# the report


def inspect_pair(
    teacher_path_or_model: str | nn.Module,
    student_path_or_model: str | nn.Module,
    loss_cfg: LossConfig | None = None,
    stages: dict[str, LossConfig] | None = None,
) -> dict[str, Any]:
    """Pre-flight report of a teacher/student pair under ``loss_cfg`` (default: ``LossConfig()``, logits only).

    Args:
        teacher_path_or_model: a saved model directory, a packaged hub name, or a model object.
        student_path_or_model: the same for the student (a distil LSTM directory works too).
        loss_cfg: the loss settings whose terms are checked (and whose layer map is shown).
        stages: {stage name: its loss} of a multi-stage recipe: every stage's terms are checked.

    Returns:
        JSON-serialisable dict: "teacher"/"student" (architecture summaries), "layer_map" ({"strategy",
        "pairs"} or {"strategy", "error"}), "projections" (one per projected term when widths differ: term, shape
        [D_s, D_t], parameters, configured), "vocabulary", "losses" ({registry name: {"can_run", "reason"}} for
        every loss in ``LOSSES`` plus "mlm"), "stages" ({stage name ("" without stages): one entry per weight > 0:
        weight, value, loss, can_run, reason}), "configured" (the first stage's entries), and "ok" (every
        configured term of every stage can run).

    Raises:
        DistilError: a path that holds no readable model config.
    """
    loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
    teacher, t_source, t_tok, t_why = _load(teacher_path_or_model)
    student, s_source, s_tok, s_why = _load(student_path_or_model)
    t_info, s_info = describe_model(teacher, t_source), describe_model(student, s_source)
    vocab = compare_vocabularies(t_info, s_info, t_tok, s_tok, (t_why, s_why))
    report: dict[str, Any] = {
        "teacher": t_info,
        "student": s_info,
        "vocabulary": vocab,
        "layer_map": _layer_map(loss_cfg, t_info, s_info),
        "projections": _projections(loss_cfg, t_info, s_info),
    }
    losses = {}
    for loss, (weight, single) in _registry_configs(loss_cfg, teacher, student).items():
        can_run, reason = _verdict(weight, term_problems(single, teacher, student), vocab, student)
        losses[loss] = {"can_run": can_run, "reason": reason}
    report["losses"] = losses
    stages = stages or {"": loss_cfg}
    report["stages"] = {name: _configured_terms(cfg, teacher, student, vocab) for name, cfg in stages.items()}
    report["configured"] = next(iter(report["stages"].values()))
    report["ok"] = all(term["can_run"] for terms in report["stages"].values() for term in terms)
    return report


def _configured_terms(loss_cfg: LossConfig, teacher: nn.Module, student: nn.Module, vocab: dict) -> list[dict]:
    """One entry per weight > 0 of ``loss_cfg``: weight, value, loss, can_run, reason."""
    problems = term_problems(loss_cfg, teacher, student)
    configured = []
    for weight in ("logits_weight", *FEATURE_WEIGHTS):
        if getattr(loss_cfg, weight) > 0:
            can_run, reason = _verdict(weight, problems, vocab, student)
            configured.append(
                {
                    "weight": weight,
                    "value": getattr(loss_cfg, weight),
                    "loss": _loss_name(weight, loss_cfg),
                    "can_run": can_run,
                    "reason": reason,
                }
            )
    return configured


def _layer_map(loss_cfg: LossConfig, teacher: dict, student: dict) -> dict[str, Any]:
    strategy = loss_cfg.layer_map
    if not (teacher["transformer"] and student["transformer"]):
        return {"strategy": strategy, "error": "no layer map: both models must be Transformers"}
    try:
        return {
            "strategy": strategy,
            "pairs": [list(p) for p in map_layers(strategy, student["layers"], teacher["layers"])],
        }
    except DistilError as error:
        return {"strategy": strategy, "error": str(error)}


def _projections(loss_cfg: LossConfig, teacher: dict, student: dict) -> list[dict[str, Any]]:
    """The nn.Linear(D_s, D_t) each hidden-state term learns when the widths differ (none when they match)."""
    if not (teacher["transformer"] and student["transformer"]) or teacher["hidden"] == student["hidden"]:
        return []
    d_s, d_t = student["hidden"], teacher["hidden"]
    return [
        {
            "term": weight,
            "loss": loss,
            "shape": [d_s, d_t],
            "parameters": d_s * d_t + d_t,
            "configured": getattr(loss_cfg, weight) > 0,
        }
        for weight, loss in PROJECTED_TERMS
    ]


def render_inspection(report: dict[str, Any]) -> str:
    """The report of :func:`inspect_pair` as text for a terminal."""
    t, s = report["teacher"], report["student"]
    rows = [
        ("source", "source"),
        ("class", "class"),
        ("transformer", "transformer"),
        ("layers", "layers"),
        ("hidden", "hidden"),
        ("heads", "heads"),
        ("ffn", "ffn"),
        ("vocab", "vocab_size"),
        ("outputs", "num_outputs"),
        ("mlm head", "mlm_head"),
        ("parameters", "parameters"),
    ]
    width = max(24, len(str(t["source"])) + 2)
    lines = [f"{'':<12}{'teacher':<{width}}student"]
    for label, key in rows:
        tv, sv = t.get(key), s.get(key)
        fmt = (lambda v: f"{v:,}") if key == "parameters" else (lambda v: "-" if v is None else str(v))
        lines.append(f"{label:<12}{fmt(tv):<{width}}{fmt(sv)}")
    if t["parameters"] and s["parameters"]:
        lines.append(f"{'':<12}student/teacher parameters: {s['parameters'] / t['parameters']:.1%}")
    layer_map = report["layer_map"]
    pairs = layer_map.get("pairs")
    mapped = ", ".join(f"{a}<-{b}" for a, b in pairs) if pairs else layer_map.get("error")
    lines += ["", f"layer map ({layer_map['strategy']}), student<-teacher: {mapped}"]
    for p in report["projections"]:
        used = "configured" if p["configured"] else "if enabled"
        lines.append(
            f"projection for {p['term']} ({p['loss']}): Linear({p['shape'][0]} -> {p['shape'][1]}), "
            f"{p['parameters']:,} parameters ({used})"
        )
    if not report["projections"]:
        lines.append("projections: none needed (same hidden size, or no hidden-state losses possible)")
    lines += [f"vocabulary: {report['vocabulary']['detail']}"]
    for stage, terms in report["stages"].items():
        lines += ["", f"configured terms, stage {stage}:" if stage else "configured terms:"]
        for term in terms:
            status = "ok " if term["can_run"] else "NO "
            reason = f": {term['reason']}" if term["reason"] else ""
            lines.append(f"  {status} {term['weight']}={term['value']:g} ({term['loss']}){reason}")
    lines.append("every loss:")
    for name, verdict in report["losses"].items():
        reason = f": {verdict['reason']}" if verdict["reason"] else ""
        lines.append(f"  {'ok ' if verdict['can_run'] else 'NO '} {name}{reason}")
    verdict = "OK: every configured term can run" if report["ok"] else "IMPOSSIBLE: a configured term cannot run"
    lines += ["", verdict]
    return "\n".join(lines)


def inspect_main(
    teacher: str | nn.Module,
    student: str | nn.Module,
    loss_cfg: LossConfig | None = None,
    stages: dict[str, LossConfig] | None = None,
) -> int:
    """Print the inspection; return 0 when the configured combination can run, 2 when it cannot."""
    report = inspect_pair(teacher, student, loss_cfg, stages)
    print(render_inspection(report))
    return 0 if report["ok"] else 2
