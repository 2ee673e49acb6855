"""The Task protocol: what one task declares, in the order every task file is written.

1. data: read and split a source, tokenise it, pad batches;
2. model: the ``AutoModelFor...`` class students and teachers load with;
3. teacher signal: the arrays the teacher writes per row (name -> per-row shape), for the cache;
4. KD term: an ``nn.Module`` over (student logits, teacher signal, labels) with its masking and reduction;
5. metric: the numbers the report, the best-checkpoint choice and the paired test use;
6. serving: how ``predict`` turns model output into an answer.

The engine (stages, trainer, distiller, cache, report, deploy) asks the task for these and holds no head code.

Optional hooks a task may define (the engine reads them with ``getattr`` and a default), by section:

- data: ``held_out`` texts in `TaskData`; ``one_tokenizer`` (rows are cut per tokenizer: teacher and student must
  share it); ``load_tokenizer(path, cache_dir)`` / ``load_teacher(path, cache_dir)`` (a GGUF teacher);
- model: ``trains_teacher`` / ``trains_baseline`` / ``validates`` (False: the teacher used as it is, the baseline
  untrained, no validation pass); ``adapt_student(student, teacher, untrained)``; ``student_from_config``;
  ``fits_to_teacher`` / ``fit_to_teacher`` (an embedding reduction);
- teacher signal: ``signals(vocab)`` + ``signal_settings()`` (the task's own cached arrays and what shapes them)
  and ``read_cached(soft_labels, idx, length)`` (the batch's view of them); ``on_policy()`` (GKD batches);
- KD term: ``shifts_labels`` (labels unshifted; the trainer counts labels[..., 1:]);
- metric: ``lower_is_better``, ``raw_metrics`` (not percentages), ``table_columns`` / ``table_for`` /
  ``headline_for`` / ``set_metric`` (per-set tables), ``versus_teacher`` (fidelity), ``reducer(reference)``
  (what evaluation keeps of a too-wide output), ``block_nll`` (a per-row loss for a sign test);
- serving: ``generation_report`` (tokens/s and samples side by side), ``model_settings`` (what serving repeats).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
from torch import nn

from distil.config import DataConfig, LossConfig


class Task(Protocol):
    """One task family. Implementations are plain classes registered in `distil.tasks.TASKS`."""

    name: ClassVar[str]
    """The `task:` value of a config."""

    # 1. data
    def prepare(self, cfg: DataConfig) -> Any:
        """Read ``cfg.source``, split it, and return the task's data (splits, label names, extra test sets)."""
        ...

    def tokenize(self, frame: Any, tokenizer: Any, max_length: int, name: str = "") -> Any:
        """A `datasets.Dataset` of one split (``name``) with input_ids, attention_mask, labels, idx, length."""
        ...

    def after_augment(self, frame: Any) -> Any:
        """The training frame plus TinyBERT's text variants (column augmented_from >= 0), made whole for the task."""
        ...

    # 2. model
    auto_model_class: ClassVar[type]
    """The Transformers class a checkpoint of this task loads with."""

    # 3. teacher signal
    signal_shapes: ClassVar[dict[str, tuple[str, ...]]]
    """Per-row arrays the teacher writes, by name, with symbolic per-row shapes (e.g. {"logits": ("C",)})."""
    per_token: ClassVar[bool]
    """True when the logits are per token ((L, C) per row): cached flat, padded to the batch per lookup."""
    token_loss: ClassVar[bool]
    """True when the KD term is a mean over labelled tokens (normalised by the accumulated batch's count); False
    when it is a mean over rows (examples, or QA's windows)."""

    # 4. KD term
    def kd_term(self, loss: LossConfig) -> nn.Module:
        """The module ``(student_logits, teacher_logits, labels) -> (loss, parts)`` of this task; with
        ``teacher_logits=None`` the loss on the labels alone (the teacher's and the baseline's training loss)."""
        ...

    # 5. metric
    best_metric: ClassVar[str]
    """The validation metric the best checkpoint is chosen by (greater is better)."""
    report_metrics: ClassVar[tuple[tuple[str, str], ...]]
    """(metric, column title) of the report's table, ``best_metric`` first."""
    paired_unit: ClassVar[str]
    """What the paired test counts (examples, sentences, ...), named in the report."""

    def gold(self, dataset: Any) -> np.ndarray:
        """The gold labels of a tokenised dataset, shaped as ``metrics`` reads them."""
        ...

    def metrics(self, predictions: np.ndarray, gold: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
        """Every number the report shows for one evaluation set, from raw model outputs and gold labels."""
        ...

    def correct(self, predictions: np.ndarray, gold: np.ndarray) -> np.ndarray:
        """Per unit of the paired test (an example, a sentence): whether the model got it right, (N,) bool."""
        ...

    # 6. serving
    def serve(self, predictor: Any, texts: Sequence, batch_size: int, max_length: int) -> list[dict]:
        """`distil predict`'s answer per input, from any runtime variant (`distil.deploy.serving.Predictor`)."""
        ...

    def test_evaluator(self, data_cfg: DataConfig, model_labels: list[str], batch_size: int) -> tuple:
        """(a ``Predictor -> {metric: value, "test_rows"}`` function over the test split, "N test <units>"), with
        which `distil export` scores every exported variant."""
        ...

    def postprocess(self, logits: np.ndarray, labels: Sequence[str]) -> list[dict]:
        """One answer per input from raw outputs (for `distil predict` and `load_student(...).predict`)."""
        ...
