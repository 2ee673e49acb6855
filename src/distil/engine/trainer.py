"""The training loop: an HF Trainer subclass that asks a Distiller for the loss.

The Trainer brings mixed precision, gradient accumulation, checkpoints and resume, logging (TensorBoard) and
multi-process launch; this module adds only what is distillation. A `Distiller` is composed, not inherited:
it holds the teacher's soft labels (or the live teacher when a loss needs more than logits) and the loss terms.
The same trainer fine-tunes a teacher or trains a baseline student: with no distiller the loss is plain CE.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

from distil.config import LossConfig, TrainConfig
from distil.engine import processes
from distil.engine.distiller import Distiller, logits_of, split_inputs
from distil.errors import DistilError
from distil.tasks import ClassificationTask, Task


class EpochLengthGroupedSampler(Sampler):
    """Length-grouped order that depends only on (seed, epoch), so a resumed run sees the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


class DistillationTrainer(Trainer):
    """Trainer whose loss comes from a Distiller (or plain CE without one); logs each loss part."""

    def __init__(
        self,
        *args,
        distiller: Distiller | None = None,
        group_by_length: bool = True,
        task: Task | None = None,
        **kwargs,
    ):
        task = task or ClassificationTask()
        kwargs.setdefault("compute_metrics", metrics_for(task))  # best-on-validation is chosen by its metric
        super().__init__(*args, **kwargs)
        if distiller is not None:  # the teacher and the trainable loss modules (projections) follow the student
            distiller.to(self.args.device)
        self.distiller = distiller
        trainable = [p for p in distiller.parameters() if p.requires_grad] if distiller is not None else []
        if trainable:  # the Trainer zeroes only the student's gradients after a step; the projections are outside it
            self.add_callback(_ClearGradients(trainable))
        self.group_by_length = group_by_length
        # Without a distiller (the teacher, the baseline) the loss is the task's own on the labels alone.
        self.label_loss = task.kd_term(LossConfig(alpha=1.0))
        # A per-example loss is a per-batch mean: the Trainer divides it by the accumulation steps. A per-token loss
        # is normalised by the labelled tokens of the whole accumulated batch (num_items_in_batch), which the
        # Trainer counts only when the model "accepts loss kwargs", and then does not divide again.
        self.per_token = task.token_loss
        self.model_accepts_loss_kwargs = self.per_token
        if getattr(task, "shifts_labels", False):  # count labels[..., 1:] whatever the model class (GPT-2 too)
            self._loss_shifts_labels = True
        self._parts: dict[str, list[float]] = defaultdict(list)

    def create_optimizer(self, *args, **kwargs):
        """The student's AdamW, plus the distiller's own trainable parameters (projections) when it has any."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = [p for p in self.distiller.parameters() if p.requires_grad] if self.distiller is not None else []
        if created and extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_length and "length" in dataset.column_names:
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return EpochLengthGroupedSampler(dataset["length"], size, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        idx = inputs.pop("idx", None)
        labels = inputs.pop("labels", None)
        if self.distiller is not None and model.training:
            # Accelerate autocasts only the student's forward; the live teacher (and feature recomputation)
            # should run in the same precision, so the whole distiller step goes under the same autocast.
            with self.accelerator.autocast():
                loss, parts, logits = self.distiller.compute(model, inputs, labels, idx, **_items(num_items_in_batch))
            if self.per_token and not self.distiller.normalises_by_items:
                loss = loss / self.current_gradient_accumulation_steps  # the Trainer does not, for per-token runs
        else:
            logits = logits_of(model(**split_inputs(inputs)[0]))  # (B, C), per token (B, L, C), spans (B, L, 2)
            if self.per_token:  # the accumulated batch's per-token mean in training
                items = num_items_in_batch if model.training else None
                loss, parts = self.label_loss(logits.float(), None, labels, num_items=items)
            else:
                loss, parts = self.label_loss(logits.float(), None, labels)
        by_items = self.distiller is None or self.distiller.normalises_by_items  # divided by num_items_in_batch
        counted_everywhere = num_items_in_batch is not None and self.args.average_tokens_across_devices
        if self.per_token and model.training and by_items and counted_everywhere:
            # num_items_in_batch counts the tokens of every process's batch; DDP then averages the gradients over
            # the processes, which this undoes (as Trainer.compute_loss does for models that take loss kwargs).
            loss = loss * self.accelerator.num_processes
        if not torch.isfinite(loss):
            raise DistilError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch or 0:.2f}; "
                f"parts: {', '.join(f'{k}={v.item():.4g}' for k, v in parts.items())}); lower the learning rate or "
                f"check the data and teacher"
            )
        if model.training:
            for name, value in parts.items():
                self._parts[name].append(float(value.detach()))
        if return_outputs:
            return loss, {"loss": loss, "logits": logits}
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._parts:
            for name, values in self._parts.items():
                logs[f"loss_{name}"] = round(float(np.mean(values)), 6)
            self._parts.clear()
        super().log(logs, *args, **kwargs)


class _ClearGradients(TrainerCallback):
    """Clears the gradients of parameters the Trainer's own ``model.zero_grad()`` does not reach, after each step."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params

    def on_step_end(self, args, state, control, **kwargs):
        for p in self.params:
            p.grad = None


def _items(num_items_in_batch) -> dict:
    """``num_items`` for a distiller's compute when the trainer counted the labelled tokens."""
    return {} if num_items_in_batch is None else {"num_items": int(num_items_in_batch)}


def metrics_for(task: Task, label_names=None, dataset=None) -> Callable[[EvalPrediction], dict[str, float]]:
    """The Trainer's ``compute_metrics`` for ``task``: its metrics of the raw predictions on validation.

    With ``dataset`` (the evaluation dataset, in the Trainer's row order) the gold side is ``task.gold(dataset)``,
    read once: what a task needs beyond the label ids (question answering: the windows' examples, offsets and
    answer texts); without it, the label ids the Trainer collected.
    """
    gold: list = []

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions = eval_pred.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if dataset is None:
            return task.metrics(np.asarray(predictions), np.asarray(eval_pred.label_ids), label_names)
        if not gold:
            gold.append(task.gold(dataset))
        return task.metrics(np.asarray(predictions), gold[0], label_names)

    return compute


accuracy_metrics = metrics_for(ClassificationTask())
"""Classification's validation metrics (accuracy and macro-F1 of the argmax)."""


def training_arguments(
    cfg: TrainConfig,
    work_dir: Path,
    seed: int,
    num_train_rows: int,
    evaluate: bool = True,
    best_metric: str = "accuracy",
    lower_is_better: bool = False,
) -> TrainingArguments:
    """TrainingArguments for one stage: evaluate and checkpoint each epoch (or every save_steps), keep the best
    by the task's ``best_metric`` on validation.

    With ``evaluate=False`` (stages without a trained classifier: general or intermediate-layer distillation)
    there is no validation pass and the last weights are kept.
    """
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * processes.world()  # the global batch
    steps_per_epoch = math.ceil(num_train_rows / per_step)
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    strategy = "steps" if cfg.save_steps else "epoch"
    own = dict(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=int(round(cfg.warmup_ratio * total_steps)),
        lr_scheduler_type="linear",
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else 1e9,
        bf16=cfg.bf16,
        eval_strategy=strategy if evaluate else "no",
        save_strategy=strategy,
        eval_steps=cfg.save_steps or None,
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model=best_metric if evaluate else None,
        greater_is_better=(not lower_is_better) if evaluate else None,
        logging_strategy="steps",
        logging_steps=min(cfg.logging_steps, max(1, steps_per_epoch // 2)),  # short runs still get curves
        report_to=["tensorboard"],
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
    )
    return TrainingArguments(**{**own, **cfg.trainer_args})  # train.trainer_args last, as given
