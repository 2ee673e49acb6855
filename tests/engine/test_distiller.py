import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from distil.config import LossConfig, TrainConfig
from distil.data import PadCollator, to_dataset
from distil.engine.distiller import Distiller
from distil.engine.teacher_cache import soft_labels_for
from distil.engine.trainer import DistillationTrainer, EpochLengthGroupedSampler, training_arguments
from distil.errors import DistilError
from distil.losses import kd_objective
from distil.models.lstm import LSTMClassifier, LSTMConfig


@pytest.fixture
def datasets(tokenizer):
    rng = np.random.default_rng(0)
    good, bad = ["great", "moving", "superb", "funny"], ["dull", "boring", "awful", "flat"]
    rows = []
    for i in range(96):
        label = i % 2
        words = rng.choice(good if label else bad, size=3).tolist()
        rows.append({"text": f"the film was {' and '.join(words)}", "label": label})
    frame = pd.DataFrame(rows)
    return to_dataset(frame.iloc[:64], tokenizer, 32), to_dataset(
        frame.iloc[64:].reset_index(drop=True), tokenizer, 32
    )


def _trainer(model, train, valid, tmp_path, tokenizer, distiller=None, epochs=1.0, lr=1e-3):
    cfg = TrainConfig(epochs=epochs, learning_rate=lr, batch_size=16, bf16=False, logging_steps=1, warmup_ratio=0.0)
    args = training_arguments(cfg, tmp_path / "work", seed=0, num_train_rows=len(train))
    args.report_to = []
    return DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=PadCollator(tokenizer.pad_token_id),
        distiller=distiller,
    )


def test_cached_distiller_matches_kd_objective_and_never_runs_teacher(tiny_bert, tokenizer, datasets, tmp_path):
    train, _ = datasets
    soft = soft_labels_for(tiny_bert, tokenizer, train, PadCollator(0), tmp_path, max_length=32, bf16=False)
    distiller = Distiller(LossConfig(alpha=0.3, kd_temperature=3.0), soft_labels=soft)
    student_logits = torch.randn(4, 2, requires_grad=True)
    idx, labels = torch.tensor([3, 0, 7, 1]), torch.tensor([1, 0, 1, 1])
    loss, parts = distiller(student_logits, labels, {}, idx)
    expected, _ = kd_objective(
        student_logits, torch.from_numpy(np.asarray(soft.logits)[[3, 0, 7, 1]]), labels, alpha=0.3, kd_temperature=3.0
    )
    assert torch.allclose(loss, expected) and set(parts) == {"ce", "kd"}
    assert distiller.teacher is None


def test_live_teacher_gives_the_same_loss_as_the_cache(tiny_bert, tokenizer, datasets, tmp_path):
    train, _ = datasets
    collate = PadCollator(tokenizer.pad_token_id)
    soft = soft_labels_for(tiny_bert, tokenizer, train, collate, tmp_path, max_length=32, bf16=False)
    batch = collate([train[i] for i in range(8)])
    idx, labels = batch.pop("idx"), batch.pop("labels")
    logits = torch.randn(8, 2)
    cached, _ = Distiller(LossConfig(), soft_labels=soft)(logits, labels, batch, idx)
    live, _ = Distiller(LossConfig(), teacher=tiny_bert)(logits, labels, batch, idx)
    assert torch.allclose(cached, live, atol=1e-5)


def test_nan_loss_stops_naming_the_step(tiny_bert, tokenizer, datasets, tmp_path):
    train, valid = datasets
    with torch.no_grad():
        tiny_bert.classifier.weight.fill_(float("nan"))
    trainer = _trainer(tiny_bert, train, valid, tmp_path, tokenizer)
    with pytest.raises(DistilError, match=r"training loss is nan at step 1 "):
        trainer.train()


def test_lstm_student_learns_from_tiny_bert_teacher(make_tiny_bert, tokenizer, datasets, tmp_path):
    """The design documents' LSTM student: distilled from soft labels alone (alpha=0), it moves toward the teacher."""
    train, valid = datasets
    teacher = make_tiny_bert(num_labels=2)
    _trainer(teacher, train, valid, tmp_path / "t", tokenizer, epochs=8, lr=3e-3).train()  # a teacher worth copying
    collate = PadCollator(tokenizer.pad_token_id)
    soft = soft_labels_for(teacher, tokenizer, train, collate, tmp_path / "cache", max_length=32, bf16=False)
    torch.manual_seed(0)
    student = LSTMClassifier(
        LSTMConfig(
            vocab_size=len(tokenizer),
            embedding_dim=32,
            hidden_size=32,
            num_labels=2,
            pad_token_id=tokenizer.pad_token_id,
        )
    )

    def kl_to_teacher():
        batch = collate([train[i] for i in range(len(train))])
        batch.pop("idx"), batch.pop("labels")
        student.eval()
        with torch.no_grad():
            s = F.log_softmax(student(**batch).logits, -1)
        t = F.softmax(torch.from_numpy(np.array(soft.logits)), -1)
        return F.kl_div(s, t, reduction="batchmean").item()

    before = kl_to_teacher()
    trainer = _trainer(
        student,
        train,
        valid,
        tmp_path,
        tokenizer,
        distiller=Distiller(LossConfig(alpha=0.0, kd_temperature=1.0), soft_labels=soft),
        epochs=6,
        lr=5e-3,
    )
    trainer.train()
    after = kl_to_teacher()
    assert after < 0.5 * before, (before, after)
    assert any("loss_kd" in e for e in trainer.state.log_history)
    assert trainer.evaluate()["eval_accuracy"] >= 0.9  # learned the task from the teacher's soft labels only


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    lengths = list(np.random.default_rng(0).integers(3, 60, size=200))
    a, b = EpochLengthGroupedSampler(lengths, 16, seed=1), EpochLengthGroupedSampler(lengths, 16, seed=1)
    torch.manual_seed(123)
    first = list(a)
    torch.manual_seed(999)  # the global RNG does not matter
    assert list(b) == first and sorted(first) == list(range(200))
    a.set_epoch(1)
    assert list(a) != first
