"""Sequence classification (single texts and text pairs): one label per example.

Sections in the order of `distil.tasks.base.Task`: data -> model -> teacher signal -> KD term -> metric -> serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from torch import nn
from transformers import AutoModelForSequenceClassification

from distil.config import DataConfig, LossConfig
from distil.data.prepare import TaskData, prepare_data, to_dataset
from distil.errors import DistilError
from distil.losses.logits import KDLoss


class ClassificationTask:
    """Today's task: texts (or text pairs) -> one of C labels."""

    name: ClassVar[str] = "classification"

    # 1. data ---------------------------------------------------------------------------------------------------
    def prepare(self, cfg: DataConfig) -> TaskData:
        """Splits with columns text, [text_pair], label (id); stratified when the source has no splits."""
        return prepare_data(cfg)

    def tokenize(self, frame, tokenizer, max_length: int, name: str = ""):
        """input_ids, attention_mask, [token_type_ids], labels, idx, length; unpadded (the collator pads)."""
        return to_dataset(frame, tokenizer, max_length)

    def after_augment(self, frame):
        """Augmented rows as they are: a variant is a text with its source's label."""
        return frame

    # 2. model --------------------------------------------------------------------------------------------------
    auto_model_class: ClassVar[type] = AutoModelForSequenceClassification

    # 3. teacher signal -----------------------------------------------------------------------------------------
    signal_shapes: ClassVar[dict[str, tuple[str, ...]]] = {"logits": ("C",)}
    per_token: ClassVar[bool] = False
    token_loss: ClassVar[bool] = False

    # 4. KD term ------------------------------------------------------------------------------------------------
    def kd_term(self, loss: LossConfig) -> nn.Module:
        """alpha * CE(hard labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T), batch mean (docs/losses.md)."""
        return KDLoss(loss.alpha, loss.kd_temperature, loss.soft_loss)

    # 5. metric -------------------------------------------------------------------------------------------------
    best_metric: ClassVar[str] = "accuracy"
    report_metrics: ClassVar[tuple[tuple[str, str], ...]] = (("accuracy", "test acc"), ("macro_f1", "macro-F1"))
    """(metric, column title) of the report's table, the headline (best_metric) first."""
    paired_unit: ClassVar[str] = "examples"
    """What the paired test counts."""

    def gold(self, dataset) -> np.ndarray:
        """The gold labels (N,) of a tokenised dataset."""
        return np.asarray(dataset["labels"])

    def metrics(
        self, predictions: np.ndarray, gold: np.ndarray, label_names: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Accuracy and macro-F1 of the argmax of ``predictions`` (N, C) against ``gold`` (N,)."""
        num_labels = len(label_names) if label_names else None
        return classification_metrics(np.asarray(predictions).argmax(-1), np.asarray(gold), num_labels)

    def correct(self, predictions: np.ndarray, gold: np.ndarray) -> np.ndarray:
        """(N,) bool: the argmax is the gold label (the paired test's unit is one example)."""
        return np.asarray(predictions).argmax(-1) == np.asarray(gold)

    # 6. serving ------------------------------------------------------------------------------------------------
    def serve(self, predictor, texts, batch_size: int, max_length: int) -> list[dict]:
        """`distil predict`'s answer per text (or text pair), from any variant (`distil.deploy.serving.Predictor`)."""
        return self.postprocess(
            predictor.logits(texts, batch_size=batch_size, max_length=max_length or 128), predictor.labels
        )

    def test_evaluator(self, data_cfg: DataConfig, model_labels: list[str], batch_size: int) -> tuple:
        """(``Predictor -> {"accuracy", "macro_f1", "test_rows"}``, "N test rows") over ``data_cfg``'s test split,
        for scoring every exported variant (`distil export`).

        Raises:
            DistilError: the source has no test rows, or its labels are not the model's.
        """
        data = self.prepare(data_cfg)
        test = data.splits.get("test")
        if test is None or len(test) == 0:
            raise DistilError(f"eval source '{data_cfg.source}' has no test rows; set data.test_fraction > 0")
        to_model = label_ids(data.label_names, model_labels, f"eval source '{data_cfg.source}'")
        gold = to_model[test["label"].to_numpy()]  # (N,) model class ids
        texts = list(zip(test["text"], test["text_pair"])) if "text_pair" in test else test["text"].tolist()

        def evaluate(predictor) -> dict:
            logits = predictor.logits(texts, batch_size=batch_size, max_length=data_cfg.max_length)  # (N, C)
            metrics = classification_metrics(logits.argmax(-1), gold, num_labels=len(model_labels))
            return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "test_rows": len(gold)}

        return evaluate, f"{len(gold)} test rows"

    def postprocess(self, logits: np.ndarray, labels: Sequence[str]) -> list[dict]:
        """{"label": top class, "score": its probability, "probs": {label: p}} per row of ``logits`` (N, C)."""
        probs = softmax(np.asarray(logits))  # (N, C)
        top = probs.argmax(-1)  # (N,)
        return [
            {"label": labels[k], "score": float(p[k]), "probs": {name: float(v) for name, v in zip(labels, p)}}
            for k, p in zip(top, probs)
        ]


def label_ids(data_labels: list[str], model_labels: list[str], where: str) -> np.ndarray:
    """For each data label id, the model's class id of the same name (identity when the model has no names)."""
    if [str(x) for x in model_labels] == [f"LABEL_{i}" for i in range(len(model_labels))]:
        if len(model_labels) != len(data_labels):
            raise DistilError(
                f"{where}: the data has {len(data_labels)} labels {data_labels}, the model "
                f"{len(model_labels)} classes; evaluate it on data with the labels it was trained on"
            )
        return np.arange(len(data_labels))
    missing = [name for name in data_labels if name not in model_labels]
    if missing:
        raise DistilError(
            f"{where}: data label(s) {missing} are not among the model's labels {model_labels} "
            f"(config.json id2label); pass an eval source with the model's labels"
        )
    return np.asarray([model_labels.index(name) for name in data_labels])


def classification_metrics(pred: np.ndarray, gold: np.ndarray, num_labels: int | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes that occur in ``pred`` or ``gold``) of class ids (N,)."""
    num_labels = num_labels or int(max(pred.max(initial=0), gold.max(initial=0)) + 1)
    f1s = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        if tp + fp + fn > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float(np.mean(pred == gold)) if len(gold) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) scores, stable for large values."""
    z = logits - logits.max(-1, keepdims=True)  # (N, C)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)
