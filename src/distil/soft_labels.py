"""The teacher's logits on the training set, computed once and kept on disk, memory-mapped.

A cache entry lives in ``<cache_dir>/soft_labels/<fingerprint>/`` as ``logits.npy`` (float32, (N, C)) and
``meta.json`` (fingerprint, shape, sha256 of the array file). The fingerprint hashes the teacher's weights,
the tokenised data (ids, masks, order) and the tokenisation settings, so any change makes a new key. An
entry whose meta does not match, whose file is truncated or whose checksum differs is deleted and rebuilt,
never used. Entries are written to a temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distil.io import atomic_dir, write_json
from distil.models.loading import vocabulary_fingerprint

FORMAT_VERSION = 1


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


def fingerprint(teacher_hash: str, data_hash: str, tokenizer_settings: dict) -> str:
    payload = json.dumps(
        {"v": FORMAT_VERSION, "teacher": teacher_hash, "data": data_hash, "tokenizer": tokenizer_settings},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class SoftLabels:
    """Teacher logits for rows 0..N-1 of the training set, memory-mapped read-only."""

    logits: np.ndarray  # (N, C) float32 memmap
    fingerprint: str
    status: str  # "hit", "built", or "rebuilt (<why>)"
    path: Path

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Teacher logits of the rows ``idx`` (B,) -> (B, C) float32."""
        return torch.from_numpy(np.ascontiguousarray(self.logits[idx.cpu().numpy()]))


class SoftLabelCache:
    """Fingerprint-keyed store of teacher logits under ``root/soft_labels``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser() / "soft_labels"

    def entry(self, key: str) -> Path:
        return self.root / key

    def check(self, key: str, num_rows: int) -> tuple[np.ndarray | None, str]:
        """Open an entry if it is complete and verified; else (None, why)."""
        path = self.entry(key)
        if not path.exists():
            return None, "miss"
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("fingerprint") != key or meta.get("version") != FORMAT_VERSION:
                return None, "stale"
            if meta.get("shape", [None])[0] != num_rows:
                return None, "stale"
            if _file_sha256(path / "logits.npy") != meta.get("sha256"):
                return None, "corrupt"
            logits = np.load(path / "logits.npy", mmap_mode="r", allow_pickle=False)
            if list(logits.shape) != meta["shape"] or logits.dtype != np.float32:
                return None, "corrupt"
            return logits, "hit"
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None, "corrupt"

    def get_or_build(self, key: str, num_rows: int, compute, description: str = "") -> SoftLabels:
        """The verified entry for ``key``, built by ``compute(out_array)`` when missing, stale or corrupt."""
        logits, status = self.check(key, num_rows)
        if logits is not None:
            return SoftLabels(logits, key, "hit", self.entry(key))
        path = self.entry(key)
        if path.exists():
            shutil.rmtree(path)
        with atomic_dir(path) as tmp:
            out = compute(tmp / "logits.npy")
            out.flush()
            shape = list(out.shape)
            del out
            write_json(
                tmp / "meta.json",
                {
                    "version": FORMAT_VERSION,
                    "fingerprint": key,
                    "shape": shape,
                    "dtype": "float32",
                    "sha256": _file_sha256(tmp / "logits.npy"),
                    "description": description,
                },
            )
        logits, _ = self.check(key, num_rows)
        assert logits is not None, f"soft-label cache entry {path} failed verification right after writing"
        return SoftLabels(logits, key, "built" if status == "miss" else f"rebuilt ({status})", path)


@torch.inference_mode()
def teacher_logits_to(
    path: Path, teacher, dataset, collator, batch_size: int, bf16: bool, num_labels: int, desc: str = "soft labels"
) -> np.ndarray:
    """Run the frozen teacher over ``dataset`` (longest-first batches) writing logits by row index into a .npy."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(dataset), num_labels))
    teacher.eval()
    order = np.argsort(-np.asarray(dataset["length"]), kind="stable")
    device = next(teacher.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        rows = order[start : start + batch_size]
        batch = collator([dataset[int(i)] for i in rows])
        idx = batch.pop("idx")
        batch.pop("labels", None)
        with autocast:
            logits = teacher(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, C)
        out[idx.numpy()] = logits.float().cpu().numpy()
    return out


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
) -> SoftLabels:
    """Verified soft labels of ``teacher`` on ``dataset``: from the cache, or computed once and stored."""
    settings = {
        "max_length": max_length,
        "tokenizer": type(tokenizer).__name__,
        "vocab": vocabulary_fingerprint(tokenizer),
    }
    key = fingerprint(teacher_hash or hash_model(teacher), hash_dataset(dataset), settings)
    num_labels = teacher.config.num_labels
    return SoftLabelCache(cache_dir).get_or_build(
        key,
        len(dataset),
        lambda path: teacher_logits_to(path, teacher, dataset, collator, batch_size, bf16, num_labels),
        description=f"{getattr(teacher.config, 'name_or_path', '')} on {len(dataset)} rows",
    )
