"""From a source to task data: column checks, empty rows, label ids, deterministic stratified splits, tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from distil.config import DataConfig
from distil.data.sources import BUILTIN_SOURCES, LABEL_SYNONYMS, SPLIT_NAMES, load_source
from distil.errors import DistilError


@dataclass
class TaskData:
    """Splits with columns text, [text_pair], label (id), and the label names in id order."""

    splits: dict[str, pd.DataFrame]
    label_names: list[str]
    extra_tests: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped_empty: dict[str, int] = field(default_factory=dict)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


def _select_columns(frame: pd.DataFrame, cfg: DataConfig, where: str, need_label: bool = True) -> pd.DataFrame:
    columns = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    columns += [cfg.label_column] if need_label else []
    for col in columns:
        if col not in frame.columns:
            raise DistilError(
                f"data '{where}': column '{col}' is missing; columns are {list(frame.columns)} "
                f"(set data.text_column / data.label_column)"
            )
    out = pd.DataFrame({"text": frame[cfg.text_column]})
    if cfg.text_pair_column:
        out["text_pair"] = frame[cfg.text_pair_column]
    if need_label:
        out["label"] = frame[cfg.label_column]
    if len(out) == 0:
        raise DistilError(f"data '{where}' has no rows; give a source with examples")
    return out.reset_index(drop=True)


def _drop_empty(frame: pd.DataFrame, cfg: DataConfig, where: str) -> tuple[pd.DataFrame, int]:
    text_cols = ["text"] + (["text_pair"] if "text_pair" in frame else [])
    empty = np.zeros(len(frame), dtype=bool)
    for col in text_cols:
        empty |= frame[col].isna().to_numpy() | (frame[col].astype(str).str.strip() == "").to_numpy()
    if "label" in frame:
        empty |= frame["label"].isna().to_numpy()
    n = int(empty.sum())
    if n and cfg.empty_text == "error":
        first = int(np.flatnonzero(empty)[0])
        raise DistilError(
            f"data '{where}': {n} rows have an empty text or label (first: row {first}); "
            f"fix them or set data.empty_text: skip"
        )
    if n == len(frame):
        raise DistilError(f"data '{where}': every row has an empty text or label")
    out = frame[~empty].reset_index(drop=True)
    for col in text_cols:
        out[col] = out[col].astype(str)
    return out, n


def stratified_split(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Split rows per label in the given fractions (the remainder is 'train'); deterministic under ``seed``."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["train", *fractions]}
    for _, rows in sorted(frame.groupby(frame["label"].astype(str)).groups.items()):
        idx = rng.permutation(np.asarray(rows))
        start = 0
        for name, frac in fractions.items():
            n = int(round(len(idx) * frac))
            parts[name].append(idx[start : start + n])
            start += n
        parts["train"].append(idx[start:])
    out = {}
    for name, chunks in parts.items():
        idx = rng.permutation(np.concatenate(chunks)) if chunks else np.array([], dtype=int)
        out[name] = frame.iloc[idx].reset_index(drop=True)
    return out


def _label_names(train: pd.DataFrame, cfg: DataConfig) -> list[str]:
    if cfg.labels:
        return list(cfg.labels)
    values = train["label"].unique().tolist()
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _encode_labels(frame: pd.DataFrame, names: list[str], where: str, synonyms: bool = False) -> pd.DataFrame:
    label2id = {name: i for i, name in enumerate(names)}
    if synonyms:  # e.g. positive/negative sets scored by a fresh/rotten model
        for alias in LABEL_SYNONYMS.values():
            target = next((n for n in names if n in alias), None)
            if target is not None:
                for a in alias:
                    label2id.setdefault(a, label2id[target])
    raw = frame["label"].astype(str)
    unknown = sorted(set(raw) - set(label2id))
    if unknown:
        raise DistilError(
            f"data '{where}': unknown label {unknown[0]!r} ({len(unknown)} unknown in all); "
            f"labels are {names} (set data.labels to list them all)"
        )
    out = frame.copy()
    out["label"] = raw.map(label2id).astype(int)
    return out


def prepare_data(cfg: DataConfig) -> TaskData:
    """Load, clean, split and label-encode the data of ``cfg``.

    Raises:
        DistilError: missing/empty file, missing column, empty rows under empty_text=error, unknown label.
    """
    loaded = load_source(cfg.source)
    skipped: dict[str, int] = {}
    if isinstance(loaded, dict):
        if "train" not in loaded:
            raise DistilError(f"data '{cfg.source}': splits {sorted(loaded)} have no 'train' split")
        splits = {}
        for name, frame in loaded.items():
            if name in SPLIT_NAMES:
                splits[name], skipped[name] = _drop_empty(
                    _select_columns(frame, cfg, f"{cfg.source}[{name}]"), cfg, f"{cfg.source}[{name}]"
                )
        missing = {
            n: f for n, f in (("validation", cfg.validation_fraction), ("test", cfg.test_fraction)) if n not in splits
        }
        if missing:
            carved = stratified_split(splits["train"], missing, cfg.split_seed)
            splits.update(carved)
    else:
        frame, skipped["all"] = _drop_empty(_select_columns(loaded, cfg, cfg.source), cfg, cfg.source)
        fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
        splits = stratified_split(frame, {k: v for k, v in fractions.items() if v > 0}, cfg.split_seed)
    if cfg.max_train_samples:
        splits["train"] = splits["train"].iloc[: cfg.max_train_samples].reset_index(drop=True)
    if cfg.max_eval_samples:
        for name in ("validation", "test"):
            if name in splits:
                splits[name] = splits[name].iloc[: cfg.max_eval_samples].reset_index(drop=True)
    names = _label_names(splits["train"], cfg)
    splits = {name: _encode_labels(frame, names, f"{cfg.source}[{name}]") for name, frame in splits.items()}
    extra = {}
    for source in cfg.resolved_extra_test_sets:
        columns = DataConfig(text_column="text", label_column="label") if source in BUILTIN_SOURCES else cfg
        frame, skipped[source] = _drop_empty(_select_columns(load_source(source), columns, source), cfg, source)
        extra[source] = _encode_labels(frame, names, source, synonyms=True)
    return TaskData(splits=splits, label_names=names, extra_tests=extra, skipped_empty=skipped)


def tokenize_frame(frame: pd.DataFrame, tokenizer, max_length: int) -> dict[str, Any]:
    """Token ids of every row (no padding), plus labels, the row index and the length.

    Returns:
        columns for `datasets.Dataset.from_dict`: input_ids, attention_mask, [token_type_ids], labels, idx, length.
    """
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    enc = tokenizer(frame["text"].tolist(), pairs, truncation=True, max_length=max_length, padding=False)
    columns: dict[str, Any] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        columns["token_type_ids"] = enc["token_type_ids"]
    if "label" in frame:
        columns["labels"] = frame["label"].astype(int).tolist()
    columns["idx"] = list(range(len(frame)))
    columns["length"] = [len(ids) for ids in enc["input_ids"]]
    return columns


def to_dataset(frame: pd.DataFrame, tokenizer, max_length: int):
    from datasets import Dataset

    return Dataset.from_dict(tokenize_frame(frame, tokenizer, max_length))


class PadCollator:
    """Dynamic padding to the longest row of the batch; passes labels and row indices (idx) through."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in rows[0]:
                batch[key] = torch.tensor([list(r[key]) + [pad] * (longest - len(r[key])) for r in rows])  # (B, L)
        for key in ("labels", "idx"):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows])  # (B,)
        return batch
