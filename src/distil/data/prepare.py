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
    held_out: frozenset[str] = frozenset()
    """Normalised texts never to train on beyond the held-out splits' own (the whole articles of an evaluation
    sample whose titles and bodies are the split's rows), for general distillation and augmentation too."""
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per split (and extra test set): rows dropped while reading, by reason (e.g. answers whose offsets do not
    match)."""

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
        out["label"] = _class_labels(frame[cfg.label_column], cfg.label_column, where)
    if len(out) == 0:
        raise DistilError(f"data '{where}' has no rows; give a source with examples")
    return out.reset_index(drop=True)


def _class_labels(labels: pd.Series, column: str, where: str) -> pd.Series:
    """Labels as classes: a float column of whole numbers (an int column with empty cells) becomes ints again, so
    the labels stay '0'/'1' rather than '0.0'/'1.0'; fractional numbers are scores, not classes, and are refused."""
    if not pd.api.types.is_float_dtype(labels):
        return labels
    values = labels.dropna()
    fractional = values[values != np.floor(values)]
    if len(fractional):
        raise DistilError(
            f"data '{where}': label column '{column}' holds fractional numbers (e.g. {float(fractional.iloc[0])!r}); "
            f"distil trains classifiers: give class labels (names or ints) or set data.label_column"
        )
    return labels.astype("Int64")


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
    """Split rows per label in the given fractions (the remainder is 'train'); deterministic under ``seed``.

    Every label keeps at least one row in 'train' (a label of 2 rows under fractions 0.4/0.4 gives 1 to train), so
    a held-out label is always one the model can learn.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["train", *fractions]}
    for _, rows in sorted(frame.groupby(frame["label"].astype(str)).groups.items()):
        idx = rng.permutation(np.asarray(rows))
        start = 0
        for name, frac in fractions.items():
            n = min(int(round(len(idx) * frac)), max(len(idx) - start - 1, 0))  # train keeps >= 1 row per label
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


def _load_splits(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The train/validation/test frames of ``cfg.source`` (held-out splits carved where the source has none)."""
    loaded = load_source(cfg.source, cfg.encoding)
    skipped: dict[str, int] = {}
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
    if not isinstance(loaded, dict):
        frame, skipped["all"] = _drop_empty(_select_columns(loaded, cfg, cfg.source), cfg, cfg.source)
        splits = stratified_split(frame, fractions, cfg.split_seed)
        refuse_empty_splits(splits, fractions, len(frame), cfg.source)
        return splits, skipped
    if "train" not in loaded:
        raise DistilError(f"data '{cfg.source}': splits {sorted(loaded)} have no 'train' split")
    splits = {}
    for name, frame in loaded.items():
        if name in SPLIT_NAMES:
            where = f"{cfg.source}[{name}]"
            splits[name], skipped[name] = _drop_empty(_select_columns(frame, cfg, where), cfg, where)
    missing = {name: frac for name, frac in fractions.items() if name not in splits}
    if missing:
        n_rows = len(splits["train"])
        splits.update(stratified_split(splits["train"], missing, cfg.split_seed))
        refuse_empty_splits(splits, missing, n_rows, f"{cfg.source}[train]")
    return splits, skipped


def refuse_empty_splits(
    splits: dict[str, pd.DataFrame], fractions: dict[str, float], n: int, where: str, unit: str = "rows"
) -> None:
    """Refuse a split carved from ``n`` units (rows, sentences, articles) by ``fractions`` that came out empty."""
    for name in [s for s in SPLIT_NAMES if s in splits]:
        if len(splits[name]) == 0:
            held_out = ", ".join(f"{k}_fraction {v:g}" for k, v in fractions.items())
            fix = f"a larger data.{name}_fraction" if name in fractions else "smaller fractions"
            raise DistilError(
                f"data '{where}': the {name} split is empty ({n} {unit}, {held_out}); give more {unit} or {fix}"
            )


def _refuse_single_label(train: pd.DataFrame, cfg: DataConfig) -> None:
    present = sorted(set(train["label"].astype(str)))
    if len(present) < 2:
        fix = " or a larger data.max_train_samples" if cfg.max_train_samples else ""
        raise DistilError(
            f"data '{cfg.source}': the train split has one label only ({present[0]!r} in column "
            f"'{cfg.label_column}'); a classifier needs at least two distinct labels: give examples of another "
            f"label{fix}"
        )


def sample_rows(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """An extra test set cut to a seeded random sample of ``cfg.max_extra_test_samples`` rows (in their order)."""
    n = cfg.max_extra_test_samples
    if not n or len(frame) <= n:
        return frame
    keep = np.sort(np.random.default_rng(cfg.split_seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def _extra_test_frame(loaded: pd.DataFrame | dict[str, pd.DataFrame], source: str) -> pd.DataFrame:
    """An extra test set's rows: the frame, or the 'test' split of a source with splits."""
    if not isinstance(loaded, dict):
        return loaded
    if "test" not in loaded:
        raise DistilError(
            f"data.extra_test_sets '{source}': splits {sorted(loaded)} have no 'test' split; give a file or a "
            f"dataset with a test split"
        )
    return loaded["test"]


def prepare_data(cfg: DataConfig) -> TaskData:
    """Load, clean, split and label-encode the data of ``cfg``.

    Raises:
        DistilError: missing/empty/undecodable file, missing column, empty rows under empty_text=error, an empty
            split, fewer than two labels in training, an unknown label.
    """
    splits, skipped = _load_splits(cfg)
    if cfg.max_train_samples:
        splits["train"] = splits["train"].iloc[: cfg.max_train_samples].reset_index(drop=True)
    if cfg.max_eval_samples:
        for name in ("validation", "test"):
            splits[name] = splits[name].iloc[: cfg.max_eval_samples].reset_index(drop=True)
    _refuse_single_label(splits["train"], cfg)
    names = _label_names(splits["train"], cfg)
    splits = {name: _encode_labels(frame, names, f"{cfg.source}[{name}]") for name, frame in splits.items()}
    extra = {}
    for source in cfg.resolved_extra_test_sets:
        columns = DataConfig(text_column="text", label_column="label") if source in BUILTIN_SOURCES else cfg
        loaded = _extra_test_frame(load_source(source, cfg.encoding), source)
        frame, skipped[source] = _drop_empty(_select_columns(loaded, columns, source), cfg, source)
        extra[source] = sample_rows(_encode_labels(frame, names, source, synonyms=True), cfg)
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


TEACHER_PREFIX = "teacher_"
"""Prefix of the columns holding the teacher's own tokens when the two tokenise differently (`add_teacher_tokens`)."""


class PadCollator:
    """Dynamic padding to the longest row of the batch; passes labels and row indices (idx) through.

    ``teacher_input_ids`` / ``teacher_attention_mask`` / ``teacher_token_type_ids`` (a student dataset with the
    teacher's tokens beside its own) are padded to their own longest row, the ids with ``teacher_pad_token_id``.
    """

    def __init__(self, pad_token_id: int, teacher_pad_token_id: int | None = None):
        self.pad_token_id = pad_token_id
        self.teacher_pad_token_id = pad_token_id if teacher_pad_token_id is None else teacher_pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for prefix, pad_id in (("", self.pad_token_id), (TEACHER_PREFIX, self.teacher_pad_token_id)):
            if prefix + "input_ids" not in rows[0]:
                continue
            longest = max(len(r[prefix + "input_ids"]) for r in rows)
            for key, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
                key = prefix + key
                if key in rows[0]:
                    batch[key] = torch.tensor([list(r[key]) + [pad] * (longest - len(r[key])) for r in rows])  # (B, L)
        for key in ("labels", "idx"):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows]) if not _per_token(rows[0][key]) else None  # (B,)
        if "labels" in rows[0] and _per_token(rows[0]["labels"]):  # per-token labels (B, L), padded with -100
            longest = batch["input_ids"].shape[1]
            batch["labels"] = torch.tensor([list(r["labels"]) + [-100] * (longest - len(r["labels"])) for r in rows])
        return batch


def _per_token(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.ndim == 1)


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    special = set(tokenizer.all_special_ids)
    return ["<special>" if i in special else t for i, t in zip(ids, tokenizer.convert_ids_to_tokens(list(ids)))]


def tokens_align(student_tokenizer, teacher_tokenizer, student_ids: list[int], teacher_ids: list[int]) -> bool:
    """True when position i holds the same word piece in both tokenisations (special tokens match any special
    token): MiniLM's ``[CLS] a film [SEP]`` and MPNet's ``<s> a film </s>`` align; different splits do not."""
    return len(student_ids) == len(teacher_ids) and _pieces(student_tokenizer, student_ids) == _pieces(
        teacher_tokenizer, teacher_ids
    )


def add_teacher_tokens(student_dataset, teacher_dataset, student_tokenizer, teacher_tokenizer):
    """The student's dataset plus the teacher's tokens of the same rows as ``teacher_*`` columns, and ``aligned``.

    For a student whose tokenizer differs from the teacher's (e.g. MiniLM and MPNet): the student reads its own
    ids while a live teacher reads its own. ``aligned`` marks rows where both tokenisations hold the same word
    pieces position by position (`tokens_align`), the rows on which token-level losses (hidden states, attention)
    can compare positions one to one.

    Raises:
        DistilError: the two datasets do not hold the same rows in the same order.
    """
    if len(student_dataset) != len(teacher_dataset) or student_dataset["idx"] != teacher_dataset["idx"]:
        raise DistilError(
            f"teacher and student tokenisations hold different rows ({len(teacher_dataset)} vs "
            f"{len(student_dataset)}); both must come from the same frame"
        )
    out = student_dataset
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in teacher_dataset.column_names]
    for key in keys:
        out = out.add_column(TEACHER_PREFIX + key, teacher_dataset[key])
    aligned = [
        tokens_align(student_tokenizer, teacher_tokenizer, s, t)
        for s, t in zip(student_dataset["input_ids"], teacher_dataset["input_ids"])
    ]
    return out.add_column("aligned", aligned)
