"""Extractive question answering (SQuAD): the answer is a span of the context; SQuAD exact match and F1.

Sections in the order of `distil.tasks.base.Task`: data -> model -> teacher signal -> KD term -> metric -> serving.
A span head's start and end logits travel as one (B, L, 2) tensor (`distil.models.inference.logits_of`), so the
teacher cache, padding, evaluation and export treat them like a tagger's per-token logits; windows, labels and
post-processing live in `distil.data.windows`.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoModelForQuestionAnswering

from distil.config import DataConfig, LossConfig
from distil.data.prepare import TaskData
from distil.data.squad import prepare_qa_data
from distil.data.windows import (
    END,
    START,
    SpanGold,
    answer_texts,
    best_spans,
    check_window_room,
    span_gold,
    tokenize_windows,
)
from distil.errors import DistilError
from distil.losses.logits import IGNORE_INDEX, as_constant, kd_objective, masked_mean

MASKED = -1e4
"""Logit given to positions outside the context (and [CLS]) before the softmax over positions: exp(-1e4 / T) is 0
in float32 for any T <= 100, so masked positions carry no probability and add nothing to the KL."""


class QuestionAnsweringTask:
    """(question, context) -> the answer's character span in the context (SQuAD v1.1: every question has one)."""

    name: ClassVar[str] = "question-answering"
    one_tokenizer: ClassVar[bool] = True
    """Teacher and student read the same windows, so they must share a tokenizer (windows are cut per tokenizer)."""

    def __init__(self, doc_stride: int = 128, max_question_length: int = 64, max_answer_length: int = 30,
                 max_length: int = 384):  # fmt: skip
        self.doc_stride, self.max_question_length, self.max_length = doc_stride, max_question_length, max_length
        self.max_answer_length = max_answer_length
        self.truncated: dict[str, int] = {}

    @classmethod
    def from_data_config(cls, cfg: DataConfig) -> QuestionAnsweringTask:
        return cls(cfg.doc_stride, cfg.max_question_length, cfg.max_answer_length, cfg.max_length)

    def model_settings(self) -> dict:
        """Saved in a model's config.json (``distil_qa``) so serving windows and picks spans as training did."""
        keys = ("doc_stride", "max_question_length", "max_answer_length", "max_length")
        return {"distil_qa": {k: getattr(self, k) for k in keys}}

    # 1. data ---------------------------------------------------------------------------------------------------
    def prepare(self, cfg: DataConfig) -> TaskData:
        """Questions with columns id, title, context, question (= text), answer_texts, answer_starts; split by
        article (`distil.data.squad`); the window settings are checked first."""
        check_window_room(cfg.max_length, cfg.doc_stride, cfg.max_question_length)
        return prepare_qa_data(cfg)

    def tokenize(self, frame, tokenizer, max_length: int, name: str = ""):
        """Windows of each question (`distil.data.windows.tokenize_windows`); counts questions cut to
        max_question_length."""
        from datasets import Dataset

        columns, cut = tokenize_windows(frame, tokenizer, max_length, self.doc_stride, self.max_question_length)
        self.truncated[name] = cut
        return Dataset.from_dict(columns)

    def after_augment(self, frame):
        """TinyBERT's variants vary the question (the ``text`` column); the context and answer offsets stay valid."""
        return frame.assign(question=frame["text"])

    # 2. model --------------------------------------------------------------------------------------------------
    auto_model_class: ClassVar[type] = AutoModelForQuestionAnswering

    # 3. teacher signal -----------------------------------------------------------------------------------------
    signal_shapes: ClassVar[dict[str, tuple[str, ...]]] = {"logits": ("L", "C")}  # C = 2: start, end
    per_token: ClassVar[bool] = True
    token_loss: ClassVar[bool] = False

    # 4. KD term ------------------------------------------------------------------------------------------------
    def kd_term(self, loss: LossConfig) -> nn.Module:
        """alpha * CE + (1 - alpha) * T^2 * KL on the start and on the end distributions over the window's context
        tokens (and [CLS]), averaged (docs/losses.md)."""
        return SpanKDLoss(loss.alpha, loss.kd_temperature, loss.soft_loss)

    # 5. metric -------------------------------------------------------------------------------------------------
    best_metric: ClassVar[str] = "f1"
    report_metrics: ClassVar[tuple[tuple[str, str], ...]] = (("f1", "F1"), ("exact_match", "EM"))
    paired_unit: ClassVar[str] = "questions (exact match)"

    def gold(self, dataset) -> SpanGold:
        """Windows' labels, offsets and examples, with each question's context and gold answers."""
        return span_gold(dataset)

    def metrics(self, predictions: np.ndarray, gold: SpanGold, label_names: Sequence[str] | None = None) -> dict:
        """SQuAD v1.1 exact match and F1 (fractions) of the best span per question over its windows."""
        if not isinstance(gold, SpanGold):
            raise DistilError(
                "question answering scores need the windows' offsets and answers: pass task.gold(dataset) (the "
                "Trainer: compute_metrics=metrics_for(task, dataset=eval_dataset)), not bare label ids"
            )
        predicted = self.answers(predictions, gold)
        scores = [squad_scores(p, g) for p, g in zip(predicted, gold.answers)]
        return {
            "f1": float(np.mean([f for _, f in scores])) if scores else 0.0,
            "exact_match": float(np.mean([e for e, _ in scores])) if scores else 0.0,
        }

    def correct(self, predictions: np.ndarray, gold: SpanGold) -> np.ndarray:
        """(E,) bool per question: the answer matches a gold answer exactly (after SQuAD normalisation)."""
        predicted = self.answers(predictions, gold)
        return np.asarray([squad_scores(p, g)[0] == 1.0 for p, g in zip(predicted, gold.answers)], dtype=bool)

    def answers(self, predictions: np.ndarray, gold: SpanGold) -> list[str]:
        """The best answer text per question (``predictions``: (N, L, 2) logits of the windows)."""
        spans = best_spans(np.asarray(predictions), gold.offsets, gold.example, len(gold), self.max_answer_length)
        return answer_texts(spans, gold.contexts)

    # 6. serving ------------------------------------------------------------------------------------------------
    def serve(self, predictor, texts, batch_size: int, max_length: int) -> list[dict]:
        """{"answer", "start", "end", "score"} per (question, context) pair or {"question", "context"} dict: the
        best span over the context's windows, with character offsets into the context; score = P(start) x P(end)
        in its window."""
        import pandas as pd

        pairs = _question_context_pairs(texts)
        max_length = max_length or self.max_length
        if predictor.max_positions:
            max_length = min(max_length, predictor.max_positions)
        frame = pd.DataFrame({"question": [q for q, _ in pairs], "context": [c for _, c in pairs]})
        columns, _ = tokenize_windows(frame, predictor.tokenizer, max_length, self.doc_stride,
                                      self.max_question_length)  # fmt: skip
        logits = predictor.token_logits(columns, batch_size=batch_size)  # (N windows, Lmax, 2)
        gold = span_gold(columns)
        spans = best_spans(logits, gold.offsets, gold.example, len(pairs), self.max_answer_length)
        return [
            {"answer": text, "start": s["start"], "end": s["end"], "score": s["probability"]}
            for text, s in zip(answer_texts(spans, gold.contexts), spans)
        ]

    def test_evaluator(self, data_cfg: DataConfig, model_labels: list[str], batch_size: int) -> tuple:
        """(``Predictor -> {"f1", "exact_match", "test_rows"}``, "N test questions"): SQuAD EM/F1 of any exported
        variant on the test questions, windowed as in training."""
        task = QuestionAnsweringTask.from_data_config(data_cfg)
        test = task.prepare(data_cfg).splits["test"]

        def evaluate(predictor) -> dict:
            columns, _ = tokenize_windows(test, predictor.tokenizer, data_cfg.max_length, task.doc_stride,
                                          task.max_question_length)  # fmt: skip
            logits = predictor.token_logits(columns, batch_size=batch_size)  # (N, Lmax, 2)
            return {**task.metrics(logits, span_gold(columns)), "test_rows": len(test)}

        return evaluate, f"{len(test)} test questions (SQuAD EM/F1)"

    def postprocess(self, logits: np.ndarray, labels: Sequence[str]) -> list[dict]:
        """Per window of ``logits`` (N, L, 2): the best (start, end) token pair of at most max_answer_length tokens
        over all its positions (without offsets there is no text: `serve` gives answers)."""
        logits = np.asarray(logits)
        positions = np.arange(logits.shape[1])
        offsets = np.stack([positions, positions + 1], -1)[None].repeat(len(logits), 0)  # token i: "chars" i..i+1
        spans = best_spans(logits, offsets, np.arange(len(logits)), len(logits), self.max_answer_length)
        return [
            {
                "start_token": s["start"],
                "end_token": s["end"] - 1 if s["start"] >= 0 else -1,
                "score": s["probability"],
            }
            for s in spans
        ]


def _question_context_pairs(texts) -> list[tuple[str, str]]:
    """(question, context) pairs from tuples or {"question", "context"} dicts; one clear line otherwise."""
    if isinstance(texts, (str, dict)) or not isinstance(texts, Sequence):
        raise DistilError("texts: a QA model reads a list of (question, context) pairs or {question, context} dicts")
    pairs = []
    for i, item in enumerate(texts):
        if isinstance(item, dict):
            item = (item.get("question"), item.get("context"))
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            raise DistilError(f"texts[{i}]: got {item!r}; expected a (question, context) pair of strings")
        if not item[1].strip() or not item[0].strip():
            raise DistilError(f"texts[{i}]: the question or the context is empty; give both")
        pairs.append((item[0], item[1]))
    return pairs


# ---------------------------------------------------------------------------------------------- the KD term


def span_targets(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(start (B,), end (B,), mask (B, L) bool) from window labels: the positions whose START/END bit is set and
    the positions a span may take (context tokens and [CLS])."""
    mask = labels != IGNORE_INDEX
    bits = torch.where(mask, labels, torch.zeros_like(labels))
    start = ((bits & START) > 0).int().argmax(-1)
    end = ((bits & END) > 0).int().argmax(-1)
    return start, end, mask


class SpanKDLoss(nn.Module):
    """KD for span extraction: the KD objective on the start and on the end distributions, averaged.

    Each distribution runs over the positions of one window: the student's and the teacher's logits outside the
    context (question, separators, padding) are set to -1e4 before the softmax, as TextBrewer does for CMRC 2018, so
    the KL compares the two models only where an answer can be; [CLS] stays (a window without the answer points
    there). DistilBERT's SQuAD script masks nothing; masking keeps the teacher's mass on question tokens, which the
    student never predicts at inference, out of the target (docs/losses.md).

    Forward:
        student_logits (B, L, 2), teacher_logits (B, L, 2) or None, labels (B, L) (`distil.data.windows`)
        -> ``(total, {"ce": ..., "kd": ...})``, each the mean of its start and end parts; means over windows.
    """

    def __init__(self, alpha: float, kd_temperature: float, soft_loss: str = "kl"):
        super().__init__()
        self.alpha, self.kd_temperature, self.soft_loss = float(alpha), float(kd_temperature), soft_loss

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, num_items: int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if student_logits.dim() != 3 or student_logits.shape[-1] != 2:
            raise DistilError(f"span KD: logits have shape {tuple(student_logits.shape)}; expected (B, L, 2)")
        start, end, mask = span_targets(labels)
        totals, parts = [], collections.defaultdict(list)
        for k, target in ((0, start), (1, end)):
            student = student_logits[..., k].float().masked_fill(~mask, MASKED)  # (B, L)
            teacher = None if teacher_logits is None else teacher_logits[..., k].float().masked_fill(~mask, MASKED)
            if self.soft_loss == "mse" and teacher is not None:  # squared error averaged over the context only
                _, part = kd_objective(student, None, target, 1.0, self.kd_temperature)
                part["kd"] = masked_mean((student - as_constant(teacher)).pow(2), mask)
                total = self.alpha * part["ce"] + (1 - self.alpha) * part["kd"]
            else:
                total, part = kd_objective(student, teacher, target, self.alpha, self.kd_temperature, self.soft_loss)
            totals.append(total)
            for name, value in part.items():
                parts[name].append(value)
        return (totals[0] + totals[1]) / 2, {name: (v[0] + v[1]) / 2 for name, v in parts.items()}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, kd_temperature={self.kd_temperature}, soft_loss={self.soft_loss!r}"


# ---------------------------------------------------------------------------------------------- SQuAD metric


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(prediction: str, gold_answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the maximum over the gold answers, as the official v1.1 script scores."""
    if not gold_answers:
        return 0.0, 0.0
    return max(_exact(prediction, g) for g in gold_answers), max(_f1(prediction, g) for g in gold_answers)


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)
