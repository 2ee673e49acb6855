"""One distiller: the teacher signal (cached or live) and the task's KD term -> the loss of one batch.

The trainer asks a distiller for the loss; the distiller holds the teacher's cached outputs (or the live teacher)
and the task's KD term (`distil.tasks`). Recipes that distil inside the layers use
`distil.engine.feature_distiller.FeatureDistiller`, which adds the feature terms.
"""

from __future__ import annotations

import torch
from torch import nn

from distil.config import LossConfig
from distil.engine.teacher_cache import SoftLabels
from distil.models.inference import logits_of, split_inputs  # noqa: F401  (re-exported)
from distil.tasks import ClassificationTask, Task


class Distiller(nn.Module):
    """Teacher signal + loss terms -> the distillation loss of one batch.

    Args:
        loss: alpha, kd_temperature and the soft-loss kind (docs/losses.md).
        soft_labels: cached teacher logits for the training rows; when given, the teacher never runs.
        teacher: the frozen teacher, run live under inference_mode when ``soft_labels`` is None.
        task: whose KD term compares the logits (default: classification).
    """

    def __init__(
        self,
        loss: LossConfig,
        soft_labels: SoftLabels | None = None,
        teacher: nn.Module | None = None,
        task: Task | None = None,
    ):
        super().__init__()
        if soft_labels is None and teacher is None:
            raise ValueError("Distiller needs soft_labels or a teacher")
        self.loss_cfg = loss
        task = task or ClassificationTask()
        self.kd_term = task.kd_term(loss)
        self.per_token = task.per_token
        self.normalises_by_items = task.per_token
        self.soft_labels = soft_labels
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def teacher_logits(self, inputs: dict[str, torch.Tensor], idx: torch.Tensor | None) -> torch.Tensor:
        if self.soft_labels is not None:
            if idx is None:
                raise ValueError("cached soft labels need the batch's row indices ('idx')")
            if self.per_token:  # cropped (or zero-padded) to the batch's padded length
                return self.soft_labels.lookup(idx, length=inputs["input_ids"].shape[1])  # (B, L, C)
            return self.soft_labels.lookup(idx)  # (B, C)
        with torch.inference_mode():
            return logits_of(self.teacher(**inputs)).float()

    def forward(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor | None,
        inputs: dict[str, torch.Tensor],
        idx: torch.Tensor | None,
        num_items: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher = self.teacher_logits(inputs, idx).to(student_logits.device)  # (B, C) or (B, L, C)
        if self.per_token:  # normalised by the labelled tokens of the whole accumulated batch
            return self.kd_term(student_logits.float(), teacher, labels, num_items=num_items)
        return self.kd_term(student_logits.float(), teacher, labels)

    def compute(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
        idx: torch.Tensor | None,
        num_items: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Run the student on ``inputs`` and return (loss, parts, student logits).

        This is the one method the trainer calls; a distiller that needs the student's inner features
        (distil.engine.feature_distiller) wraps the student's forward here.
        """
        student_inputs, teacher_inputs = split_inputs(inputs)
        logits = logits_of(model(**student_inputs))  # (B, C) or (B, L, C)
        loss, parts = self(logits, labels, teacher_inputs, idx, num_items)
        return loss, parts, logits
