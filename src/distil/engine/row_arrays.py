"""One named array over a cache entry's rows as stored: fixed per-row shape, or per-token rows stored flat with offsets
(the format `distil.engine.teacher_cache` describes), with its verification on open and its meta record on write."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distil.io import sha256_file

FIXED, PER_TOKEN = "fixed", "per_token"
ROW_KINDS = (FIXED, PER_TOKEN)
NAME = re.compile(r"[A-Za-z0-9_]+")
"""What an array's name may hold (it names a file)."""


@dataclass(frozen=True)
class RowArray:
    """One named array over rows 0..N-1: fixed per-row shape, or per-token rows stored flat with offsets."""

    data: np.ndarray  # fixed: (N, *shape); per_token: (sum_i L_i, *shape)
    offsets: np.ndarray | None = None  # per_token only: (N + 1,) int64, row i = data[offsets[i]:offsets[i + 1]]

    @property
    def kind(self) -> str:
        return FIXED if self.offsets is None else PER_TOKEN

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """Number of positions of each row in ``rows`` (B,) -> (B,) int64 (per-token arrays only)."""
        if self.offsets is None:
            raise ValueError("a fixed-shape array has no per-row lengths; only per-token arrays do")
        return self.offsets[rows + 1] - self.offsets[rows]


def open_array(folder: Path, spec: dict, num_rows: int, verify: bool = True) -> RowArray:
    """Verify one array's files against its meta (sha256, dtype, shape, offsets) and memory-map it read-only.

    Raises:
        ValueError: any mismatch (the caller treats the entry as corrupt).
    """
    name, kind, sha = spec["name"], spec["kind"], spec["sha256"]
    files = [f"{name}.npy"] + ([f"{name}.offsets.npy"] if kind == PER_TOKEN else [])
    if not NAME.fullmatch(name) or kind not in ROW_KINDS or sorted(sha) != sorted(files):
        raise ValueError(f"array {name!r}: meta does not describe its files")
    for file in files if verify else ():  # without verify: another process checked these bytes just now
        if sha256_file(folder / file) != sha[file]:
            raise ValueError(f"{file}: checksum differs")
    data = np.load(folder / files[0], mmap_mode="r", allow_pickle=False)
    if list(data.shape) != spec["shape"] or data.dtype != np.dtype(spec["dtype"]):
        raise ValueError(f"{files[0]}: {data.shape} {data.dtype}, meta says {spec['shape']} {spec['dtype']}")
    if kind == FIXED:
        if data.shape[0] != num_rows:
            raise ValueError(f"{files[0]}: {data.shape[0]} rows, expected {num_rows}")
        return RowArray(data)
    offsets = np.load(folder / files[1], mmap_mode="r", allow_pickle=False)
    if offsets.dtype != np.int64 or offsets.shape != (num_rows + 1,):
        raise ValueError(f"{files[1]}: {offsets.shape} {offsets.dtype}, expected ({num_rows + 1},) int64")
    if offsets[0] != 0 or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{files[1]}: not monotone from 0 to the flat length {data.shape[0]}")
    return RowArray(data, offsets)


def as_row_arrays(written) -> dict[str, RowArray]:
    """What a compute returned as {name: RowArray}: one bare array (or RowArray) is the fixed ``logits`` alone."""
    written = {"logits": written} if isinstance(written, (np.ndarray, RowArray)) else dict(written)
    return {name: a if isinstance(a, RowArray) else RowArray(a) for name, a in written.items()}


def store_array(folder: Path, name: str, array: RowArray) -> list[str]:
    """Put one array's files in ``folder``: flush a memmap written there, save an array held only in memory;
    returns the file names (``<name>.npy``, and ``<name>.offsets.npy`` per token)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"array name {name!r}: use letters, digits and '_' only (it names a file)")
    files = []
    for file, values in ((f"{name}.npy", array.data), (f"{name}.offsets.npy", array.offsets)):
        if values is None:
            continue
        if isinstance(values, np.memmap):
            values.flush()
        if not (folder / file).exists():
            np.save(folder / file, np.asarray(values), allow_pickle=False)
        files.append(file)
    return files


def describe_array(folder: Path, name: str, array: RowArray | np.ndarray) -> dict:
    """Flush one written array (saving it first if it is only in memory) and return its meta record."""
    array = array if isinstance(array, RowArray) else RowArray(array)
    return {
        "name": name,
        "kind": array.kind,
        "dtype": str(array.data.dtype),
        "shape": list(array.data.shape),
        "sha256": {file: sha256_file(folder / file) for file in store_array(folder, name, array)},
    }
