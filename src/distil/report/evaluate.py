"""Teacher vs student: task metrics, parameters, size on disk, CPU latency (interleaved, medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distil.models.inference import logits_of, longest_first_batches
from distil.tasks.classification import classification_metrics


def predict_logits(
    model, dataset, collator, batch_size: int = 64, desc: str = "predict", reduce: Callable | None = None
) -> np.ndarray:
    """Logits of ``model`` on a tokenised dataset, in row order (batched longest-first): (N, C), or (N, Lmax, C)
    zero-padded for per-token logits (Lmax: the dataset's longest row), as the Trainer's evaluation gives them.

    ``reduce(logits, rows, inputs) -> (B, L, R)`` keeps R numbers per position instead of the C logits (a causal
    LM's vocabulary is too wide to keep)."""
    lengths = np.asarray(dataset["length"])
    out = None
    for rows, inputs, outputs in longest_first_batches(model, dataset, collator, batch_size, desc=desc):
        if reduce is not None:
            logits = reduce(logits_of(outputs), rows, {k: v.cpu() for k, v in inputs.items()})  # (B, L, R)
        else:
            logits = logits_of(outputs).float().cpu().numpy()  # (B, C) or (B, L, C); the model's own tokens
        if out is None:
            per_row = (int(lengths.max()), logits.shape[-1]) if logits.ndim == 3 else (logits.shape[-1],)
            out = np.zeros((len(dataset), *per_row), dtype=np.float32)
        if logits.ndim == 3:
            out[rows, : logits.shape[1]] = logits
        else:
            out[rows] = logits
    return out


def evaluate_split(model, dataset, collator, num_labels: int, batch_size: int = 64, desc: str = "eval") -> dict:
    logits = predict_logits(model, dataset, collator, batch_size, desc)
    return classification_metrics(logits.argmax(-1), np.asarray(dataset["labels"]), num_labels)


def size_on_disk(model_dir: str | Path) -> int:
    """Bytes of the weight files (safetensors) in a saved model directory and its module folders (2_Dense)."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*.safetensors"))


def _dummy_batch(vocab_size: int, batch: int, seq_len: int, takes_token_types: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(min(1000, vocab_size // 2), min(vocab_size, 20000), (batch, seq_len), generator=g),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
    }
    if takes_token_types:
        inputs["token_type_ids"] = torch.zeros(batch, seq_len, dtype=torch.long)
    return inputs


@torch.inference_mode()
def _time_once(model, inputs: dict, repeats: int) -> float:
    for _ in range(3):  # warm-up
        model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def latency_table(
    models: dict[str, torch.nn.Module], batch_sizes: list[int], seq_len: int, repeats: int, rounds: int = 3
) -> dict[str, dict[int, float]]:
    """Median CPU latency (ms) of each model at each batch size, fp32, inference_mode; inputs of ``seq_len``
    tokens (at most a model's max_position_embeddings).

    The models are timed interleaved (A B C, A B C, ...) for ``rounds`` rounds and the median of the
    round medians is kept, so a slow stretch of the machine hits every model alike.
    """
    per_round: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batch_sizes} for name in models}
    for _ in tqdm(range(rounds), desc="latency", unit="round"):
        for b in batch_sizes:
            for name, model in models.items():
                model.eval()
                cfg = getattr(model, "config", None)
                vocab = getattr(cfg, "vocab_size", 30000)
                takes_types = getattr(cfg, "type_vocab_size", 0) > 0 if cfg is not None else False
                length = min(seq_len, getattr(cfg, "max_position_embeddings", None) or seq_len)  # what it can read
                per_round[name][b].append(_time_once(model, _dummy_batch(vocab, b, length, takes_types), repeats))
    return {name: {b: statistics.median(v) for b, v in by_b.items()} for name, by_b in per_round.items()}
