"""Load teachers, students and tokenizers from disk (or, when allowed, the Hugging Face Hub) -- safetensors only.

distil never unpickles a checkpoint: a directory whose weights are only ``pytorch_model.bin`` / ``*.pt`` /
``*.ckpt`` is refused before anything is read, and Transformers is always called with ``use_safetensors=True``.
Without ``allow_download`` nothing is fetched: a name that is not a local path must already be in the local
Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from distil.errors import DistilError
from distil.models.lstm import LSTM_MODEL_TYPE, LSTMClassifier

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_CONVERT_HINT = (
    "convert it once where you trust the file: AutoModelForSequenceClassification.from_pretrained(dir)"
    ".save_pretrained(new_dir), or safetensors.torch.save_file(state_dict, 'model.safetensors') with a config.json"
)


def load_classifier(
    path_or_name: str,
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    label2id: dict[str, int] | None = None,
    allow_download: bool | None = None,
    auto_class: type = AutoModelForSequenceClassification,
) -> nn.Module:
    """Load a task model (default: a sequence classifier): a distil LSTM directory or any Transformers checkpoint in
    safetensors, with the head of ``auto_class`` (the task's, e.g. ``AutoModelForTokenClassification``).

    A checkpoint without a classification head (e.g. a bare ``BertModel`` such as all-MiniLM-L6-v2) gets a
    freshly initialised one; so does a checkpoint whose head has a different number of classes than
    ``num_labels`` (every other tensor must match).

    Args:
        path_or_name: a local directory, or a Hub model name (``org/name``) found in the local cache, or
            downloaded when ``allow_download``.
        num_labels: classes wanted; ``None`` keeps the checkpoint's (or ``len(id2label)``).
        id2label: class index -> name; sets the label names (and ``num_labels`` when that is not given).
        label2id: class name -> index; defaults to the inverse of ``id2label``.
        allow_download: let Transformers fetch a Hub name missing from the local cache; None: unless
            ``HF_HUB_OFFLINE=1``.

    Returns:
        The model in eval mode.

    Raises:
        DistilError: when the path does not exist and is not a plausible Hub name, the name is not available
            offline, the weights are not safetensors, or the labels are inconsistent.
    """
    if not getattr(auto_class, "labelled", True):  # a sentence encoder: no head, no labels
        return load_pretrained(auto_class, path_or_name, allow_download=allow_download)
    num_labels, id2label, label2id = _resolve_labels(num_labels, id2label, label2id)
    path = Path(path_or_name).expanduser()
    if path.exists() and _check_local_checkpoint(path).get("distil_model") == LSTM_MODEL_TYPE:
        return _load_lstm(path, num_labels, id2label, label2id)

    def set_labels(config: PretrainedConfig) -> dict:
        return {"ignore_mismatched_sizes": _apply_labels(config, num_labels, id2label, label2id)}

    return load_pretrained(auto_class, path_or_name, allow_download=allow_download, configure=set_labels)


def load_pretrained(
    auto_class: type,
    path_or_name: str,
    *,
    allow_download: bool | None = None,
    configure: Callable[[PretrainedConfig], dict] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The one way distil loads Transformers weights: safetensors only, never a pickle.

    Every model distil reads (teacher, student, baseline, predict, export, serve, inspect, masked LMs for
    augmentation) comes through here, so ``use_safetensors=True`` is passed every time: a directory holding a
    decoy ``x.safetensors`` beside a ``pytorch_model.bin`` is refused, never unpickled.

    Args:
        auto_class: the Transformers class to load with (``AutoModelForSequenceClassification``, ...).
        path_or_name: a local directory, or a Hub name (``org/name``).
        allow_download: let Transformers fetch a Hub name missing from the local cache; None: unless
            ``HF_HUB_OFFLINE=1``.
        configure: called with the loaded config before the weights; returns extra ``from_pretrained`` kwargs.
        kwargs: passed to ``from_pretrained`` (e.g. ``dtype``).

    Returns:
        The model in eval mode.

    Raises:
        DistilError: the path is missing or not a safetensors checkpoint, or the name is not available.
    """
    allow_download = _online() if allow_download is None else allow_download
    path = Path(path_or_name).expanduser()
    if path.exists():
        _check_local_checkpoint(path)
        source, local_only = str(path), True
    else:
        _check_hub_name(path_or_name, "model")
        source, local_only = path_or_name, not allow_download
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        extra = configure(config) if configure is not None else {}
        model = auto_class.from_pretrained(
            source, config=config, use_safetensors=True, local_files_only=local_only, **extra, **kwargs
        )
    except (OSError, ValueError, KeyError) as error:
        raise DistilError(_unavailable(path_or_name, "model", allow_download, error, local=path.exists())) from None
    return model.eval()


def load_tokenizer(path_or_name: str, *, allow_download: bool | None = None) -> Any:
    """Load a tokenizer with ``AutoTokenizer`` from a local directory or a Hub name.

    Args:
        path_or_name: a local directory holding the tokenizer files, or a Hub name (``org/name``).
        allow_download: let Transformers fetch a Hub name missing from the local cache; None: unless
            ``HF_HUB_OFFLINE=1``.

    Returns:
        The tokenizer.

    Raises:
        DistilError: when the path is missing or holds no tokenizer, or the name is not available offline.
    """
    allow_download = _online() if allow_download is None else allow_download
    path = Path(path_or_name).expanduser()
    if not path.exists():
        _check_hub_name(path_or_name, "tokenizer")
    source = str(path) if path.exists() else path_or_name
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=path.exists() or not allow_download)
    except (OSError, ValueError, KeyError) as error:
        raise DistilError(
            _unavailable(path_or_name, "tokenizer", allow_download, error, local=path.exists())
        ) from None


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's vocabulary (token -> id pairs, sorted), as hex."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any, allow_different: bool = False) -> bool:
    """Check that teacher and student read the same token ids (required for logit and feature distillation).

    Args:
        teacher_tokenizer: the teacher's tokenizer.
        student_tokenizer: the student's tokenizer.
        allow_different: return ``False`` instead of raising when they differ.

    Returns:
        ``True`` when the vocabularies (token -> id) are identical, ``False`` when they differ and that is allowed.

    Raises:
        DistilError: when they differ and ``allow_different`` is false.
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return True
    if allow_different:
        return False
    differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()), key=lambda item: item[1])
    example = differing[0] if differing else None
    raise DistilError(
        f"student tokenizer: its vocabulary ({len(student_vocab)} tokens) differs from the teacher's "
        f"({len(teacher_vocab)} tokens; {len(differing)} token->id pairs differ, e.g. {example!r}); use the teacher's "
        "tokenizer for the student, or allow different vocabularies explicitly"
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        The number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _resolve_labels(
    num_labels: int | None, id2label: dict[int, str] | None, label2id: dict[str, int] | None
) -> tuple[int | None, dict[int, str] | None, dict[str, int] | None]:
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise DistilError(f"num_labels: got {num_labels!r}; it must be a positive integer")
    if id2label is None:
        if label2id is not None:
            raise DistilError("label2id: given without id2label; pass id2label (index -> name) too")
        return num_labels, None, None
    id2label = {int(i): str(name) for i, name in id2label.items()}
    num_labels = len(id2label) if num_labels is None else num_labels
    if sorted(id2label) != list(range(num_labels)):
        raise DistilError(
            f"id2label: has indices {sorted(id2label)}; expected 0..{num_labels - 1} for {num_labels} labels"
        )
    label2id = {name: i for i, name in id2label.items()} if label2id is None else label2id
    return num_labels, id2label, {str(name): int(i) for name, i in label2id.items()}


def _apply_labels(
    config: PretrainedConfig, num_labels: int | None, id2label: dict[int, str] | None, label2id: dict[str, int] | None
) -> bool:
    """Set the labels on ``config``; return whether the head's size changes (so it must be re-initialised)."""
    resized = num_labels is not None and num_labels != config.num_labels
    if num_labels is not None:
        config.num_labels = num_labels  # resets id2label/label2id to LABEL_i
    if id2label is not None:
        config.id2label, config.label2id = id2label, label2id
    return resized


def _check_local_checkpoint(path: Path) -> dict[str, Any]:
    """Refuse anything that is not a directory with config.json and safetensors weights; return config.json."""
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise DistilError(
                f"checkpoint {path} is not safetensors; distil never unpickles checkpoints; {_CONVERT_HINT}"
            )
        raise DistilError(f"checkpoint {path}: is a file; pass the directory that holds config.json and the weights")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise DistilError(f"checkpoint {path}: has no config.json; pass a directory written by save_pretrained")
    has_safetensors = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise DistilError(
                f"checkpoint {path}: {', '.join(pickles)} is not safetensors; distil never unpickles checkpoints; "
                f"{_CONVERT_HINT}"
            )
        raise DistilError(
            f"checkpoint {path}: holds no model.safetensors (or model.safetensors.index.json); pass a directory "
            "written by save_pretrained"
        )
    with open(config_path, encoding="utf-8") as f:
        return json.load(f)


def _load_lstm(
    path: Path, num_labels: int | None, id2label: dict[int, str] | None, label2id: dict[str, int] | None
) -> LSTMClassifier:
    model = LSTMClassifier.from_pretrained(path)
    if num_labels is not None and num_labels != model.num_labels:
        model.reset_classifier(num_labels, id2label, label2id)
    elif id2label is not None:
        model.config.id2label, model.config.label2id = id2label, label2id
    return model.eval()


def _online() -> bool:
    """Downloads are allowed unless the user (or the test suite) set HF_HUB_OFFLINE."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "on", "yes")


def _check_hub_name(name: str, what: str) -> None:
    plausible = _HUB_NAME.fullmatch(name) is not None and ".." not in name and not name.endswith(PICKLE_SUFFIXES)
    if not plausible:
        raise DistilError(
            f"{what} {name!r}: no such file or directory; pass an existing directory or a Hub name org/name"
        )


def _unavailable(name: str, what: str, allow_download: bool, error: Exception, local: bool = False) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if local:
        fix = f"pass a directory written by save_pretrained (config.json, model.safetensors and the {what} files)"
    elif allow_download:
        fix = "check the name"
    else:
        fix = "pass a local directory, or go online to download it (unset HF_HUB_OFFLINE)"
    return f"{what} {name!r}: could not be loaded ({reason}); {fix}"
