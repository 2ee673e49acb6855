"""The teacher's outputs on the training set, computed once and kept on disk as named per-row arrays, memory-mapped.

A cache entry lives in ``<cache_dir>/soft_labels/<fingerprint>/``: one ``<name>.npy`` per named array and a
``meta.json``. Each array has a per-row kind:

- ``"fixed"``: every row has the same shape, stored as (N, *shape), e.g. classification ``logits`` (N, C);
- ``"per_token"``: row i has L_i positions, stored flat as (sum_i L_i, *shape) with no padding, plus
  ``<name>.offsets.npy`` (N + 1,) int64: row i is ``data[offsets[i]:offsets[i + 1]]``, e.g. token-classification
  ``logits`` (sum_i L_i, C).

``meta.json`` records the format version, the fingerprint, the number of rows and, per array, its name, kind,
dtype, stored shape and the sha256 of each of its files. The fingerprint hashes the teacher's weights, the
tokenised data (ids, masks, order), the tokenisation settings, the task and the signal spec (array names and
kinds), so any change makes a new key. An entry whose meta does not match, whose files are truncated, whose
checksums, shapes or dtypes differ, or whose offsets are not monotone up to the flat length is deleted and
rebuilt, never used. Entries are written to a temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distil.engine import processes
from distil.engine.cache_shards import Shard, build_shared
from distil.engine.row_arrays import (
    FIXED,
    NAME,
    PER_TOKEN,
    ROW_KINDS,
    RowArray,
    as_row_arrays,
    describe_array,
    open_array,
)
from distil.io import atomic_dir, write_json
from distil.models.inference import logits_of, longest_first_batches
from distil.models.loading import vocabulary_fingerprint

FORMAT_VERSION = 2
CLASSIFICATION_SIGNAL = {"logits": FIXED}

SignalReader = Callable[[Any], torch.Tensor]
"""Reads one array from the teacher's forward output: (B, *shape), or (B, T, *shape) for a per-token signal."""


def hash_model(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_dataset(dataset, columns: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")) -> str:
    """sha256 over the token columns of a tokenised dataset, row by row, in order."""
    h = hashlib.sha256()
    h.update(str(len(dataset)).encode())
    for col in columns:
        if col not in dataset.column_names:
            continue
        h.update(col.encode())
        for row in dataset[col]:
            h.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


def _check_signal(signal: Mapping[str, str]) -> dict[str, str]:
    if not signal:
        raise ValueError("signal spec is empty; name at least one array, e.g. {'logits': 'fixed'}")
    for name, kind in signal.items():
        if not NAME.fullmatch(name):
            raise ValueError(f"signal array name {name!r}: use letters, digits and '_' only (it names a file)")
        if kind not in ROW_KINDS:
            raise ValueError(f"signal array {name!r} has kind {kind!r}; expected one of {', '.join(ROW_KINDS)}")
    return dict(signal)


def fingerprint(
    teacher_hash: str,
    data_hash: str,
    tokenizer_settings: dict,
    task: str = "classification",
    signal: Mapping[str, str] | None = None,
) -> str:
    """Cache key of one (teacher, data, tokenisation, task, signal spec); ``signal`` maps name -> row kind
    (default: classification's ``{"logits": "fixed"}``)."""
    spec = _check_signal(CLASSIFICATION_SIGNAL if signal is None else signal)
    payload = json.dumps(
        {
            "v": FORMAT_VERSION,
            "teacher": teacher_hash,
            "data": data_hash,
            "tokenizer": tokenizer_settings,
            "task": task,
            "signal": spec,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def signal_spec(names, per_token: bool = False) -> dict[str, str]:
    """The spec {name: kind} of arrays ``names`` all written with the same kind."""
    return _check_signal({name: PER_TOKEN if per_token else FIXED for name in names})


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """A gathered block as a tensor: floating arrays as float32, others (e.g. top-k ids) in their own dtype."""
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else None
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


@dataclass
class SoftLabels:
    """Teacher outputs for rows 0..N-1 of the training set, one memory-mapped `RowArray` per name.

    ``SoftLabels(array, fingerprint, status, path)`` with a bare (N, C) array is the fixed ``logits`` alone.
    """

    arrays: dict[str, RowArray]
    fingerprint: str
    status: str  # "hit", "built", or "rebuilt (<why>)"
    path: Path

    def __post_init__(self):
        if isinstance(self.arrays, np.ndarray):
            self.arrays = {"logits": self.arrays}
        self.arrays = {n: a if isinstance(a, RowArray) else RowArray(a) for n, a in self.arrays.items()}

    @property
    def logits(self) -> np.ndarray:
        """The ``logits`` array as stored: (N, C) when fixed, (sum_i L_i, C) when per token."""
        return self.array("logits").data

    @property
    def signal(self) -> dict[str, str]:
        """The spec {name: kind} of the arrays held."""
        return {name: a.kind for name, a in self.arrays.items()}

    def array(self, name: str) -> RowArray:
        if name not in self.arrays:
            raise KeyError(f"soft labels {self.fingerprint} hold no array {name!r}; they hold {sorted(self.arrays)}")
        return self.arrays[name]

    def lookup(self, idx: torch.Tensor, name: str = "logits", length: int | None = None) -> torch.Tensor:
        """Array ``name`` on the rows ``idx`` (B,), float32 for floating arrays.

        Args:
            idx: row indices (B,).
            name: which array.
            length: per-token arrays only: the batch's padded length T; each row's (L_i, *shape) block is copied
                to the left and zero-padded up to T, or cropped when L_i > T. None: the longest row of the batch.

        Returns:
            fixed: (B, *shape); per token: (B, T, *shape), zero beyond each row's end (see `mask`).
        """
        arr = self.array(name)
        rows = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)  # (B,)
        if arr.offsets is None:
            return _to_torch(arr.data[rows])  # (B, *shape)
        lengths = arr.lengths(rows)  # (B,)
        length = int(lengths.max(initial=0)) if length is None else int(length)
        positions = np.arange(length)  # (T,)
        real = positions[None, :] < lengths[:, None]  # (B, T)
        flat = arr.offsets[rows][:, None] + positions[None, :]  # (B, T) index into data, valid where real
        out = np.zeros((len(rows), length, *arr.data.shape[1:]), dtype=arr.data.dtype)  # (B, T, *shape)
        out[real] = arr.data[flat[real]]  # one gather of the real positions: (sum_b min(L_b, T), *shape)
        return _to_torch(out)

    def mask(self, idx: torch.Tensor, length: int | None = None, name: str = "logits") -> torch.Tensor:
        """(B, T) bool, True at each row's real positions of per-token array ``name`` (T as in `lookup`)."""
        rows = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)  # (B,)
        lengths = self.array(name).lengths(rows)  # (B,)
        length = int(lengths.max(initial=0)) if length is None else int(length)
        return torch.arange(length)[None, :] < torch.from_numpy(lengths)[:, None]  # (B, T)


class SoftLabelCache:
    """Fingerprint-keyed store of teacher outputs under ``root/soft_labels``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser() / "soft_labels"

    def entry(self, key: str) -> Path:
        return self.root / key

    def check(
        self, key: str, num_rows: int, signal: Mapping[str, str] | None = None, verify: bool = True
    ) -> tuple[dict[str, RowArray] | None, str]:
        """Open an entry if it is complete and verified (and holds exactly ``signal`` when given); else (None, why).

        ``why`` is "miss" (no entry), "stale" (another format version, key, row count or signal) or "corrupt".
        """
        path = self.entry(key)
        if not path.exists():
            return None, "miss"
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("version") != FORMAT_VERSION or meta.get("fingerprint") != key:
                return None, "stale"
            if meta.get("num_rows") != num_rows:
                return None, "stale"
            specs = meta["arrays"]
            if signal is not None and {s["name"]: s["kind"] for s in specs} != dict(signal):
                return None, "stale"
            arrays = {s["name"]: open_array(path, s, num_rows, verify) for s in specs}
            if not arrays or len(arrays) != len(specs):
                return None, "corrupt"
            return arrays, "hit"
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            return None, "corrupt"

    def get_or_build(
        self,
        key: str,
        num_rows: int,
        compute: Callable[[Path], Any],
        description: str = "",
        signal: Mapping[str, str] | None = None,
        shard: Shard | None = None,
        shards: list[dict] | None = None,
    ) -> SoftLabels:
        """The verified entry for ``key``, built by ``compute`` when missing, stale or corrupt (under several
        processes with ``shard``: built in slices, `distil.engine.cache_shards`).

        Args:
            key: the entry's fingerprint.
            num_rows: N, the dataset's rows.
            compute: ``compute(path)`` fills a fresh temporary entry, where ``path`` is its ``logits.npy``; an
                array ``name`` goes beside it as ``<name>.npy`` (+ ``<name>.offsets.npy`` per token). It returns
                the arrays written, ``{name: RowArray}``, or one (N, C) array for the fixed ``logits`` alone;
                arrays returned only in memory are saved for it.
            description: free text kept in meta.json.
            signal: the expected {name: kind}; an entry holding other arrays is rebuilt.
            shard: ``shard(path, rows)`` computes rows ``rows`` only; used instead of ``compute`` when the run has
                several processes (each computes a slice, the main process gathers them).
            shards: the slices' records kept in meta.json (which process computed which rows, in how long).
        """
        if shard is not None and processes.world() > 1:
            arrays, status = build_shared(self, key, num_rows, shard, description, signal)
            built = f"built by {processes.world()} processes"
            status = {"hit": "hit", "miss": built}.get(status, f"re{built} ({status})")
            return SoftLabels(arrays, key, status, self.entry(key))
        arrays, status = self.check(key, num_rows, signal)
        if arrays is not None:
            return SoftLabels(arrays, key, "hit", self.entry(key))
        path = self.entry(key)
        if path.exists():
            shutil.rmtree(path)
        with atomic_dir(path) as tmp:
            written = as_row_arrays(compute(tmp / "logits.npy"))
            specs = [describe_array(tmp, name, array) for name, array in written.items()]
            del written
            meta = {"version": FORMAT_VERSION, "fingerprint": key, "num_rows": num_rows, "arrays": specs}
            if shards:
                meta["shards"] = shards
            write_json(tmp / "meta.json", {**meta, "description": description})
        arrays, why = self.check(key, num_rows, signal)
        assert arrays is not None, f"soft-label cache entry {path} failed verification right after writing ({why})"
        return SoftLabels(arrays, key, "built" if status == "miss" else f"rebuilt ({status})", path)


DEFAULT_SIGNALS: dict[str, SignalReader] = {"logits": logits_of}
"""The default signal: the model's logits (`distil.models.inference.logits_of`; a span head's start/end stacked)."""


COMPACT_DTYPES = (torch.float16, torch.uint16, torch.int32)
"""Signal dtypes stored as they are (a causal LM's top-k log-probabilities and token ids)."""


def _as_stored(values: torch.Tensor, compact: bool = False) -> np.ndarray:
    """A signal batch on the CPU as stored: floating as float32 (bf16 and float16 included), integers as int64; with
    ``compact`` (a task's own readers chose their dtypes) float16, uint16 and int32 as they are."""
    values = values.detach().cpu()
    if compact and values.dtype in COMPACT_DTYPES:
        return values.numpy()
    return (values.float() if values.is_floating_point() else values.long()).numpy()


def _write_batch(out: np.ndarray, values: np.ndarray, rows: np.ndarray, offsets, real) -> None:
    """Write a batch's values (B, ...) into ``out`` by row index; per token, row b keeps its first real[b]
    positions at out[offsets[i]:offsets[i + 1]]."""
    if offsets is None:
        out[rows] = values  # (B, *shape)
        return
    for b, i in enumerate(rows):
        start, stop = int(offsets[i]), int(offsets[i + 1])
        if real[b] != stop - start:
            raise ValueError(
                f"row {i}: attention_mask has {int(real[b])} real tokens but the dataset's 'length' is "
                f"{stop - start}; per-token signals need 'length' = the number of real tokens"
            )
        out[start:stop] = values[b, : stop - start]  # (L_i, *shape)


def _open_output(folder: Path, name: str, first: np.ndarray, num_rows: int, offsets: np.ndarray | None) -> np.ndarray:
    """The writable memmap ``<name>.npy`` shaped after the first batch ``first``: (N, *shape) fixed, or per token
    (sum_i L_i, *shape) with ``<name>.offsets.npy`` saved beside it."""
    if offsets is None:
        shape = (num_rows, *first.shape[1:])  # first: (B, *shape)
    else:
        shape = (int(offsets[-1]), *first.shape[2:])  # first: (B, T, *shape)
        np.save(folder / f"{name}.offsets.npy", offsets, allow_pickle=False)
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=first.dtype, shape=shape)


def teacher_logits_to(
    path: Path,
    teacher,
    dataset,
    collator,
    batch_size: int,
    bf16: bool,
    num_labels: int | None = None,
    desc: str = "soft labels",
    *,
    per_token: bool = False,
    signals: Mapping[str, SignalReader] | None = None,
    rows: range | None = None,
) -> dict[str, RowArray]:
    """Run the frozen teacher over ``dataset`` (longest-first batches), writing each signal by row index.

    Args:
        path: the entry's ``logits.npy``; a signal ``name`` is written to ``path.parent / f"{name}.npy"``.
        teacher, dataset, collator: the model, a tokenised dataset with ``idx`` and ``length`` columns, and a
            collator padding to the batch's longest row (on the right) that passes ``idx`` through.
        batch_size, bf16: batching and autocast of the teacher's forward pass.
        num_labels: when given, the class count C the ``logits`` signal must have.
        per_token: every signal is per token: ``read(outputs)`` gives (B, T, *shape) and row i keeps its first
            ``attention_mask[i].sum()`` = ``dataset["length"][i]`` = L_i positions, stored flat
            (sum_i L_i, *shape) with offsets (N + 1,), in one pass in row-index order.
        signals: name -> ``read(outputs)`` -> (B, *shape), or (B, T, *shape) with ``per_token``; default
            ``{"logits": logits_of}``. Floating signals are stored as float32, integer ones as int64, except that
            given readers' float16, uint16 and int32 outputs are kept as they are (a causal LM's top-k).
        rows: only these contiguous rows (one process's slice), stored from ``rows.start`` on as rows 0, 1, ...

    Returns:
        {name: RowArray} of the memory-mapped arrays written.
    """
    first = 0 if rows is None else rows.start
    dataset = dataset if rows is None else dataset.select(rows)
    if len(dataset) == 0:
        raise ValueError("soft labels of an empty dataset: it has no rows")
    signals = DEFAULT_SIGNALS if signals is None else signals
    signal_spec(signals, per_token)  # validates the names before the teacher runs
    lengths = np.asarray(dataset["length"], dtype=np.int64)  # (N,)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64) if per_token else None  # (N + 1,)
    folder = Path(path).parent
    outs: dict[str, np.ndarray] = {}
    for ids, inputs, outputs in longest_first_batches(teacher, dataset, collator, batch_size, bf16=bf16, desc=desc):
        real = inputs["attention_mask"].sum(1).cpu().numpy() if per_token else None  # (B,)
        for name, read in signals.items():
            values = _as_stored(read(outputs), compact=signals is not DEFAULT_SIGNALS)  # (B, [T,] *shape)
            if name not in outs:
                if name == "logits" and num_labels is not None and values.shape[-1] != num_labels:
                    raise ValueError(f"teacher logits have shape {values.shape}; expected {num_labels} classes last")
                outs[name] = _open_output(folder, name, values, len(dataset), offsets)
            if values.shape[1 + per_token :] != outs[name].shape[1:]:
                raise ValueError(
                    f"signal {name!r}: a batch has per-row shape {values.shape[1 + per_token :]} but earlier ones "
                    f"{outs[name].shape[1:]}; a fixed signal needs one shape for all rows (use per_token for (T, ...))"
                )
            _write_batch(outs[name], values, ids - first, offsets, real)
    return {name: RowArray(out, offsets) for name, out in outs.items()}


def soft_labels_for(
    teacher,
    tokenizer,
    dataset,
    collator,
    cache_dir: str | Path,
    *,
    max_length: int,
    batch_size: int = 128,
    bf16: bool = True,
    teacher_hash: str | None = None,
    per_token: bool = False,
    task: str = "classification",
    signals: Mapping[str, SignalReader] | None = None,
    signal_settings: dict | None = None,
) -> SoftLabels:
    """Verified teacher outputs on ``dataset``: from the cache, or computed once and stored.

    Args:
        teacher, tokenizer, dataset, collator: as in `teacher_logits_to`; the tokenizer's settings are keyed.
        cache_dir: root of the cache (entries under ``<cache_dir>/soft_labels``).
        max_length, batch_size, bf16: the tokenisation length (keyed), batching and autocast.
        teacher_hash: a precomputed `hash_model` of the teacher (computed when None).
        per_token: store every signal per token (see `teacher_logits_to`); part of the key.
        task: the task's name, part of the key.
        signals: name -> reader of the teacher's output (default ``{"logits": logits_of}``); names and kinds
            are part of the key.
        signal_settings: what else shapes the readers' output (a causal LM's top-k), part of the key.
    """
    settings = {
        "max_length": max_length,
        "tokenizer": type(tokenizer).__name__,
        "vocab": vocabulary_fingerprint(tokenizer),
    }
    sentence = getattr(getattr(teacher, "config", None), "distil_sentence", None)
    if sentence is not None:  # a sentence encoder: pooling, projection and normalisation shape its output
        settings["sentence"] = sentence
    if signal_settings:
        settings["signal"] = signal_settings
    spec = signal_spec(DEFAULT_SIGNALS if signals is None else signals, per_token)
    key = fingerprint(teacher_hash or hash_model(teacher), hash_dataset(dataset), settings, task=task, signal=spec)
    config = getattr(teacher, "config", None)
    labelled = getattr(type(teacher), "labelled", True)  # a sentence encoder's "logits" are its embedding
    num_labels = getattr(config, "num_labels", None) if signals is None and labelled else None

    def compute(path: Path, rows: range | None = None) -> dict[str, RowArray]:
        """On a miss only: the teacher on this process's GPU when there is one, then back where it was."""
        home = next(teacher.parameters()).device
        teacher.to(processes.device())
        try:
            return teacher_logits_to(
                path, teacher, dataset, collator, batch_size, bf16, num_labels, per_token=per_token,
                signals=signals, rows=rows,
            )  # fmt: skip
        finally:
            teacher.to(home)

    return SoftLabelCache(cache_dir).get_or_build(
        key,
        len(dataset),
        compute,
        description=f"{task}: {getattr(config, 'name_or_path', '')} on {len(dataset)} rows",
        signal=spec,
        shard=compute,
    )
