"""The classification task unit and the registry: what the engine asks a task for."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from distil.config import LossConfig, RunConfig
from distil.engine.distiller import Distiller
from distil.engine.trainer import metrics_for
from distil.errors import DistilError
from distil.tasks import TASKS, ClassificationTask, get_task


def test_the_registry_and_the_config_name_the_same_tasks():
    assert set(TASKS) == set(typing.get_args(typing.get_type_hints(RunConfig)["task"]))
    assert RunConfig().task == "classification" and isinstance(get_task("classification"), ClassificationTask)
    with pytest.raises(DistilError, match="config key 'task': got 'ner'; expected one of classification"):
        get_task("ner")


def test_model_signal_and_best_metric():
    task = ClassificationTask()
    assert task.auto_model_class is AutoModelForSequenceClassification
    assert task.signal_shapes == {"logits": ("C",)} and task.best_metric == "accuracy"


def test_kd_term_is_alpha_ce_plus_t2_kl():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    term = ClassificationTask().kd_term(LossConfig(alpha=0.3, kd_temperature=2.0))
    loss, parts = term(s, t, y)
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    assert torch.allclose(loss, 0.3 * F.cross_entropy(s, y) + 0.7 * kl, atol=1e-6)
    assert term(t, t, y)[1]["kd"].abs().item() < 1e-6  # identical logits: no soft loss


def test_the_distiller_sums_the_tasks_kd_term(tiny_bert):
    class Cached:
        def lookup(self, idx):
            return torch.tensor([[2.0, -1.0], [0.5, 0.5]])[idx]

    d = Distiller(LossConfig(alpha=0.5), soft_labels=Cached())
    s, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    loss, _ = d(s, y, {}, torch.tensor([0, 1]))
    expected, _ = ClassificationTask().kd_term(LossConfig(alpha=0.5))(s, Cached().lookup(torch.tensor([0, 1])), y)
    assert torch.equal(loss, expected)


def test_metrics_paired_units_and_serving():
    task = ClassificationTask()
    logits, gold = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), np.array([0, 1, 1])
    assert task.metrics(logits, gold) == pytest.approx({"accuracy": 2 / 3, "macro_f1": (2 / 3 + 2 / 3) / 2})
    assert task.correct(logits, gold).tolist() == [True, True, False]

    class Pred:
        predictions, label_ids = (logits,), gold  # the Trainer may hand a tuple

    assert metrics_for(task)(Pred())["accuracy"] == pytest.approx(2 / 3)
    out = task.postprocess(np.array([[0.0, np.log(3.0)]], dtype=np.float32), ["neg", "pos"])
    assert out[0]["label"] == "pos" and out[0]["score"] == pytest.approx(0.75)
    assert out[0]["probs"] == pytest.approx({"neg": 0.25, "pos": 0.75})
