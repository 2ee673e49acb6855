"""Token classification (NER): per-token KD closed forms, entity-level metrics, serving, the LSTM tagger."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distil.config import LossConfig
from distil.data import PadCollator
from distil.engine.distiller import Distiller
from distil.models.lstm import LSTMClassifier, LSTMConfig
from distil.tasks import TokenClassificationTask, get_task, task_for_model
from distil.tasks.token_classification import TokenKDLoss, entities, pad_labels

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, 0, -100, -100]])  # [CLS], words, padding/continuations
    return s, t, labels


def test_identical_logits_give_no_soft_loss():
    s, _, labels = _batch()
    _, parts = TokenKDLoss(0.5, 2.0)(s, s.clone(), labels)
    assert parts["kd"].abs().item() < 1e-6


def test_kd_is_the_mean_over_labelled_tokens_of_t2_kl():
    s, t, labels = _batch()
    total, parts = TokenKDLoss(0.3, 2.0)(s, t, labels)
    keep = labels != -100  # (B, L): 3 labelled tokens
    kl = F.kl_div(F.log_softmax(s[keep] / 2, -1), F.softmax(t[keep] / 2, -1), reduction="batchmean") * 4
    ce = F.cross_entropy(s[keep], labels[keep])
    assert torch.allclose(parts["kd"], kl, atol=1e-6) and torch.allclose(parts["ce"], ce, atol=1e-6)
    assert torch.allclose(total, 0.3 * ce + 0.7 * kl, atol=1e-6)


def test_padding_and_ignored_positions_contribute_nothing():
    s, t, labels = _batch()
    s2, t2 = s.clone(), t.clone()
    s2[labels == -100] = 100.0 * torch.randn_like(s2[labels == -100])  # garbage where nothing is labelled
    t2[labels == -100] = -50.0
    a, _ = TokenKDLoss(0.5, 2.0)(s, t, labels)
    b, _ = TokenKDLoss(0.5, 2.0)(s2, t2, labels)
    assert torch.allclose(a, b)


def test_accumulation_gives_the_loss_of_one_big_batch():
    """Two micro-batches with different labelled-token counts, each normalised by the total, sum to the loss of the
    two as one batch; the gradient too."""
    s, t, labels = _batch(1)
    term = TokenKDLoss(0.5, 2.0)
    s.requires_grad_(True)
    whole, _ = term(s, t, labels)
    (g_whole,) = torch.autograd.grad(whole, s)
    n = int((labels != -100).sum())
    parts = [term(s[i : i + 1], t[i : i + 1], labels[i : i + 1], num_items=n)[0] for i in range(2)]
    (g_acc,) = torch.autograd.grad(sum(parts), s)
    assert torch.allclose(sum(parts), whole, atol=1e-6) and torch.allclose(g_acc, g_whole, atol=1e-6)
    naive = sum(term(s[i : i + 1], t[i : i + 1], labels[i : i + 1])[0] for i in range(2)) / 2
    assert not torch.allclose(naive, whole, atol=1e-4)  # the per-batch mean would not be invariant


def test_the_distiller_crops_cached_per_token_logits_to_the_batch():
    class Cached:
        def lookup(self, idx, length=None):
            full = torch.arange(2 * 6 * 5, dtype=torch.float32).view(2, 6, 5) / 60
            return full[idx, :length]

    d = Distiller(LossConfig(alpha=0.0, kd_temperature=1.0), soft_labels=Cached(), task=TokenClassificationTask())
    s, _, labels = _batch()
    inputs = {"input_ids": torch.ones(2, 4, dtype=torch.long)}
    loss, _ = d(s, labels, inputs, torch.tensor([0, 1]))
    expected, _ = TokenKDLoss(0.0, 1.0)(s, Cached().lookup(torch.tensor([0, 1]), 4), labels)
    assert torch.equal(loss, expected)


def test_entity_metrics_follow_conll_with_seqeval():
    task = get_task("token-classification")
    gold = np.array([[-100, 1, 2, 0, 3, -100], [-100, 3, 4, 0, -100, -100]])
    pred_ids = np.array([[0, 1, 2, 0, 0, 0], [0, 3, 0, 0, 0, 0]])  # PER right, LOC missed, LOC cut short
    logits = np.eye(5)[pred_ids] * 5.0  # (N, L, C)
    m = task.metrics(logits, gold, NAMES)
    # gold: PER(s1), LOC(s1), LOC(s2); predicted: PER(s1) right, LOC(s2) of one word: wrong span
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert m["f1_PER"] == pytest.approx(1.0) and m["f1_LOC"] == pytest.approx(0.0)
    assert m["token_accuracy"] == pytest.approx(5 / 7)
    assert task.correct(logits, gold).tolist() == [False, False]
    assert task.correct(np.eye(5)[np.where(gold < 0, 0, gold)] * 5.0, gold).tolist() == [True, True]


def test_entities_group_bio_tags_with_character_offsets():
    text = "Angela Merkel visited Paris"
    spans = [(0, 6), (7, 13), (14, 21), (22, 27)]
    out = entities(["B-PER", "I-PER", "O", "B-LOC"], [0.9, 0.7, 0.99, 0.8], spans, text)
    assert out == [
        {"type": "PER", "text": "Angela Merkel", "start": 0, "end": 13, "score": pytest.approx(0.8)},
        {"type": "LOC", "text": "Paris", "start": 22, "end": 27, "score": pytest.approx(0.8)},
    ]
    assert [e["type"] for e in entities(["I-LOC", "B-LOC", "I-PER"], [1, 1, 1], spans[:3], text)] == [
        "LOC",
        "LOC",
        "PER",
    ]  # I- without B- starts an entity (conlleval); a type change too


def test_collator_pads_per_token_labels_with_ignore_index():
    rows = [
        {"input_ids": [101, 5, 102], "attention_mask": [1, 1, 1], "labels": [-100, 1, -100], "idx": 0},
        {"input_ids": [101, 5, 6, 7, 102], "attention_mask": [1] * 5, "labels": [-100, 0, 3, 4, -100], "idx": 1},
    ]
    batch = PadCollator(0)(rows)
    assert batch["labels"].tolist() == [[-100, 1, -100, -100, -100], [-100, 0, 3, 4, -100]]
    assert pad_labels([[1], [2, 3]]).tolist() == [[1, -100], [2, 3]]


def test_lstm_tagger_gives_per_token_logits_and_serves_as_a_tagger():
    cfg = LSTMConfig(vocab_size=50, embedding_dim=8, hidden_size=6, num_labels=5, per_token=True)
    model = LSTMClassifier(cfg).eval()
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    out = model(ids, attention_mask=(ids != 0).long(), labels=torch.tensor([[0, 1, 2, -100], [3, 4, -100, -100]]))
    assert out.logits.shape == (2, 4, 5) and torch.isfinite(out.loss)
    assert isinstance(task_for_model({"distil_model": "lstm", "per_token": True}), TokenClassificationTask)
