"""Serve an exported student behind one interface, whatever runs it: PyTorch (fp32, bf16, int8) or ONNX Runtime.

    from distil.deploy.serving import load_student
    student = load_student("out/onnx-int8")           # or an HF dir, or the export_all root with variant=...
    student.predict(["great film", "dull film"])       # [{"label": "positive", "score": 0.93, "probs": {...}}, ...]
    student.logits([("premise", "hypothesis")])        # np.ndarray (N, C), text pairs welcome

Variants:
    torch       the safetensors weights in fp32 (PyTorch)
    torch-bf16  the same weights run under bf16 autocast (CPU autocast where the CPU has avx512_bf16)
    torch-int8  the same weights, every nn.Linear dynamically quantised to int8 on load (nothing is saved:
                see `distil.deploy.export.quantize_torch_int8`); CPU only
    onnx        model.onnx run by ONNX Runtime (CPU)
    onnx-int8   the ONNX Runtime dynamically quantised model.onnx
Probabilities are a softmax over the logits (single-label classification).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distil.deploy.artifacts import (
    EXPORT_META,
    MODEL_ONNX,
    load_hf_student,
    model_input_names,
    ort_session,
    quantize_torch_int8,
    read_student_config,
)
from distil.errors import DistilError
from distil.io import read_json
from distil.models.inference import logits_of
from distil.tasks import ClassificationTask, task_for_model

TORCH_VARIANTS = ("torch", "torch-bf16", "torch-int8")
ONNX_VARIANTS = ("onnx", "onnx-int8")
VARIANTS = TORCH_VARIANTS + ONNX_VARIANTS
# Where each variant lives under an `export_all` output directory.
EXPORT_SUBDIR = {"torch": "hf", "torch-bf16": "hf", "torch-int8": "hf", "onnx": "onnx", "onnx-int8": "onnx-int8"}

Texts = Sequence[str] | Sequence[tuple[str, str]]
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # int64 inputs (B, T) each -> logits (B, C)


class Predictor:
    """Texts in, labels and probabilities out, for any backend; built by `load_student`.

    Attributes:
        labels: label names in class-id order (config.json id2label).
        variant: one of `VARIANTS`.
        path: the directory the model was loaded from.
    """

    def __init__(self, tokenizer: Any, run: Runner, input_names: Sequence[str], labels: list[str], variant: str,
                 path: Path, max_positions: int | None = None, task: Any = None):  # fmt: skip
        self.tokenizer, self._run, self.input_names = tokenizer, run, list(input_names)
        self.labels, self.variant, self.path = labels, variant, path
        self.max_positions = max_positions
        self.task = task or ClassificationTask()

    def __repr__(self) -> str:
        return f"Predictor(variant={self.variant!r}, path='{self.path}', labels={self.labels})"

    def logits(self, texts: Texts, batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        """Raw class scores, float32 (N, C), in the order of ``texts``.

        Inputs are batched by length (sorted, then restored) so short texts are not padded to long ones.

        Raises:
            DistilError: ``texts`` is not a list of strings or of (text, text_pair) tuples, or a bad size.
        """
        items = _check_texts(texts)
        if batch_size < 1 or max_length < 2:
            raise DistilError(f"batch_size={batch_size}, max_length={max_length}: both must be >= 1 (max_length >= 2)")
        if self.max_positions:
            max_length = min(max_length, self.max_positions)
        out = np.zeros((len(items), len(self.labels)), dtype=np.float32)  # (N, C); an encoder's: (N, D)
        order = sorted(range(len(items)), key=lambda i: _char_length(items[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self._run(self._encode([items[i] for i in idx], max_length))  # (B, C)
            if batch.shape[-1] != out.shape[-1]:
                out = np.zeros((len(items), batch.shape[-1]), dtype=np.float32)  # first batch: the output's width
            out[idx] = batch
        return out

    def predict(self, texts: Texts, batch_size: int = 32, max_length: int | None = None) -> list[dict]:
        """One dict per text. Classification: {"label": top class, "score": its probability, "probs": {label: p}}.
        Token classification: {"entities": [{"type", "text", "start", "end", "score"}, ...]} with character
        offsets into the text (each word's tag read from its first word piece). Question answering (``texts``:
        (question, context) pairs or {"question", "context"} dicts): {"answer", "start", "end", "score"}.
        ``max_length``: tokens per input (None: 128, or the window a QA model was trained with)."""
        return self.task.serve(self, texts, batch_size, max_length)

    def token_logits(self, columns: dict, batch_size: int = 32) -> np.ndarray:
        """Per-token logits (N, Lmax, C), zero-padded, of pre-tokenised rows (``columns``: input_ids and
        attention_mask lists per row, as `distil.data.conll.tokenize_token_frame` gives them)."""
        ids = columns["input_ids"]
        longest = max(len(r) for r in ids)
        out = None
        for start in range(0, len(ids), batch_size):
            rows = range(start, min(start + batch_size, len(ids)))
            width = max(len(ids[i]) for i in rows)
            enc = {
                name: np.asarray([list(columns[name][i]) + [0] * (width - len(ids[i])) for i in rows], dtype=np.int64)
                for name in ("input_ids", "attention_mask", "token_type_ids")
                if name in columns
            }  # (B, T) each
            logits = self.run_batch(self.model_inputs(enc))  # (B, T, C)
            if out is None:
                out = np.zeros((len(ids), longest, logits.shape[-1]), dtype=np.float32)
            out[start : start + len(rows), :width] = logits
        return out

    def run_batch(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Raw model output of one batch of int64 inputs (B, T): (B, C) or per token (B, T, C)."""
        return self._run(inputs)

    def model_inputs(self, enc) -> dict[str, np.ndarray]:
        """The inputs this model takes, as int64 (B, T), from a tokenizer's output (zeros for missing types)."""
        batch = {}
        for name in self.input_names:
            if name in enc:
                batch[name] = np.asarray(enc[name], dtype=np.int64)  # (B, T)
            elif name == "token_type_ids":
                batch[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)  # (B, T)
        return batch

    def _encode(self, items: list, max_length: int) -> dict[str, np.ndarray]:
        pairs = isinstance(items[0], tuple)
        args = ([a for a, _ in items], [b for _, b in items]) if pairs else (items,)
        enc = self.tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return self.model_inputs(enc)


def _check_texts(texts: Any) -> list:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise DistilError(f"texts: got {type(texts).__name__}; pass a list of strings (wrap one text as [text])")
    items = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            items.append(t)
        elif isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t):
            items.append((t[0], t[1]))
        else:
            raise DistilError(f"texts[{i}]: got {t!r}; expected a string or a (text, text_pair) tuple of strings")
    if len({isinstance(t, tuple) for t in items}) > 1:
        raise DistilError("texts: mixes single texts and (text, text_pair) tuples; pass one kind per call")
    return items


def _char_length(item: str | tuple[str, str]) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


# ----------------------------------------------------------------------------------------------- loading


def _labels(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    n = len(id2label) or int(config.get("num_labels", 2))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def _resolve(path: Path, variant: str | None) -> tuple[Path, str]:
    """The directory to load and the variant to run, or a DistilError that says what to pass instead."""
    if variant is not None and variant not in VARIANTS:
        raise DistilError(f"variant: got {variant!r}; expected None (auto) or one of {', '.join(VARIANTS)}")
    if not path.exists():
        raise DistilError(f"path '{path}' does not exist; pass a saved student or exported variant directory")
    if path.is_file() and path.suffix == ".onnx":
        path = path.parent
    if not (path / "config.json").exists() and (path / "hf").is_dir():  # an export_all root
        path = path / EXPORT_SUBDIR[variant or "torch"]
    has_onnx = (path / MODEL_ONNX).is_file()
    has_torch = (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    if not (has_onnx or has_torch):
        raise DistilError(
            f"path '{path}' holds neither config.json + *.safetensors (PyTorch) nor {MODEL_ONNX} (ONNX); pass a "
            "directory written by save_pretrained or by distil export"
        )
    meta = read_json(path / EXPORT_META) if (path / EXPORT_META).is_file() else {}
    if variant is None:
        return path, (meta.get("variant", "onnx") if has_onnx else "torch")
    if variant in TORCH_VARIANTS and not has_torch:
        raise DistilError(
            f"variant={variant!r}: '{path}' has no safetensors weights; use variant='onnx' or the hf/ dir"
        )
    if variant in ONNX_VARIANTS:
        if not has_onnx:
            raise DistilError(f"variant={variant!r}: '{path}' has no {MODEL_ONNX}; export it first (distil export)")
        if meta.get("variant", variant) != variant:
            raise DistilError(
                f"variant={variant!r}: '{path}' holds the {meta['variant']!r} graph; pass the {variant} directory"
            )
    return path, variant


def _torch_runner(model: torch.nn.Module, names: list[str], device: str, bf16: bool) -> Runner:
    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {n: torch.from_numpy(batch[n]).to(device) for n in names}
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16),
        ):
            return logits_of(model(**inputs)).float().cpu().numpy()  # (B, C) or (B, T, C)

    return run


def _onnx_runner(session: Any) -> Runner:
    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], batch)[0]  # (B, C) or (B, T, C)

    return run


def load_student(path: str | os.PathLike, variant: str | None = None, *, device: str = "cpu") -> Predictor:
    """Load a saved or exported student for inference.

    Args:
        path: an HF directory (config.json + safetensors + tokenizer), an ONNX directory written by
            `distil.deploy.export` (model.onnx + config.json + tokenizer), or the root written by `export_all`
            (then ``variant`` picks the sub-directory; auto means hf/).
        variant: None (auto: "torch" for an HF dir, the exported variant for an ONNX dir) or one of `VARIANTS`.
        device: torch device for the "torch" and "torch-bf16" variants; int8 and ONNX run on CPU.

    Returns:
        A `Predictor`; the tokenizer comes from the same directory.

    Raises:
        DistilError: missing path, a directory with neither model format, an unknown variant, a variant the
            directory does not hold, an LSTM student, or torch-int8 off CPU.
    """
    from transformers import AutoTokenizer

    directory, variant = _resolve(Path(path), variant)
    config = read_student_config(directory, "path")
    if config.get("distil_model") == "lstm":
        raise DistilError(
            f"path '{directory}' is a distil LSTM student (config.json distil_model='lstm'); load_student serves HF "
            "Transformers and ONNX students only; run the LSTM with PyTorch directly"
        )
    labels, max_positions = _labels(config), config.get("max_position_embeddings")
    if variant in ONNX_VARIANTS:
        session = ort_session(directory / MODEL_ONNX)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        names = [i.name for i in session.get_inputs()]
        return Predictor(
            tokenizer, _onnx_runner(session), names, labels, variant, directory, max_positions, task_for_model(config)
        )
    model, tokenizer = load_hf_student(directory)
    if variant == "torch-int8":
        if device != "cpu":
            raise DistilError(f"device={device!r}: variant 'torch-int8' runs on CPU only; pass device='cpu'")
        model = quantize_torch_int8(model)
    else:
        model = model.to(device)
    run = _torch_runner(model, model_input_names(model, tokenizer), device, bf16=variant == "torch-bf16")
    names = model_input_names(model, tokenizer)
    return Predictor(tokenizer, run, names, labels, variant, directory, max_positions, task_for_model(config))
