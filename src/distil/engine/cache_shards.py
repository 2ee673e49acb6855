"""A teacher-cache entry built by several processes: each computes a contiguous slice of the rows, the main process
gathers the slices into the one entry, every process then opens the same memory-mapped files.

Process r of W computes rows [r*N//W, (r+1)*N//W) into ``<root>/.<key>.parts/rank-<r>/`` (its arrays in the
entry's format, with the slice's own offsets, and ``done.json`` last). After a barrier the main process copies the
slices in row order into a fresh entry (the cache's usual atomic build, its meta recording each slice's process,
rows and seconds) and deletes the parts; after a second barrier every process verifies and maps the entry. No
process recomputes a row another one computed, and only the main process writes the entry.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distil.engine import processes
from distil.engine.row_arrays import FIXED, RowArray, as_row_arrays, store_array
from distil.io import read_json, write_json

Shard = Callable[[Path, range], Any]
"""``shard(path, rows)`` writes the teacher's outputs on ``rows`` beside ``path`` (as ``compute`` does for all rows,
row ``rows.start`` first) and returns {name: RowArray} or one array."""


def slice_of(num_rows: int, rank: int, world: int) -> range:
    """The contiguous rows process ``rank`` of ``world`` computes (sizes differ by at most one)."""
    return range(rank * num_rows // world, (rank + 1) * num_rows // world)


def compute_part(parts: Path, shard: Shard, num_rows: int) -> dict:
    """This process's slice, written to ``parts/rank-<r>/`` (``done.json`` last); returns its record."""
    rank, world = processes.rank(), processes.world()
    rows = slice_of(num_rows, rank, world)
    folder = parts / f"rank-{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    kinds = {}
    if len(rows):
        for name, array in as_row_arrays(shard(folder / "logits.npy", rows)).items():
            store_array(folder, name, array)
            kinds[name] = array.kind
    for file in folder.glob("*.npy"):  # on disk before done.json says so (another machine may read them next)
        with open(file, "rb+") as handle:
            os.fsync(handle.fileno())
    record = {"rank": rank, "rows": [rows.start, rows.stop], "seconds": round(time.perf_counter() - start, 2)}
    write_json(folder / "done.json", {**record, "arrays": kinds})
    print(f"teacher outputs: process {rank} of {world} computed rows {rows.start}..{rows.stop - 1} "
          f"in {record['seconds']:.1f}s")  # fmt: skip
    return record


def merge_parts(parts: Path, folder: Path, num_rows: int) -> tuple[dict[str, RowArray], list[dict]]:
    """The slices in ``parts`` copied in row order into ``folder`` (memmaps); returns the arrays and the records.

    Raises:
        ValueError: a slice is missing, incomplete, or disagrees with the others (names, kinds, shapes, dtypes).
    """
    done = sorted((read_json(p) for p in parts.glob("rank-*/done.json")), key=lambda d: d["rank"])
    covered = [r for d in done for r in d["rows"]]
    if not done or covered[0] != 0 or covered[-1] != num_rows or covered[1:-1:2] != covered[2::2]:
        raise ValueError(f"cache slices in {parts} do not cover rows 0..{num_rows - 1}: {[d['rows'] for d in done]}")
    filled = [d for d in done if d["arrays"]]
    names = filled[0]["arrays"]
    if any(d["arrays"] != names for d in filled):
        raise ValueError(f"cache slices in {parts} hold different arrays: {[d['arrays'] for d in filled]}")
    merged = {}
    for name, kind in names.items():
        pieces = [np.load(parts / f"rank-{d['rank']}" / f"{name}.npy", mmap_mode="r") for d in filled]
        if len({(p.dtype, p.shape[1:]) for p in pieces}) != 1:
            raise ValueError(f"cache slices of {name!r} differ in dtype or shape: {[p.shape for p in pieces]}")
        shape = (sum(len(p) for p in pieces), *pieces[0].shape[1:])
        out = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=pieces[0].dtype, shape=shape)
        at, offsets = 0, None
        if kind != FIXED:  # each slice's offsets start at 0: shift them by the rows' flat start
            local = [np.load(parts / f"rank-{d['rank']}" / f"{name}.offsets.npy") for d in filled]
            starts = np.cumsum([0] + [len(p) for p in pieces])
            offsets = np.concatenate([[0]] + [o[1:] + s for o, s in zip(local, starts)]).astype(np.int64)
        for piece in pieces:
            out[at : at + len(piece)] = piece
            at += len(piece)
        merged[name] = RowArray(out, offsets)
    return merged, [{k: d[k] for k in ("rank", "rows", "seconds")} for d in done]


def build_shared(cache, key: str, num_rows: int, shard: Shard, description: str, signal: Mapping[str, str] | None):
    """The entry ``key`` of ``cache`` (a `SoftLabelCache`) on every process: opened if the main process finds it
    verified, else computed in slices by all processes and gathered by the main one. Returns (arrays, status)."""
    if num_rows == 0:
        raise ValueError("teacher outputs of an empty dataset: it has no rows")
    status = processes.broadcast(cache.check(key, num_rows, signal)[1] if processes.is_main() else None)
    if status != "hit":
        parts = cache.root / f".{key}.parts"
        if processes.is_main():
            shutil.rmtree(parts, ignore_errors=True)
        processes.barrier()
        compute_part(parts, shard, num_rows)
        processes.barrier()
        if processes.is_main():
            records: list[dict] = []

            def gather(path: Path):
                arrays, found = merge_parts(parts, path.parent, num_rows)
                records.extend(found)
                return arrays

            cache.get_or_build(key, num_rows, gather, description, signal, shards=records)
            shutil.rmtree(parts, ignore_errors=True)
        processes.barrier()
    arrays, why = cache.check(key, num_rows, signal, verify=False)  # the main process verified or just wrote it
    if arrays is None:
        raise RuntimeError(f"teacher cache entry {cache.entry(key)} cannot be opened after it was built ({why})")
    return arrays, status
