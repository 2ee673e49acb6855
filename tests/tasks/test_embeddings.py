"""The embeddings task's KD terms and metrics, against closed forms and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distil.errors import DistilError
from distil.options import EmbeddingConfig
from distil.tasks.embeddings import (
    EmbeddingGold,
    EmbeddingKDLoss,
    EmbeddingTask,
    neighbour_overlap,
    retrieval_metrics,
    sts_metrics,
)


def test_every_term_is_zero_for_identical_embeddings():
    t = torch.randn(6, 10)
    total, parts = EmbeddingKDLoss(1.0, 1.0, 1.0)(t.clone(), t)
    assert set(parts) == {"mse", "cosine", "relation"}
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_mse_and_cosine_closed_forms():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    total, parts = EmbeddingKDLoss(2.0, 3.0, 0.0)(s, t)
    assert parts["mse"].item() == pytest.approx((1 + 1 + 0 + 1) / 4)  # mean over the 4 elements
    assert parts["cosine"].item() == pytest.approx((1 - 0.0 + 1 - 1.0) / 2)  # cos = 0 and 1
    assert total.item() == pytest.approx(2 * 0.75 + 3 * 0.5)


def test_the_relation_term_ignores_rotations_and_widths():
    torch.manual_seed(0)
    s, t = torch.randn(8, 16), torch.randn(8, 32)
    q, _ = torch.linalg.qr(torch.randn(16, 16))  # an orthogonal matrix
    loss = EmbeddingKDLoss(0.0, 0.0, 1.0)
    base, parts = loss(s, t)
    rotated, _ = loss(s @ q, t)
    assert set(parts) == {"relation"} and base.item() > 0.01
    assert rotated.item() == pytest.approx(base.item(), rel=1e-5)
    sn, tn = torch.nn.functional.normalize(s, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    assert base.item() == pytest.approx(((sn @ sn.T - tn @ tn.T) ** 2).mean().item(), rel=1e-5)


def test_mse_across_widths_is_refused_in_one_line():
    with pytest.raises(DistilError, match=r"\(4, 16\), the teacher's \(4, 32\); MSE and cosine need one size"):
        EmbeddingKDLoss(1.0)(torch.zeros(4, 16), torch.zeros(4, 32))
    with pytest.raises(DistilError, match="learns only from a teacher"):
        EmbeddingKDLoss(1.0)(torch.zeros(4, 16), None)


def test_sts_correlations_on_hand_made_ratings():
    angles = np.array([0.0, 0.3, 1.0, 1.5])
    emb = np.stack([np.cos(angles), np.sin(angles)], 1)  # cosine of a pair = cos(angle difference)
    diff = np.abs(angles[:, None] - angles[None, :])
    out = sts_metrics(emb, 1.0 - diff / 2)  # ratings fall as the angle grows: the same order
    assert out["spearman"] == pytest.approx(1.0) and out["pairs"] == 6
    assert sts_metrics(emb, diff)["spearman"] == pytest.approx(-1.0)


def _retrieval_case():
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    queries = np.array([[0.9, 0.1], [0.6, 0.8], [-1.0, 0.0]])  # relevant: d0 (rank 1), d1 (rank 2), d2 (rank 2)
    gold = EmbeddingGold(np.array(["doc"] * 3 + ["query"] * 3), np.array(["d0", "d1", "d2", "d0", "d1", "d2"]))
    return np.vstack([docs, queries]), gold


def test_retrieval_metrics_on_a_hand_made_case():
    emb, gold = _retrieval_case()
    out = retrieval_metrics(emb, gold)
    # query 3 ranks: d1 (0.0) > ... cos(-1,0 vs d2) = -0.707, vs d0 = -1: d2 is 2nd
    assert out["recall_at_1"] == pytest.approx(1 / 3)
    assert out["recall_at_10"] == pytest.approx(1.0)
    assert out["mrr_at_10"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert out["ndcg_at_10"] == pytest.approx((1 + 2 / np.log2(3)) / 3)
    assert out["queries"] == 3 and out["documents"] == 3
    task = EmbeddingTask()
    assert task.correct(emb, gold).tolist() == [True, True, True]
    assert task.metrics(emb, gold)["recall_at_1"] == pytest.approx(1 / 3)


def test_fidelity_to_the_teacher():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(30, 8))
    gold = EmbeddingGold(np.array(["text"] * 30), np.array([""] * 30))
    task = EmbeddingTask()
    same = task.versus_teacher(t, t, gold)
    assert same == {"overlap_at_10": pytest.approx(1.0), "cosine_to_teacher": pytest.approx(1.0)}
    other = task.versus_teacher(rng.normal(size=(30, 8)), t, gold)
    assert other["overlap_at_10"] < 0.7 and abs(other["cosine_to_teacher"]) < 0.3
    wide = task.versus_teacher(rng.normal(size=(30, 4)), t, gold)
    assert set(wide) == {"overlap_at_10"}  # no cosine across sizes
    assert task.correct(t, gold) is None and task.metrics(t, gold) == {"texts": 30.0}
    assert neighbour_overlap(t, t * 3.0, gold, k=5) == pytest.approx(1.0)  # scale does not move neighbours


def test_options_refuse_no_kd_term():
    with pytest.raises(Exception, match="embedding.mse_weight"):
        from distil.config import load_config

        load_config(None, {"embedding": {"mse_weight": 0.0}})
    assert EmbeddingConfig(mse_weight=0.0, relation_weight=1.0).relation_weight == 1.0


def test_a_reduced_student_outputs_the_teachers_top_principal_directions(capsys):
    from conftest import tiny_sentence_encoder

    teacher_emb = np.random.default_rng(0).normal(size=(400, 32)) * 8 * 0.5 ** np.arange(32)  # halving variances
    task = EmbeddingTask(EmbeddingConfig(dim=4))
    student = tiny_sentence_encoder()
    task.adapt_student(student, tiny_sentence_encoder(seed=1))
    ids = torch.tensor([[101, 2023, 2003, 102]])
    before = student(ids).logits  # (1, 32), normalised
    assert task.fits_to_teacher
    task.fit_to_teacher(student, teacher_emb)
    assert student.embedding_dim == 4 and task.components.shape == (4, 32)
    assert "reduced 32 -> 4" in capsys.readouterr().out
    # the top directions of a diagonal-variance cloud are (close to) the first axes
    assert np.allclose(np.abs(task.components.numpy()[:, :4]), np.eye(4), atol=0.15)
    after = student(ids).logits
    expected = torch.nn.functional.normalize(before @ task.components.T, dim=-1)  # project, then re-normalise
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-4)
    loss = task.kd_term(None)
    t = torch.tensor(teacher_emb[:3], dtype=torch.float32)
    s = torch.nn.functional.normalize(t @ task.components.T, dim=-1)
    assert loss(s, t)[0].item() == pytest.approx(0.0, abs=1e-6)  # targets are projected the same way
    with pytest.raises(DistilError, match="'embedding.dim': got 40; the teacher's embeddings have 32"):
        EmbeddingTask(EmbeddingConfig(dim=40)).fit_to_teacher(tiny_sentence_encoder(), teacher_emb)


def test_a_new_narrow_student_gets_a_projection_to_the_teachers_size(capsys):
    from conftest import tiny_sentence_encoder

    from distil.models.sentence import SentenceEncoder
    from distil.models.student import student_from_config

    teacher = tiny_sentence_encoder(pooling="cls")
    student = student_from_config(teacher.config, num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                                  intermediate_size=32, model_class=SentenceEncoder)  # fmt: skip
    assert isinstance(student, SentenceEncoder) and student.embedding_dim == 16
    assert student.settings["pooling"] == "cls"  # the teacher's pooling, from its config
    EmbeddingTask().adapt_student(student, teacher)
    assert student.embedding_dim == 32 and "projection 16 -> 32" in capsys.readouterr().out
    assert student(torch.tensor([[101, 2023, 102]])).logits.shape == (1, 32)
    relation_only = tiny_sentence_encoder()
    relation_only.set_projection(8)
    EmbeddingTask(EmbeddingConfig(mse_weight=0.0, relation_weight=1.0)).adapt_student(relation_only, teacher)
    assert relation_only.embedding_dim == 8  # the relation term compares across sizes: no projection added


def test_feature_terms_run_on_sentence_encoders():
    from conftest import tiny_sentence_encoder

    from distil.config import LossConfig
    from distil.engine.distiller import Distiller
    from distil.models.student import student_from_teacher

    teacher = tiny_sentence_encoder()
    student = student_from_teacher(teacher, [0, 2])
    loss_cfg = LossConfig(hidden_weight=1.0, attention_weight=1.0)
    distiller = Distiller(loss_cfg, teacher=teacher, student=student, task=EmbeddingTask())
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 102], [101, 2009, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}  # fmt: skip
    total, parts, logits = distiller.compute(student, batch, None, None)
    assert {"mse", "hidden", "attention"} <= set(parts) and torch.isfinite(total) and logits.shape == (2, 32)
    total.backward()
    assert student.encoder.encoder.layer[0].attention.self.query.weight.grad is not None


def test_the_headline_falls_back_to_the_sets_a_run_has():
    task = EmbeddingTask()
    assert task.headline_for(["test", "lee", "squad"]) == ("lee", "spearman")
    assert task.headline_for(["test", "bbc", "squad"]) == ("squad", "recall_at_10")
    assert task.headline_for(["test"]) == ("test", "overlap_at_10")


def test_an_untrained_baseline_gets_no_random_projection_and_reduction_is_idempotent():
    from conftest import tiny_sentence_encoder

    teacher = tiny_sentence_encoder()
    narrow = tiny_sentence_encoder()
    narrow.set_projection(8)
    EmbeddingTask().adapt_student(narrow, teacher, untrained=True)
    assert narrow.embedding_dim == 8
    task = EmbeddingTask(EmbeddingConfig(dim=4))
    student = tiny_sentence_encoder()
    task.adapt_student(student, teacher)
    emb = np.random.default_rng(0).normal(size=(50, 32))
    task.fit_to_teacher(student, emb)
    weight = student.dense.weight.clone()
    task.fit_to_teacher(student, emb)  # a second task stage: nothing changes
    assert student.embedding_dim == 4 and torch.equal(student.dense.weight, weight)
    task.fit_to_teacher(narrow, emb)  # a baseline of another width is left as built
    assert narrow.embedding_dim == 8
