"""Several teachers of the same task: their soft labels combined into one teacher signal.

Each teacher's logits are computed and cached on their own (`distil.engine.teacher_cache.soft_labels_for`, one
fingerprint-keyed entry per teacher), so adding, removing or re-weighting a teacher recomputes nothing; only the
cheap (N, C) combination is redone in memory.

Convention for ``how="mean_probs"`` (the ensemble of distributions, as in Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network", https://arxiv.org/abs/1503.02531): with weights w_i summing to 1 and
T = ``kd_temperature``, the returned logits are ``z = T * log(sum_i w_i * softmax(z_i / T))``. They are logits
*at temperature T*: ``softmax(z / T)`` is exactly the weighted mean of the teachers' softened distributions, and
``softmax(z / T')`` for another T' is that mixture sharpened or flattened further. Pass the kd_temperature of
the loss, so the existing KD term (which divides teacher and student logits by T and multiplies by T^2) compares
the student at T with the averaged teacher distribution at T, unchanged. With ``soft_loss: mse`` use
``how="mean_logits"`` (the weighted mean of raw logits), since MSE compares raw logits.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from distil.engine.teacher_cache import SoftLabels, soft_labels_for
from distil.errors import DistilError

COMBINE_METHODS = ("mean_logits", "mean_probs")


def normalise_weights(weights: Sequence[float] | None, num_teachers: int) -> np.ndarray:
    """Teacher weights scaled to sum to 1 (equal when None). (num_teachers,) float64.

    Raises:
        DistilError: wrong count, a negative or non-finite weight, or all weights zero.
    """
    if weights is None:
        return np.full(num_teachers, 1.0 / num_teachers)
    if len(weights) != num_teachers:
        raise DistilError(
            f"teacher weights {list(weights)}: {len(weights)} weights for {num_teachers} teachers; "
            f"give one weight per teacher"
        )
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise DistilError(f"teacher weights {list(weights)}: each must be a finite number >= 0, and not all 0")
    return w / w.sum()


def _as_array(soft: SoftLabels | np.ndarray) -> np.ndarray:
    return np.asarray(soft.logits if isinstance(soft, SoftLabels) else soft)


def combine_soft_labels(
    soft_labels: Sequence[SoftLabels] | Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    how: Literal["mean_logits", "mean_probs"] = "mean_probs",
    kd_temperature: float = 1.0,
) -> np.ndarray:
    """One teacher signal from several teachers' logits on the same rows.

    Args:
        soft_labels: per teacher, (N, C) logits (a `SoftLabels` or an array), rows in the same order.
        weights: one weight per teacher, normalised to sum to 1; None weighs them equally.
        how: "mean_probs": ``T * log(sum_i w_i softmax(z_i / T))``, logits whose softmax at temperature T is the
            weighted mean distribution (see the module docstring); "mean_logits": ``sum_i w_i z_i``.
        kd_temperature: T of "mean_probs"; use the loss's kd_temperature. Ignored by "mean_logits".

    Returns:
        (N, C) float32 logits.

    Raises:
        DistilError: no teachers, bad weights, bad ``how`` or ``kd_temperature``, or teachers whose shapes differ
            (the message names the teacher and both shapes).
    """
    if not soft_labels:
        raise DistilError("combine_soft_labels: no teachers given")
    if how not in COMBINE_METHODS:
        raise DistilError(f"teacher combination how={how!r}; expected one of {', '.join(COMBINE_METHODS)}")
    if not (isinstance(kd_temperature, (int, float)) and math.isfinite(kd_temperature) and kd_temperature > 0):
        raise DistilError(f"kd_temperature={kd_temperature!r}: must be a finite number > 0")
    arrays = [_as_array(s) for s in soft_labels]
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise DistilError(f"teacher {i}: soft labels have shape {a.shape}; expected (rows, classes)")
        if a.shape != arrays[0].shape:
            raise DistilError(
                f"teacher {i}: soft labels have shape {a.shape} but teacher 0 has {arrays[0].shape}; "
                f"every teacher must label the same rows with the same classes"
            )
    w = normalise_weights(weights, len(arrays))
    stacked = np.stack([a.astype(np.float64) for a in arrays])  # (K, N, C)
    if how == "mean_logits":
        return np.einsum("k,knc->nc", w, stacked).astype(np.float32)
    log_probs = torch.log_softmax(torch.from_numpy(stacked) / kd_temperature, dim=-1)  # (K, N, C)
    with np.errstate(divide="ignore"):  # a weight of 0 drops its teacher: log 0 = -inf inside the logsumexp
        log_w = torch.from_numpy(np.log(w)).view(-1, 1, 1)  # (K, 1, 1)
    mixture = torch.logsumexp(log_w + log_probs, dim=0)  # (N, C) log of the weighted mean distribution
    return (kd_temperature * mixture).numpy().astype(np.float32)


@dataclass
class MultiTeacherSoftLabels:
    """Combined soft labels of several teachers, with `SoftLabels`'s ``lookup`` so a Distiller takes it as is."""

    logits: np.ndarray  # (N, C) float32, the combination
    members: list[SoftLabels]  # each teacher's own verified cache entry
    weights: list[float]  # normalised
    how: str
    kd_temperature: float

    @property
    def fingerprint(self) -> str:
        """Hash of the members' fingerprints and the combination settings."""
        payload = json.dumps(
            {
                "members": [m.fingerprint for m in self.members],
                "weights": self.weights,
                "how": self.how,
                "kd_temperature": self.kd_temperature,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @property
    def status(self) -> str:
        return ", ".join(f"teacher {i}: {m.status}" for i, m in enumerate(self.members))

    @property
    def path(self) -> Path:
        """The soft-label cache directory that holds every member's entry."""
        return self.members[0].path.parent

    @property
    def paths(self) -> list[Path]:
        return [m.path for m in self.members]

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Combined teacher logits of the rows ``idx`` (B,) -> (B, C) float32."""
        return torch.from_numpy(np.ascontiguousarray(self.logits[idx.cpu().numpy()]))


def _per_teacher(value, n: int, name: str) -> list:
    """``value`` repeated per teacher, or a list/tuple already holding one per teacher."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise DistilError(f"multi-teacher: {len(value)} {name}s for {n} teachers; give one, or one per teacher")
        return list(value)
    return [value] * n


def _num_labels(teacher: nn.Module) -> int | None:
    config = getattr(teacher, "config", None)
    return getattr(config, "num_labels", None)


def multi_teacher_soft_labels(
    teachers: Sequence[nn.Module],
    weights: Sequence[float] | None,
    tokenizer,
    dataset,
    collator,
    cache_dir: str | Path,
    *,
    max_length: int,
    batch_size: int = 128,
    bf16: bool = True,
    how: Literal["mean_logits", "mean_probs"] = "mean_probs",
    kd_temperature: float = 1.0,
    teacher_hashes: Sequence[str | None] | None = None,
) -> MultiTeacherSoftLabels:
    """Soft labels of every teacher on ``dataset``, each from its own cache entry, combined.

    Args:
        teachers: frozen classifiers of the same task (same label set, same label order).
        weights: one per teacher (normalised), or None for equal weights.
        tokenizer, dataset, collator: shared by all teachers, or a list with one per teacher when their
            vocabularies differ (e.g. MiniLM and MPNet); every dataset must hold the same rows in the same order.
        cache_dir: root of the soft-label cache; each teacher gets its own fingerprint-keyed entry.
        max_length, batch_size, bf16: as in `soft_labels_for`.
        how, kd_temperature: see `combine_soft_labels` (pass the loss's kd_temperature for "mean_probs").
        teacher_hashes: precomputed `hash_model` values (None entries are computed).

    Returns:
        a `MultiTeacherSoftLabels` usable wherever a `SoftLabels` is (``lookup(idx)``).

    Raises:
        DistilError: no teachers, teachers with different numbers of labels or rows, bad weights.
    """
    n = len(teachers)
    if n == 0:
        raise DistilError("multi-teacher: no teachers given")
    w = normalise_weights(weights, n)  # fail before any teacher runs
    labels = [_num_labels(t) for t in teachers]
    for i, c in enumerate(labels):
        if c is not None and labels[0] is not None and c != labels[0]:
            raise DistilError(
                f"teacher {i} has {c} labels but teacher 0 has {labels[0]}; every teacher must be a "
                f"classifier of the same task"
            )
    tokenizers, datasets, collators = (
        _per_teacher(v, n, name)
        for v, name in ((tokenizer, "tokenizer"), (dataset, "dataset"), (collator, "collator"))
    )
    hashes = _per_teacher(list(teacher_hashes) if teacher_hashes is not None else None, n, "teacher hash")
    for i, ds in enumerate(datasets):
        if len(ds) != len(datasets[0]):
            raise DistilError(
                f"teacher {i}: dataset has {len(ds)} rows but teacher 0's has {len(datasets[0])}; "
                f"every teacher must label the same rows"
            )
    members = [
        soft_labels_for(
            t,
            tokenizers[i],
            datasets[i],
            collators[i],
            cache_dir,
            max_length=max_length,
            batch_size=batch_size,
            bf16=bf16,
            teacher_hash=hashes[i],
        )
        for i, t in enumerate(teachers)
    ]
    logits = combine_soft_labels(members, w.tolist(), how=how, kd_temperature=kd_temperature)
    return MultiTeacherSoftLabels(logits, members, w.tolist(), how, float(kd_temperature))
