"""Distiller: every term is 0 for an exact copy, parts follow the weights, only needed layers are hooked,
projections train and survive a resume, impossible combinations are refused at construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distil.config import FEATURE_WEIGHTS, LossConfig
from distil.engine.distiller import (
    DISTILLER_STATE_FILE,
    Distiller,
    DistillerCheckpointCallback,
    load_distiller_state,
    make_distiller,
)
from distil.errors import DistilError
from distil.losses import kd_kl_loss
from distil.models.features import FeatureSpec
from distil.models.lstm import LSTMClassifier, LSTMConfig
from distil.models.student import student_from_teacher

ALL_FEATURES = {name: 1.0 for name in FEATURE_WEIGHTS if name != "mlm_weight"}


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Four sequences of 7 tokens; the second has 3 padded positions."""
    generator = torch.Generator().manual_seed(1)
    attention_mask = torch.ones(4, 7, dtype=torch.long)
    attention_mask[1, 4:] = 0
    input_ids = torch.randint(1000, 2000, (4, 7), generator=generator) * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


LABELS = torch.tensor([0, 1, 1, 0])


def _compute(distiller, student, batch, labels=LABELS, idx=None):
    return distiller.compute(student, dict(batch), labels, idx)


@pytest.fixture
def wide_student(make_tiny_bert):
    """2 layers, hidden 48, 4 heads: hidden-state terms need a 48 -> 32 projection."""
    return make_tiny_bert(num_hidden_layers=2, hidden_size=48, num_attention_heads=4).train()


def _num_hooks(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


# ----------------------------------------------------------------------------------------------------------
# closed forms


def test_exact_copy_gives_zero_for_every_feature_term(tiny_bert, batch):
    student = student_from_teacher(tiny_bert, [0, 1, 2, 3]).eval()  # eval: no dropout, so features are identical
    cfg = LossConfig(**ALL_FEATURES, layer_map=[0, 1, 2, 3])
    total, parts, logits = _compute(Distiller(cfg, tiny_bert, student), student, batch)
    expected = {"ce", "kd", *(name.removesuffix("_weight") for name in ALL_FEATURES)}
    assert set(parts) == expected
    for name, value in parts.items():
        if name != "ce":
            assert abs(value.item()) < 1e-5, (name, value.item())
    assert logits.shape == (4, 2)
    assert total.item() == pytest.approx(0.5 * parts["ce"].item(), abs=1e-5)  # alpha * CE; every other part is 0


def test_minilm_v2_relations_of_an_exact_copy_are_zero(tiny_bert, batch):
    student = student_from_teacher(tiny_bert, [0, 1, 2, 3]).eval()
    cfg = LossConfig(logits_weight=0.0, minilm_value_weight=1.0, minilm_relation_heads=8, layer_map=[0, 1, 2, 3])
    _, parts, _ = _compute(Distiller(cfg, tiny_bert, student), student, batch, labels=None)
    assert set(parts) == {"minilm_query", "minilm_key", "minilm_value"}
    assert all(abs(v.item()) < 1e-5 for v in parts.values())


def test_total_is_the_weighted_sum_of_the_parts(tiny_bert, batch):
    student = student_from_teacher(tiny_bert, [1, 3]).train()
    cfg = LossConfig(alpha=0.3, logits_weight=2.0, hidden_weight=0.5, attention_weight=0.25, rkd_angle_weight=3.0)
    total, parts, _ = _compute(Distiller(cfg, tiny_bert, student), student, batch)
    assert set(parts) == {"ce", "kd", "hidden", "attention", "rkd_angle"}
    expected = 2.0 * (0.3 * parts["ce"] + 0.7 * parts["kd"]) + 0.5 * parts["hidden"]
    expected = expected + 0.25 * parts["attention"] + 3.0 * parts["rkd_angle"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(v.item() > 0 for v in parts.values())  # a 2-layer student differs from its teacher


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"hidden_weight": 1.0}, {"ce", "kd", "hidden"}),
        ({"logits_weight": 0.0, "alpha": 0.0, "attention_kl_weight": 1.0}, {"attention_kl"}),
        ({"embedding_weight": 1.0, "minilm_attention_weight": 1.0}, {"ce", "kd", "embedding", "minilm_attention"}),
        (
            {"alpha": 0.0, "hidden_cosine_weight": 1.0, "rkd_distance_weight": 1.0},
            {"ce", "kd", "hidden_cosine", "rkd_distance"},
        ),
    ],
)
def test_parts_are_present_for_the_configured_weights_only(tiny_bert, batch, weights, expected):
    student = student_from_teacher(tiny_bert, [1, 3])
    cfg = LossConfig(**weights)
    labels = None if cfg.logits_weight == 0 else LABELS
    total, parts, _ = _compute(Distiller(cfg, tiny_bert, student), student, batch, labels=labels)
    assert set(parts) == expected
    assert torch.isfinite(total)


def test_soft_labels_feed_the_logit_term(tiny_bert, batch):
    class Cached:
        logits = torch.randn(10, 2, generator=torch.Generator().manual_seed(3))

        def lookup(self, idx):
            return self.logits[idx]

    student = student_from_teacher(tiny_bert, [1, 3]).eval()
    idx = torch.tensor([7, 2, 5, 0])
    distiller = Distiller(LossConfig(hidden_weight=1.0), tiny_bert, student, soft_labels=Cached())
    _, parts, logits = _compute(distiller, student, batch, idx=idx)
    assert parts["kd"].item() == pytest.approx(kd_kl_loss(logits, Cached.logits[idx], 2.0).item(), rel=1e-5)
    with pytest.raises(DistilError, match="idx"):
        _compute(distiller, student, batch, idx=None)


def test_logits_only_with_soft_labels_never_runs_the_teacher(tiny_bert, batch):
    class Cached:
        def lookup(self, idx):
            return torch.zeros(len(idx), 2)

    calls = []
    tiny_bert.register_forward_hook(lambda *args: calls.append(1))
    student = student_from_teacher(tiny_bert, [1, 3])
    distiller = Distiller(LossConfig(), tiny_bert, student, soft_labels=Cached())
    _, parts, _ = _compute(distiller, student, batch, idx=torch.arange(4))
    assert set(parts) == {"ce", "kd"} and not calls


def test_rkd_on_a_batch_too_small_for_the_angle_contributes_zero(tiny_bert, batch):
    student = student_from_teacher(tiny_bert, [1, 3])
    distiller = Distiller(LossConfig(rkd_distance_weight=1.0, rkd_angle_weight=1.0), tiny_bert, student)
    for rows in (1, 2):  # e.g. the last partial batch of an epoch
        small = {key: value[:rows] for key, value in batch.items()}
        _, parts, _ = _compute(distiller, student, small, labels=LABELS[:rows])
        # one row: neither term is defined; two rows: no angle, and the one mean-normalised distance is 1 on both sides
        assert parts["rkd_angle"].item() == 0.0 and parts["rkd_distance"].item() == 0.0
    _, parts, _ = _compute(distiller, student, batch)
    assert parts["rkd_angle"].item() > 0 and parts["rkd_distance"].item() > 0


# ----------------------------------------------------------------------------------------------------------
# hooks, teacher, projections


def test_only_the_layers_the_terms_need_are_hooked(tiny_bert, batch):
    student = student_from_teacher(tiny_bert, [1, 3])
    distiller = Distiller(LossConfig(hidden_weight=1.0), tiny_bert, student)  # uniform: 0<-1, 1<-3
    assert distiller.student_spec == FeatureSpec(hidden_layers=(0, 1))
    assert distiller.teacher_spec == FeatureSpec(hidden_layers=(1, 3))
    cfg = LossConfig(minilm_value_weight=1.0, minilm_relation_heads=4, hidden_cosine_weight=1.0)
    distiller = Distiller(cfg, tiny_bert, student)
    assert distiller.student_spec == FeatureSpec(hidden_layers=(1,), qkv_layers=(1,))
    assert distiller.teacher_spec == FeatureSpec(hidden_layers=(3,), qkv_layers=(3,))
    seen = []
    tiny_bert.classifier.register_forward_hook(lambda *args: seen.append(_num_hooks(tiny_bert)))
    _compute(distiller, student, batch)
    assert seen == [1 + 1 + 3]  # this counter, hidden[3], q/k/v of layer 3
    assert _num_hooks(tiny_bert) == 1 and _num_hooks(student) == 0  # the taps detach after each batch


def test_teacher_runs_under_inference_mode_and_gets_no_grads(tiny_bert, batch, wide_student):
    student = wide_student
    modes = []
    tiny_bert.register_forward_hook(lambda *args: modes.append(torch.is_inference_mode_enabled()))
    distiller = Distiller(LossConfig(hidden_weight=1.0, attention_weight=1.0), tiny_bert, student)
    distiller.train()
    assert not tiny_bert.training  # train() leaves the teacher in eval mode
    total, _, _ = _compute(distiller, student, batch)
    total.backward()
    assert modes == [True]
    assert all(p.grad is None and not p.requires_grad for p in tiny_bert.parameters())
    assert distiller.terms["hidden"].projection.weight.grad is not None
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_projections_when_widths_differ_and_not_the_student(tiny_bert, batch, wide_student):
    student = wide_student
    cfg = LossConfig(embedding_weight=1.0, hidden_weight=1.0, hidden_cosine_weight=1.0, attention_weight=1.0)
    distiller = Distiller(cfg, tiny_bert, student)
    trainable = {name: p.shape for name, p in distiller.named_parameters() if p.requires_grad}
    assert trainable == {
        f"terms.{term}.projection.{kind}": shape
        for term in ("embedding", "hidden", "hidden_cosine")
        for kind, shape in (("weight", (32, 48)), ("bias", (32,)))
    }
    total, parts, _ = _compute(distiller, student, batch)
    assert set(parts) == {"ce", "kd", "embedding", "hidden", "hidden_cosine", "attention"} and torch.isfinite(total)


# ----------------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    "weight", ["attention_weight", "attention_kl_weight", "minilm_attention_weight", "minilm_value_weight"]
)
def test_head_paired_terms_refuse_different_head_counts(tiny_bert, make_tiny_bert, weight):
    student = make_tiny_bert(num_hidden_layers=2, num_attention_heads=2)
    with pytest.raises(DistilError, match=f"loss.{weight}=1.0: .*2 heads and the teacher 4.*minilm_relation_heads"):
        Distiller(LossConfig(**{weight: 1.0}), tiny_bert, student)


def test_minilm_v2_relations_work_across_head_counts_and_widths(tiny_bert, make_tiny_bert, batch, wide_student):
    for student in (make_tiny_bert(num_hidden_layers=2, num_attention_heads=2), wide_student):
        distiller = Distiller(LossConfig(minilm_value_weight=1.0, minilm_relation_heads=4), tiny_bert, student)
        total, parts, _ = _compute(distiller, student, batch)
        assert {"minilm_query", "minilm_key", "minilm_value"} <= set(parts) and torch.isfinite(total)
        total.backward()
    with pytest.raises(DistilError, match="minilm_relation_heads=3 must divide the student width 48"):
        Distiller(LossConfig(minilm_value_weight=1.0, minilm_relation_heads=3), tiny_bert, student)


@pytest.mark.parametrize("weight", sorted(ALL_FEATURES))
def test_an_lstm_student_is_refused_by_every_feature_term(tiny_bert, weight):
    lstm = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=8, hidden_size=8))
    with pytest.raises(DistilError, match="this recipe needs layers; use the kd recipe for an LSTM student"):
        make_distiller(LossConfig(**{weight: 1.0}), tiny_bert, lstm)


def test_bad_layer_map_and_label_count_are_refused(tiny_bert, make_tiny_bert):
    student = student_from_teacher(tiny_bert, [1, 3])
    with pytest.raises(DistilError, match="loss.hidden_weight=1.0: layer map: .*teacher layer 4"):
        Distiller(LossConfig(hidden_weight=1.0, layer_map=[1, 4]), tiny_bert, student)
    three = make_tiny_bert(num_labels=3, num_hidden_layers=2)
    with pytest.raises(DistilError, match="loss.logits_weight=1.0: teacher predicts 2 outputs, student 3"):
        Distiller(LossConfig(hidden_weight=1.0), tiny_bert, three)


def test_make_distiller_picks_the_distiller(tiny_bert):
    student = student_from_teacher(tiny_bert, [1, 3])
    cached = object()
    plain = make_distiller(LossConfig(), tiny_bert, student, soft_labels=cached)
    assert type(plain) is Distiller and plain.teacher is None and plain.soft_labels is cached
    live = make_distiller(LossConfig(), tiny_bert, student)
    assert type(live) is Distiller and live.teacher is tiny_bert
    lstm = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=8, hidden_size=8))
    assert type(make_distiller(LossConfig(), tiny_bert, lstm)) is Distiller  # the kd recipe keeps LSTM students
    assert isinstance(make_distiller(LossConfig(hidden_weight=1.0), tiny_bert, student), Distiller)


def test_a_bf16_live_teacher_gives_the_numbers_of_autocast_without_recasting(tiny_bert, batch):
    student = student_from_teacher(tiny_bert, [1, 3]).train()
    loss = LossConfig(hidden_weight=1.0, attention_kl_weight=1.0)
    fp32 = make_distiller(loss, tiny_bert, student)
    bf16 = make_distiller(loss, tiny_bert, student, bf16_teacher=True)
    assert fp32.teacher is tiny_bert and {p.dtype for p in tiny_bert.parameters()} == {torch.float32}  # untouched
    linear = bf16.teacher.bert.encoder.layer[0].attention.self.query
    assert bf16.teacher is not tiny_bert and linear.weight.dtype == linear.bias.dtype == torch.bfloat16
    assert bf16.teacher.bert.embeddings.word_embeddings.weight.dtype == torch.float32  # norms, embeddings: fp32
    parts = []
    for distiller in (bf16, fp32):
        torch.manual_seed(0)  # the same dropout masks in the student
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts.append(_compute(distiller, student, batch)[1])
    for name in ("kd", "hidden", "attention_kl"):
        assert parts[0][name].item() == pytest.approx(parts[1][name].item(), rel=1e-5, abs=1e-9), name
    cached = make_distiller(LossConfig(), tiny_bert, student, soft_labels=object(), bf16_teacher=True)
    assert cached.teacher is None  # nothing copied when the teacher never runs


# ----------------------------------------------------------------------------------------------------------
# MLM (DistilBERT's third term)


def _tiny_mlm(num_layers: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertForMaskedLM(cfg).eval()


def test_mlm_term_with_masked_lm_teacher_and_student():
    teacher = _tiny_mlm(4)
    student = student_from_teacher(teacher, [0, 2])
    cfg = LossConfig(alpha=0.0, hidden_cosine_weight=1.0, mlm_weight=1.0)
    distiller = Distiller(cfg, teacher, student)
    input_ids = torch.randint(5, 100, (3, 6), generator=torch.Generator().manual_seed(0))
    mlm_labels = torch.full((3, 6), -100)
    mlm_labels[:, 2] = input_ids[:, 2]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones(3, 6, dtype=torch.long), "mlm_labels": mlm_labels}
    _, parts, logits = distiller.compute(student, inputs, None, None)
    assert set(parts) == {"kd", "mlm", "hidden_cosine"} and logits.shape == (3, 6, 100)
    assert parts["mlm"].item() == pytest.approx(F.cross_entropy(logits[:, 2], input_ids[:, 2]).item(), rel=1e-5)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids).logits
    expected_kd = kd_kl_loss(logits[:, 2], teacher_logits[:, 2], 2.0)  # KL on the masked positions only
    assert parts["kd"].item() == pytest.approx(expected_kd.item(), rel=1e-4)
    with pytest.raises(DistilError, match="no 'mlm_labels'"):
        distiller.compute(student, {"input_ids": input_ids}, None, None)


def test_mlm_term_refuses_a_student_without_an_mlm_head(tiny_bert):
    student = student_from_teacher(tiny_bert, [1, 3])
    with pytest.raises(DistilError, match="loss.mlm_weight=1.0: .*no masked-LM head"):
        Distiller(LossConfig(mlm_weight=1.0), tiny_bert, student)


# ----------------------------------------------------------------------------------------------------------
# the trainer, checkpoints and resume


def _dataset(rows: int = 8):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    lengths = [5 + i % 3 for i in range(rows)]
    ids = [torch.randint(1000, 2000, (n,), generator=generator).tolist() for n in lengths]
    return Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": [[1] * n for n in lengths],
            "labels": [i % 2 for i in range(rows)],
            "idx": list(range(rows)),
            "length": lengths,
        }
    )


def _trainer(tmp_path, student, distiller, max_steps: int):
    from transformers import TrainingArguments

    from distil.data.prepare import PadCollator
    from distil.engine.trainer import DistillationTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=1,
        eval_strategy="no",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
        seed=0,
    )
    return DistillationTrainer(
        model=student,
        args=args,
        train_dataset=_dataset(),
        data_collator=PadCollator(0),
        distiller=distiller,
        callbacks=[DistillerCheckpointCallback(distiller)],
    )


def test_trainer_trains_projections_and_resume_restores_them(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, TrainerControl, TrainerState

    torch.manual_seed(0)
    # a small vocabulary keeps the optimizer steps fast
    shape = {"vocab_size": 2048, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64}
    teacher = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4, **shape)).eval()
    student = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=2, **shape))
    cfg = LossConfig(embedding_weight=1.0, hidden_weight=1.0)
    distiller = Distiller(cfg, teacher, student)
    before = {k: v.clone() for k, v in distiller.state_for_checkpoint().items()}
    trainer = _trainer(tmp_path, student, distiller, max_steps=2)
    trainer.train()
    extra_group = trainer.optimizer.param_groups[-1]["params"]
    assert {id(p) for p in extra_group} == {id(p) for p in distiller.parameters() if p.requires_grad}
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert "loss_hidden" in trainer.state.log_history[0] and "loss_embedding" in trainer.state.log_history[0]
    after = distiller.state_for_checkpoint()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # the optimizer trained every projection

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint-2" / DISTILLER_STATE_FILE))
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)

    # resume from checkpoint-1 with a fresh distiller: the callback refuses to start until the projections are loaded
    fresh = Distiller(cfg, teacher, student)
    callback, resumed_state = DistillerCheckpointCallback(fresh), TrainerState(global_step=1)
    with pytest.raises(DistilError, match="resuming at step 1 without the distiller's learned projections"):
        callback.on_train_begin(trainer.args, resumed_state, TrainerControl())
    assert load_distiller_state(fresh, tmp_path / "checkpoint-1")
    callback.on_train_begin(trainer.args, resumed_state, TrainerControl())
    at_step_1 = load_file(str(tmp_path / "checkpoint-1" / DISTILLER_STATE_FILE))
    assert all(torch.equal(fresh.state_for_checkpoint()[k], at_step_1[k]) for k in at_step_1)
    resumed = _trainer(tmp_path, student, fresh, max_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert resumed.state.global_step == 2 and not torch.equal(
        fresh.state_for_checkpoint()["terms.hidden.projection.weight"], at_step_1["terms.hidden.projection.weight"]
    )


def test_checkpoint_state_refuses_a_mismatch(tiny_bert, tmp_path, wide_student):
    student = wide_student
    distiller = Distiller(LossConfig(hidden_weight=1.0), tiny_bert, student)
    with pytest.raises(DistilError, match="distiller.safetensors is missing"):
        load_distiller_state(distiller, tmp_path)
    other = Distiller(LossConfig(embedding_weight=1.0), tiny_bert, student)
    with pytest.raises(DistilError, match=r"missing \['terms.hidden"):
        distiller.load_checkpoint_state(other.state_for_checkpoint())
    same_width = Distiller(LossConfig(hidden_weight=1.0), tiny_bert, student_from_teacher(tiny_bert, [1, 3]))
    assert same_width.state_for_checkpoint() == {}
    assert not load_distiller_state(same_width, tmp_path)  # nothing to restore: no file needed


def test_projection_gradients_start_from_zero_at_every_optimiser_step(tmp_path):
    """The Trainer clears the student's gradients after each step; the projections, outside the student, must be
    cleared too, or each step would apply the sum of every gradient so far."""
    from transformers import BertConfig, BertForSequenceClassification, TrainerCallback

    torch.manual_seed(0)
    shape = {"vocab_size": 2048, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64}
    teacher = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4, **shape)).eval()
    student = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=2, **shape))
    distiller = Distiller(LossConfig(hidden_weight=1.0), teacher, student)
    projection = distiller.terms["hidden"].projection.weight
    seen = []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(None if projection.grad is None else float(projection.grad.abs().sum()))

    trainer = _trainer(tmp_path, student, distiller, max_steps=3)
    trainer.add_callback(Watch())
    trainer.train()
    assert len(seen) == 3 and all(g is None or g == 0 for g in seen), seen
