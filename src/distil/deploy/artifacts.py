"""What deploy's modules share: file names, the saved-student loaders and runtime sessions.

`distil.deploy.export` writes these files and `distil.deploy.serving` reads them; both import this module, so
neither imports the other to reach them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distil.errors import DistilError
from distil.io import read_json
from distil.models.loading import load_pretrained
from distil.tasks import task_for_model

MODEL_ONNX = "model.onnx"
EXPORT_META = "distil_export.json"
# Inputs a sequence classifier may take, in the order the exported graph lists them.
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def read_student_config(model_dir: str | os.PathLike, what: str = "model_dir") -> dict:
    """Return the student's config.json as a dict, refusing a missing dir or a dir without config.json.

    Raises:
        DistilError: ``model_dir`` does not exist or has no config.json.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DistilError(f"{what} '{model_dir}' does not exist; pass the directory a student was saved to")
    if not (model_dir / "config.json").is_file():
        raise DistilError(f"{what} '{model_dir}' has no config.json; pass a directory written by save_pretrained")
    config = read_json(model_dir / "config.json")
    if (model_dir / "modules.json").is_file():  # a sentence-transformers folder is served as a sentence encoder
        config.setdefault("distil_sentence", {})
    return config


def _refuse_lstm(config: dict, model_dir: Path, action: str) -> None:
    if config.get("distil_model") == "lstm":
        raise DistilError(
            f"model_dir '{model_dir}' is a distil LSTM student (config.json distil_model='lstm'); {action} supports "
            "HF AutoModelForSequenceClassification students only; export/serve the LSTM with PyTorch directly"
        )


def load_hf_student(model_dir: str | os.PathLike) -> tuple[nn.Module, Any]:
    """Load a saved HF sequence classifier (fp32, eval mode) and its tokenizer from ``model_dir``.

    Raises:
        DistilError: the directory is missing, lacks config.json or safetensors weights, is an LSTM student, or
            its tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    config = read_student_config(model_dir)
    _refuse_lstm(config, model_dir, "this")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise DistilError(
            f"model_dir '{model_dir}': no loadable tokenizer ({type(e).__name__}); save the tokenizer beside the "
            "model with tokenizer.save_pretrained(model_dir)"
        ) from e
    auto_class = task_for_model(config).auto_model_class  # a sequence classifier or a tagger
    model = load_pretrained(auto_class, str(model_dir), dtype=torch.float32)
    return model, tokenizer


def model_input_names(model: nn.Module, tokenizer: Any) -> list[str]:
    """The inputs the exported graph takes: those the tokenizer produces and the model's forward accepts."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(getattr(tokenizer, "model_input_names", INPUT_ORDER))
    names = [n for n in INPUT_ORDER if n in accepted and (n in produced or n == "input_ids")]
    return names


def ort_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session for ``path``."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def quantize_torch_int8(model: nn.Module) -> nn.Module:
    """A dynamically quantised copy of ``model``: every nn.Linear gets int8 weights, activations quantised per call.

    In memory only, by design: the quantised modules hold packed weights (not plain tensors) that safetensors
    cannot store, and distil never pickles. Quantising is deterministic and fast, so serving does it on load
    (``load_student(dir, variant="torch-int8")``). CPU only. Embeddings and LayerNorm stay fp32.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)


# ----------------------------------------------------------------------------------------------- card + all
