"""Export a saved student for deployment: HF format with a model card, ONNX (checked against PyTorch), ONNX int8.

A student directory is what `save_pretrained` writes for an `AutoModelForSequenceClassification` model
(safetensors + config.json) plus its tokenizer files. Every variant lands in its own directory, written under a
temporary name and renamed into place only once it is complete and verified, so a failed export leaves nothing:

    out_dir/hf          safetensors, config, tokenizer, README.md model card
    out_dir/onnx        model.onnx (fp32, dynamic batch and sequence axes), config, tokenizer, distil_export.json
    out_dir/onnx-int8   model.onnx (ONNX Runtime dynamic quantisation, int8 weights), config, tokenizer

PyTorch int8 (`torch.ao.quantization.quantize_dynamic`) has no file of its own: its packed weights are not plain
tensors, so they cannot be stored as safetensors, and distil loads nothing by pickle. Quantisation is
deterministic and takes milliseconds, so `distil.deploy.serving.load_student(out_dir / "hf", variant="torch-int8")`
quantises on load and gets the same model a saved copy would hold.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distil.deploy.artifacts import (  # noqa: F401  (the loaders are re-exported: export's public API)
    EXPORT_META,
    INPUT_ORDER,
    MODEL_ONNX,
    load_hf_student,
    model_input_names,
    ort_session,
    quantize_torch_int8,
    read_student_config,
)
from distil.deploy.serving import load_student
from distil.errors import DistilError
from distil.io import atomic_dir, write_json
from distil.models.inference import logits_of
from distil.report.model_card import render_model_card, write_model_card  # noqa: F401  (re-exported)
from distil.tasks import task_for_model

DEFAULT_SAMPLE_TEXTS = (
    "ok",
    "The service was quick and the food arrived hot.",
    "I waited forty minutes, the order was wrong, and nobody at the counter seemed to care at all about it.",
    "Short one.",
    (
        "A somewhat longer sentence that mixes several clauses, numbers like 42 and 3.14, and punctuation; "
        "it is here so that the exported graph sees a sequence length it was not traced with."
    ),
)


# ----------------------------------------------------------------------------------------------- loading


def _encode(tokenizer: Any, texts: Sequence, names: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise single texts or (text, text_pair) tuples into int64 tensors holding exactly ``names``."""
    if texts and isinstance(texts[0], (tuple, list)):
        firsts, seconds = [t[0] for t in texts], [t[1] for t in texts]
        enc = tokenizer(firsts, seconds, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    else:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: enc[name].to(torch.int64) for name in names}  # (B, T) each


def _sample_batches(tokenizer: Any, names: Sequence[str], sample_texts: Sequence | None, max_length: int) -> list:
    """Batches of different sizes and sequence lengths: the first one traces, the rest check the dynamic axes."""
    texts = list(sample_texts) if sample_texts else list(DEFAULT_SAMPLE_TEXTS)
    if len(texts) < 3:
        texts = (texts * 3)[:3]
    groups = [texts[1:3], texts[:1], texts[-3:], texts]
    if not isinstance(texts[0], (tuple, list)):
        groups.append([(texts[0], texts[-1]), (texts[-1], texts[1])])  # sentence pairs exercise token_type_ids
    return [_encode(tokenizer, g, names, max_length) for g in groups]


def _max_length(model: nn.Module, cap: int = 128) -> int:
    return int(min(cap, getattr(model.config, "max_position_embeddings", cap) or cap))


# ----------------------------------------------------------------------------------------------- ONNX


class _LogitsOnly(nn.Module):
    """Positional tensors in ``names`` order -> logits (B, C): the signature torch.onnx.export traces."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(**dict(zip(self.names, tensors)), return_dict=True))  # a span head: (B, T, 2)


def _torch_onnx_export(model: nn.Module, names: list[str], example: dict, path: Path, opset: int) -> None:
    wrapper = _LogitsOnly(model, names).eval()
    # The exporter restores each module's train/eval flag afterwards from the wrapper's, so both must be eval
    # or dropout stays switched on in the PyTorch model that the export is then compared against.
    per_token = task_for_model(model.config.to_dict()).per_token  # a tagger's logits have a sequence axis too
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic_axes["logits"] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    with warnings.catch_warnings():
        # Legacy (TorchScript) exporter on purpose: onnxruntime's quantize_dynamic accepts its graphs (STACK.md).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # Transformers' mask code branches on tensor values while tracing; verification at other shapes
        # below is what proves the traced graph general, so these warnings carry no information here.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # Mask indices are built with arange (never negative); the same verification would catch it otherwise.
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper,
                tuple(example[n] for n in names),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    model.eval()


def _ort_logits(session, batch: dict[str, torch.Tensor]) -> np.ndarray:
    wanted = [i.name for i in session.get_inputs()]
    return session.run(["logits"], {n: batch[n].numpy() for n in wanted})[0]


def _verify_onnx(onnx_path: Path, model: nn.Module, batches: list[dict]) -> float:
    """Max |logits_onnx - logits_torch| over ``batches``; each batch has its own batch size and sequence length."""
    session = ort_session(onnx_path)
    worst = 0.0
    for batch in batches:
        with torch.inference_mode():
            ref = logits_of(model(**batch)).float().numpy()  # (B, C) or (B, T, C)
        got = _ort_logits(session, batch)  # (B, C)
        if got.shape != ref.shape:
            raise DistilError(f"ONNX export '{onnx_path}': output shape {got.shape} != PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise DistilError(f"out_dir '{out_dir}' already exists; pass overwrite=True (--overwrite) or another path")


def export_onnx(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    opset: int = 17,
    max_abs_tolerance: float = 1e-4,
    sample_texts: Sequence[str] | Sequence[tuple[str, str]] | None = None,
    overwrite: bool = False,
) -> dict:
    """Export a saved HF student to ONNX with dynamic batch and sequence axes, verified against PyTorch.

    Args:
        model_dir: directory written by ``save_pretrained`` (model + tokenizer).
        out_dir: created whole with model.onnx, config.json, tokenizer files and distil_export.json.
        opset: ONNX opset for the legacy TorchScript exporter.
        max_abs_tolerance: largest allowed |logits_onnx - logits_torch| over the check batches.
        sample_texts: texts (or text pairs) to trace and check with; a built-in mix of lengths by default.
        overwrite: replace an existing ``out_dir``.

    Returns:
        {"path", "max_abs_diff", "size_bytes", "tolerance", "opset", "input_names", "checked_shapes"}.

    Raises:
        DistilError: bad ``model_dir``, existing ``out_dir``, or the check exceeds ``max_abs_tolerance`` (then
            nothing is written).
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    model, tokenizer = load_hf_student(model_dir)
    names = model_input_names(model, tokenizer)
    batches = _sample_batches(tokenizer, names, sample_texts, _max_length(model))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        _torch_onnx_export(model, names, batches[0], tmp / MODEL_ONNX, opset)
        max_abs_diff = _verify_onnx(tmp / MODEL_ONNX, model, batches)
        if not max_abs_diff <= max_abs_tolerance:  # also catches NaN
            raise DistilError(
                f"ONNX export of '{model_dir}': max |logits_onnx - logits_torch| = {max_abs_diff:.3g} exceeds "
                f"max_abs_tolerance={max_abs_tolerance:g}; raise the tolerance or try another opset (now {opset})"
            )
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        result = {
            "path": str(out_dir / MODEL_ONNX),
            "max_abs_diff": max_abs_diff,
            "size_bytes": (tmp / MODEL_ONNX).stat().st_size,
            "tolerance": max_abs_tolerance,
            "opset": opset,
            "input_names": names,
            "checked_shapes": [list(b["input_ids"].shape) for b in batches],
        }
        write_json(tmp / EXPORT_META, {"variant": "onnx", "source": str(model_dir), **result})
    return result


# ----------------------------------------------------------------------------------------------- int8


def _copy_side_files(src: Path, dst: Path) -> None:
    """Copy config and tokenizer files (everything but the graph, its metadata and the card)."""
    skip = {MODEL_ONNX, MODEL_ONNX + ".data", EXPORT_META, "README.md"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)


def quantize_onnx_int8(
    onnx_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sample_texts: Sequence[str] | Sequence[tuple[str, str]] | None = None,
    overwrite: bool = False,
) -> dict:
    """Dynamically quantise an exported ONNX student to int8 weights (ONNX Runtime ``quantize_dynamic``, QInt8).

    Activations stay float and are quantised per batch at run time, so no calibration data is needed. ONNX Runtime
    logs "Please consider to run pre-processing"; its pre-processing (``quant_pre_process``) stops on these graphs
    with "Incomplete symbolic shape inference", so it is not run.

    Args:
        onnx_dir: a directory written by `export_onnx`.
        out_dir: created whole with the int8 model.onnx plus the config and tokenizer files of ``onnx_dir``.
        sample_texts: texts (or pairs) on which the int8 logits are compared with the fp32 graph's.
        overwrite: replace an existing ``out_dir``.

    Returns:
        {"path", "size_bytes", "fp32_size_bytes", "size_ratio", "max_abs_diff" (vs fp32 ONNX logits),
        "label_agreement" (fraction of sample inputs whose argmax matches fp32)}.

    Raises:
        DistilError: ``onnx_dir`` has no model.onnx, or ``out_dir`` exists.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoTokenizer

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if not (onnx_dir / MODEL_ONNX).is_file():
        raise DistilError(f"onnx_dir '{onnx_dir}' has no {MODEL_ONNX}; export one first with export_onnx")
    _check_out_dir(out_dir, overwrite)
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    fp32 = ort_session(onnx_dir / MODEL_ONNX)
    names = [i.name for i in fp32.get_inputs()]
    max_positions = read_student_config(onnx_dir, "onnx_dir").get("max_position_embeddings") or 128
    batches = _sample_batches(tokenizer, names, sample_texts, min(128, int(max_positions)))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        quantize_dynamic(onnx_dir / MODEL_ONNX, tmp / MODEL_ONNX, weight_type=QuantType.QInt8)
        int8 = ort_session(tmp / MODEL_ONNX)
        diffs, agree, total = [], 0, 0
        for batch in batches:
            ref, got = _ort_logits(fp32, batch), _ort_logits(int8, batch)  # (B, C) each
            diffs.append(float(np.abs(got - ref).max()))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            total += len(ref)
        _copy_side_files(onnx_dir, tmp)
        size, fp32_size = (tmp / MODEL_ONNX).stat().st_size, (onnx_dir / MODEL_ONNX).stat().st_size
        result = {
            "path": str(out_dir / MODEL_ONNX),
            "size_bytes": size,
            "fp32_size_bytes": fp32_size,
            "size_ratio": size / fp32_size,
            "max_abs_diff": max(diffs),
            "label_agreement": agree / total,
        }
        write_json(tmp / EXPORT_META, {"variant": "onnx-int8", "source": str(onnx_dir), **result})
    return result


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Re-save the student as HF format (safetensors, config, tokenizer); returns {"path", "size_bytes", "params"}."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    model, tokenizer = load_hf_student(model_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    return {"path": str(out_dir), "size_bytes": size, "params": sum(p.numel() for p in model.parameters())}


def export_all(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    int8: bool = True,
    report: dict | None = None,
    evaluate: Callable[[Any], dict] | None = None,
    opset: int = 17,
    max_abs_tolerance: float = 1e-4,
    sample_texts: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write every deployment variant of a student under ``out_dir`` (hf, onnx, onnx-int8) and a model card.

    Args:
        model_dir: the saved student (HF format).
        out_dir: created whole; nothing appears there unless every variant exported and verified.
        int8: also write the ONNX Runtime int8 variant.
        report: figures and distillation settings for the model card (teacher, recipe, kd_temperature, alpha,
            metrics, latency...; see `render_model_card`); the export's own measurements are added.
        evaluate: optional ``Predictor -> dict`` (e.g. test-split accuracy); called for every variant, including
            "torch-int8" (quantised on load from hf/), and its figures go into the result and the card.
        opset, max_abs_tolerance, sample_texts: as in `export_onnx`.
        overwrite: replace an existing ``out_dir``.

    Returns:
        {variant: {"dir", ...figures}} for "hf", "torch-int8" (dir = hf/), "onnx" and, with ``int8``,
        "onnx-int8"; every "dir" is what `distil.deploy.serving.load_student` takes. Also written to
        out_dir/export.json.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        results: dict[str, dict] = {"hf": export_hf(model_dir, tmp / "hf")}
        results["torch-int8"] = {"note": "quantised on load from hf/: load_student(dir, variant='torch-int8')"}
        results["onnx"] = export_onnx(
            model_dir, tmp / "onnx", opset=opset, max_abs_tolerance=max_abs_tolerance, sample_texts=sample_texts
        )
        if int8:
            results["onnx-int8"] = quantize_onnx_int8(tmp / "onnx", tmp / "onnx-int8", sample_texts=sample_texts)
        subdirs = {"hf": "hf", "torch-int8": "hf", "onnx": "onnx", "onnx-int8": "onnx-int8"}
        if evaluate is not None:
            for key, figures in results.items():
                figures.update(evaluate(load_student(tmp / subdirs[key], variant=VARIANT_OF[key])))
        for key, figures in results.items():  # name where things will be once tmp is renamed to out_dir
            figures["dir"] = str(out_dir / subdirs[key])
            if "path" in figures:
                figures["path"] = figures["path"].replace(str(tmp), str(out_dir))
        report = dict(report or {})
        report.setdefault("params", results["hf"]["params"])
        report.setdefault("size_bytes", results["hf"]["size_bytes"])
        report["variants"] = {**report.get("variants", {}), **_card_figures(results)}
        write_model_card(tmp / "hf", report)
        write_json(tmp / "export.json", results)
    return results


VARIANT_OF = {"hf": "torch", "torch-int8": "torch-int8", "onnx": "onnx", "onnx-int8": "onnx-int8"}


def _card_figures(results: dict[str, dict]) -> dict[str, dict]:
    keep = ("accuracy", "f1", "spearman", "size_bytes", "max_abs_diff", "label_agreement", "latency_ms", "note")
    return {k: {f: v[f] for f in keep if f in v} for k, v in results.items()}
