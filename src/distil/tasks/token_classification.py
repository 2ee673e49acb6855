"""Token classification (named entities): one tag per word, BIO scheme, entity-level F1.

Sections in the order of `distil.tasks.base.Task`: data -> model -> teacher signal -> KD term -> metric -> serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoModelForTokenClassification

from distil.config import DataConfig, LossConfig
from distil.data.conll import prepare_token_data, tokenize_token_frame
from distil.data.prepare import TaskData
from distil.errors import DistilError
from distil.losses.logits import IGNORE_INDEX, kd_objective
from distil.tasks.classification import softmax


class TokenClassificationTask:
    """Words -> BIO tags (CoNLL-2003: PER, ORG, LOC, MISC). Labels sit on the first word piece of each word."""

    name: ClassVar[str] = "token-classification"

    def __init__(self, label_all_tokens: bool = False):
        self.label_all_tokens = label_all_tokens
        self.label_names: list[str] | None = None
        self.truncated: dict[str, int] = {}

    # 1. data ---------------------------------------------------------------------------------------------------
    def prepare(self, cfg: DataConfig) -> TaskData:
        """Sentences with columns tokens, tags (ids), text, line; tags repaired to IOB2 (see distil.data.conll)."""
        data = prepare_token_data(cfg)
        self.label_names = data.label_names  # label_all_tokens turns B-X into I-X on continuation pieces
        return data

    def tokenize(self, frame, tokenizer, max_length: int, name: str = ""):
        """Word pieces of each sentence with labels on first pieces (-100 elsewhere); counts truncated sentences."""
        from datasets import Dataset

        columns, truncated = tokenize_token_frame(
            frame, tokenizer, max_length, self.label_all_tokens, label_names=self.label_names
        )
        self.truncated[name] = truncated
        return Dataset.from_dict(columns)

    def after_augment(self, frame):
        """Rows of TinyBERT augmentation (`distil.data.augment`): a variant's words are its text split on spaces (a
        replaced word never holds a space, so the word count is the source sentence's) with the source's tags; the
        task-prediction stage trains variants on the teacher's soft labels (alpha 0), the tags only mark the first
        word pieces. A variant whose word count changed is dropped."""
        variant = frame["augmented_from"].to_numpy() >= 0 if "augmented_from" in frame else np.zeros(len(frame), bool)
        tokens = [
            text.split(" ") if v else list(words) for text, words, v in zip(frame["text"], frame["tokens"], variant)
        ]
        keep = np.array([len(t) == len(tags) for t, tags in zip(tokens, frame["tags"])], dtype=bool)
        out = frame.assign(tokens=tokens)[keep].reset_index(drop=True)
        out.attrs["dropped_variants"] = int((~keep).sum())
        return out

    # 2. model --------------------------------------------------------------------------------------------------
    auto_model_class: ClassVar[type] = AutoModelForTokenClassification

    # 3. teacher signal -----------------------------------------------------------------------------------------
    signal_shapes: ClassVar[dict[str, tuple[str, ...]]] = {"logits": ("L", "C")}
    per_token: ClassVar[bool] = True
    token_loss: ClassVar[bool] = True

    # 4. KD term ------------------------------------------------------------------------------------------------
    def kd_term(self, loss: LossConfig) -> nn.Module:
        """alpha * CE + (1 - alpha) * T^2 * KL per labelled token, averaged over labelled tokens (docs/losses.md)."""
        return TokenKDLoss(loss.alpha, loss.kd_temperature, loss.soft_loss)

    # 5. metric -------------------------------------------------------------------------------------------------
    best_metric: ClassVar[str] = "f1"
    report_metrics: ClassVar[tuple[tuple[str, str], ...]] = (
        ("f1", "entity F1"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("token_accuracy", "token acc"),
    )
    paired_unit: ClassVar[str] = "sentences (every entity exactly right)"

    def gold(self, dataset) -> np.ndarray:
        """Labels (N, Lmax) padded with -100."""
        return pad_labels(dataset["labels"])

    def metrics(self, predictions: np.ndarray, gold: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
        """Entity-level precision/recall/F1 (seqeval, CoNLL convention: exact span and type), overall and per
        type, and the accuracy over labelled tokens, of ``predictions`` (N, L, C) against ``gold`` (N, L)."""
        from seqeval.metrics import classification_report

        true, pred = tag_sequences(predictions, gold, label_names)
        report = classification_report(true, pred, output_dict=True, zero_division=0)
        labelled = gold != IGNORE_INDEX
        out = {
            "f1": float(report["micro avg"]["f1-score"]),
            "precision": float(report["micro avg"]["precision"]),
            "recall": float(report["micro avg"]["recall"]),
            "token_accuracy": float((np.asarray(predictions).argmax(-1) == gold)[labelled].mean()) if labelled.any()
            else 0.0,
        }  # fmt: skip
        for entity, row in report.items():
            if not entity.endswith(" avg"):
                out[f"f1_{entity}"] = float(row["f1-score"])
        return out

    def correct(self, predictions: np.ndarray, gold: np.ndarray) -> np.ndarray:
        """(N,) bool per sentence: every labelled token's tag is right (so its entities are exactly right)."""
        labelled = gold != IGNORE_INDEX
        right = (np.asarray(predictions).argmax(-1) == gold) | ~labelled  # (N, L)
        return right.all(-1)

    # 6. serving ------------------------------------------------------------------------------------------------
    def serve(self, predictor, texts, batch_size: int, max_length: int) -> list[dict]:
        """{"entities": [{"type", "text", "start", "end", "score"}, ...]} per text, with character offsets into it;
        each word's tag is read from its first word piece (`distil.deploy.serving.Predictor` runs any variant)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise DistilError("texts: a token classifier reads a list of single texts (wrap one text as [text])")
        max_length = max_length or 128
        if predictor.max_positions:
            max_length = min(max_length, predictor.max_positions)
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            enc = predictor.tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                                      return_offsets_mapping=True, return_tensors="np")  # fmt: skip
            logits = predictor.run_batch(predictor.model_inputs(enc))  # (B, T, C)
            for i, text in enumerate(chunk):
                word_ids, offsets = enc.word_ids(i), enc["offset_mapping"][i]  # (T,), (T, 2)
                words = word_predictions(logits[i], word_ids)  # [(word, probs (C,))] in order
                spans = [_word_span(word, word_ids, offsets) for word, _ in words]
                tags = [predictor.labels[int(p.argmax())] for _, p in words]
                out.append({"entities": entities(tags, [float(p.max()) for _, p in words], spans, text)})
        return out

    def test_evaluator(self, data_cfg: DataConfig, model_labels: list[str], batch_size: int) -> tuple:
        """(``Predictor -> {"f1", "precision", "recall", "token_accuracy", "test_rows"}``, "N test sentences"):
        entity-level F1 of any exported variant on the test sentences (word lists, first-word-piece labels).

        Raises:
            DistilError: the source's tags are not the model's.
        """
        data = self.prepare(data_cfg)
        test = data.splits["test"]
        if list(model_labels) != data.label_names:
            raise DistilError(
                f"eval source '{data_cfg.source}': its tags {data.label_names} are not the model's {model_labels} "
                "(config.json id2label); pass an eval source with the model's tags"
            )

        def evaluate(predictor) -> dict:
            columns, _ = tokenize_token_frame(test, predictor.tokenizer, data_cfg.max_length, label_names=model_labels)
            logits = predictor.token_logits(columns, batch_size=batch_size)  # (N, Lmax, C)
            metrics = self.metrics(logits, pad_labels(columns["labels"], logits.shape[1]), model_labels)
            keep = ("f1", "precision", "recall", "token_accuracy")
            return {**{k: metrics[k] for k in keep}, "test_rows": len(test)}

        return evaluate, f"{len(test)} test sentences (entity F1, seqeval)"

    def postprocess(self, logits: np.ndarray, labels: Sequence[str]) -> list[dict]:
        """Per row of ``logits`` (L, C): the tag and probability of each position (entities: `entities`)."""
        probs = softmax(np.asarray(logits))  # (L, C)
        return [{"tag": labels[k], "score": float(p[k])} for k, p in zip(probs.argmax(-1), probs)]


def _word_span(word: int, word_ids: Sequence[int | None], offsets: np.ndarray) -> tuple[int, int]:
    """Character (start, end) of a word: from its first word piece's start to its last piece's end."""
    positions = [i for i, w in enumerate(word_ids) if w == word]
    return int(offsets[positions[0]][0]), int(offsets[positions[-1]][1])


def pad_labels(rows: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
    """Ragged per-token labels as (N, length) int64, padded with -100."""
    length = length or max((len(r) for r in rows), default=0)
    out = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:length]
    return out


def tag_sequences(
    predictions: np.ndarray, gold: np.ndarray, label_names: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """(gold tags, predicted tags) per sentence over its labelled positions (first word pieces), as seqeval reads."""
    pred_ids = np.asarray(predictions).argmax(-1)  # (N, L)
    true, pred = [], []
    for p_row, g_row in zip(pred_ids, gold):
        keep = g_row != IGNORE_INDEX
        true.append([label_names[i] for i in g_row[keep]])
        pred.append([label_names[i] for i in p_row[keep]])
    return true, pred


class TokenKDLoss(nn.Module):
    """Per-token KD: ``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` over labelled tokens.

    Positions whose label is -100 (padding, [CLS]/[SEP], continuation word pieces) contribute nothing to either term.
    Both terms are means over the labelled tokens of the batch; with ``num_items`` (the labelled tokens of the whole
    accumulated batch) they are sums over this batch's labelled tokens divided by it, so gradient accumulation
    gives the loss of one big batch.

    Args:
        alpha: weight in [0, 1] of the hard-label cross-entropy.
        kd_temperature: T of the KL term (scaled by T^2).
        soft_loss: "kl" or "mse" (on raw logits).

    Forward:
        student_logits (B, L, C), teacher_logits (B, L, C) or None, labels (B, L) with -100 where ignored,
        num_items: optional int -> ``(total, {"ce": ..., "kd": ...})``.

    References:
        Hinton et al. 2015 (arXiv:1503.02531); TextBrewer's NER recipes (averaged over every non-pad token instead).
    """

    def __init__(self, alpha: float, kd_temperature: float, soft_loss: str = "kl"):
        super().__init__()
        self.alpha, self.kd_temperature, self.soft_loss = float(alpha), float(kd_temperature), soft_loss

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, num_items: int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        labelled = labels != IGNORE_INDEX  # (B, L)
        if not labelled.any():  # a micro-batch without a labelled token adds nothing (its CE mean would be NaN)
            zero = student_logits.float().sum() * 0.0
            return zero, {"ce": zero} if teacher_logits is None else {"ce": zero, "kd": zero}
        total, parts = kd_objective(
            student_logits, teacher_logits, labels, self.alpha, self.kd_temperature, self.soft_loss, mask=labelled
        )
        if num_items is not None:  # the batch's share of the accumulated batch's labelled tokens
            scale = labelled.sum().to(total.dtype) / max(int(num_items), 1)
            total = total * scale
        return total, parts

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, kd_temperature={self.kd_temperature}, soft_loss={self.soft_loss!r}"


def entities(tags: Sequence[str], scores: Sequence[float], spans: Sequence[tuple[int, int]], text: str) -> list[dict]:
    """Group word-level BIO tags into entities: {"type", "text", "start", "end", "score"} with character offsets
    into ``text``; the score is the mean probability of the entity's words."""
    out: list[dict] = []
    current: dict | None = None
    for tag, score, (start, end) in zip(tags, scores, spans):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        continues = current is not None and tag.startswith("I-") and kind == current["type"]
        if current is not None and not continues:
            out.append(current)
            current = None
        if kind is not None and not continues:
            current = {"type": kind, "start": start, "end": end, "scores": [score]}
        elif continues:
            current["end"] = end
            current["scores"].append(score)
    if current is not None:
        out.append(current)
    return [
        {"type": e["type"], "text": text[e["start"] : e["end"]], "start": e["start"], "end": e["end"],
         "score": float(np.mean(e["scores"]))}
        for e in out
    ]  # fmt: skip


def word_predictions(logits: Tensor | np.ndarray, word_ids: Sequence[int | None]) -> list[tuple[int, np.ndarray]]:
    """(word index, class probabilities) of the first word piece of each word, from one row of logits (L, C)."""
    probs = softmax(np.asarray(logits if not isinstance(logits, torch.Tensor) else logits.float().numpy()))
    seen, out = set(), []
    for pos, word in enumerate(word_ids):
        if word is not None and word not in seen:
            seen.add(word)
            out.append((word, probs[pos]))
    return out
