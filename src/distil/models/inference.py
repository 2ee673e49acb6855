"""The one batched-inference loop: a model over a tokenised dataset, longest rows first, under inference_mode.

The teacher-output cache (`distil.engine.teacher_cache`) and evaluation (`distil.report.evaluate`) both read
models through it, so both batch, pad, autocast and order rows the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from distil.data.prepare import TEACHER_PREFIX


def split_inputs(inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(student inputs, teacher inputs) of a batch: the teacher reads ``teacher_*`` columns when the batch has them
    (teacher and student tokenise differently), otherwise the student's own inputs."""
    student = {k: v for k, v in inputs.items() if not k.startswith(TEACHER_PREFIX)}
    teacher = {k[len(TEACHER_PREFIX) :]: v for k, v in inputs.items() if k.startswith(TEACHER_PREFIX)}
    return student, (teacher or student)


SPAN_LOGITS = ("start_logits", "end_logits")
"""The two outputs of an extractive question-answering head (``AutoModelForQuestionAnswering``)."""


def logits_of(outputs) -> torch.Tensor:
    """Logits from an HF ModelOutput, a dict, or a plain tensor (any-PyTorch-model students).

    A span head's ``start_logits`` and ``end_logits`` (B, L) each come back stacked as one (B, L, 2) tensor, so a
    question-answering model's output is per-token logits like a tagger's: cached, padded and exported alike.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if not isinstance(outputs, dict):  # ModelOutput is a dict; other objects carry .logits
        return outputs.logits
    if outputs.get("logits") is None and all(outputs.get(k) is not None for k in SPAN_LOGITS):
        return torch.stack([outputs[k] for k in SPAN_LOGITS], dim=-1)  # (B, L, 2)
    return outputs["logits"]


def longest_first_batches(
    model: torch.nn.Module,
    dataset: Any,
    collator: Any,
    batch_size: int,
    *,
    bf16: bool = False,
    desc: str = "predict",
    leave: bool = False,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], Any]]:
    """Run ``model`` (eval mode, inference_mode, optional bf16 autocast) over ``dataset`` in batches of similar
    length, longest first.

    Args:
        dataset: a tokenised dataset with ``idx`` and ``length`` columns.
        collator: pads a list of rows to the batch's longest (on the right) and passes ``idx`` through.

    Yields:
        (row indices (B,), the model's inputs (B, T) each, the model's outputs). The model reads the dataset's own
        tokens (`split_inputs`: a student dataset's ``teacher_*`` columns are left out).
    """
    model.eval()
    order = np.argsort(-np.asarray(dataset["length"]), kind="stable")
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=leave):
            batch = collator([dataset[int(i)] for i in order[start : start + batch_size]])
            rows = batch.pop("idx").numpy()  # (B,)
            batch.pop("labels", None)
            inputs = {k: v.to(device) for k, v in split_inputs(batch)[0].items()}
            with autocast:
                outputs = model(**inputs)
            yield rows, inputs, outputs
