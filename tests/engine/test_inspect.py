"""`distil inspect`: architectures side by side, layer map, projections, vocabulary match, per-loss verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from distil.config import LossConfig
from distil.engine.inspect import inspect_main, inspect_pair, render_inspection
from distil.errors import DistilError
from distil.losses import LOSSES
from distil.models.loading import count_parameters
from distil.models.lstm import LSTMClassifier, LSTMConfig

HEAD_PAIRED = ("attention_mse", "attention_kl", "minilm_attention", "minilm_value_relation")


def _save(model, directory: Path, tokenizer=None) -> str:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return str(directory)


def _word_tokenizer(directory: Path, size: int):
    """A BertTokenizerFast over a vocabulary of our own: the 5 specials and `size - 5` made-up words."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"word{i}" for i in range(size - 5))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(directory))


@pytest.fixture
def teacher_dir(tiny_bert, tokenizer, tmp_path) -> str:
    return _save(tiny_bert, tmp_path / "teacher", tokenizer)


def test_architectures_side_by_side_with_the_layer_map(teacher_dir, tiny_bert, make_tiny_bert, tokenizer, tmp_path):
    student = make_tiny_bert(num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    report = inspect_pair(teacher_dir, _save(student, tmp_path / "student", tokenizer))
    t, s = report["teacher"], report["student"]
    assert (t["class"], t["layers"], t["hidden"], t["heads"], t["ffn"], t["vocab_size"], t["num_outputs"]) == (
        "BertForSequenceClassification",
        4,
        32,
        4,
        64,
        30522,
        2,
    )
    assert (s["layers"], s["hidden"], s["heads"], s["ffn"]) == (2, 32, 2, 48)
    assert t["parameters"] == count_parameters(tiny_bert) and s["parameters"] == count_parameters(student)
    assert report["layer_map"] == {"strategy": "uniform", "pairs": [[0, 1], [1, 3]]}
    assert report["projections"] == []
    assert report["vocabulary"]["same"] is True and report["vocabulary"]["teacher_tokens"] == 30522
    assert set(report["losses"]) == {*LOSSES, "mlm"}
    assert report["configured"] == [
        {"weight": "logits_weight", "value": 1.0, "loss": "kd_kl", "can_run": True, "reason": ""}
    ]
    assert report["ok"]


def test_head_mismatch_refuses_attention_losses_and_suggests_minilmv2(
    teacher_dir, make_tiny_bert, tokenizer, tmp_path, capsys
):
    student_dir = _save(make_tiny_bert(num_hidden_layers=2, num_attention_heads=2), tmp_path / "student", tokenizer)
    cfg = LossConfig(hidden_weight=1.0, attention_weight=1.0)
    report = inspect_pair(teacher_dir, student_dir, cfg)
    for name in HEAD_PAIRED:
        assert not report["losses"][name]["can_run"]
        assert "minilm_relation_heads" in report["losses"][name]["reason"]
    for name in ("kd_kl", "hidden_mse", "hidden_cosine", "minilmv2_qkv_relation", "rkd_distance", "rkd_angle"):
        assert report["losses"][name] == {"can_run": True, "reason": ""}, name
    verdicts = {term["weight"]: term["can_run"] for term in report["configured"]}
    assert verdicts == {"logits_weight": True, "hidden_weight": True, "attention_weight": False}
    assert inspect_main(teacher_dir, student_dir, cfg) == 2
    out = capsys.readouterr().out
    assert "NO  attention_weight=1 (attention_mse): compares attention heads one to one" in out
    assert "IMPOSSIBLE" in out
    minilm_v2 = LossConfig(logits_weight=0.0, minilm_value_weight=1.0, minilm_relation_heads=4)
    assert inspect_main(teacher_dir, student_dir, minilm_v2) == 0
    assert "minilmv2_qkv_relation" in capsys.readouterr().out


def test_projections_are_listed_with_their_size(teacher_dir, make_tiny_bert, tokenizer, tmp_path):
    student_dir = _save(make_tiny_bert(num_hidden_layers=2, hidden_size=48), tmp_path / "student", tokenizer)
    report = inspect_pair(teacher_dir, student_dir, LossConfig(hidden_weight=1.0))
    assert [(p["term"], p["shape"], p["parameters"], p["configured"]) for p in report["projections"]] == [
        ("embedding_weight", [48, 32], 48 * 32 + 32, False),
        ("hidden_weight", [48, 32], 48 * 32 + 32, True),
        ("hidden_cosine_weight", [48, 32], 48 * 32 + 32, False),
    ]
    assert report["ok"]
    assert "projection for hidden_weight (hidden_mse): Linear(48 -> 32), 1,568 parameters (configured)" in (
        render_inspection(report)
    )


def test_different_tokenizer_of_the_same_size_blocks_token_level_losses(teacher_dir, make_tiny_bert, tmp_path):
    student_dir = tmp_path / "student"
    other = _word_tokenizer(student_dir, 30522)  # same size as MiniLM's, different tokens
    _save(make_tiny_bert(num_hidden_layers=2), student_dir, other)
    report = inspect_pair(teacher_dir, str(student_dir), LossConfig(hidden_weight=1.0))
    assert report["vocabulary"]["same"] is False
    assert "tokenizers differ: 30522 vs 30522 tokens" in report["vocabulary"]["detail"]
    assert not report["losses"]["hidden_mse"]["can_run"]
    assert "the same word pieces on" in report["losses"]["hidden_mse"]["reason"]
    assert report["vocabulary"]["aligned_probe"] < 0.75
    assert report["losses"]["kd_kl"]["can_run"] and "own tokens" in report["losses"]["kd_kl"]["reason"]
    assert not report["ok"]
    assert inspect_main(teacher_dir, str(student_dir), LossConfig()) == 0  # logits only can run


def test_a_smaller_vocabulary_is_caught_from_the_embedding_table(teacher_dir, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    student_dir = tmp_path / "student"
    small = _word_tokenizer(student_dir, 50)
    student = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    )
    report = inspect_pair(teacher_dir, _save(student, student_dir, small), LossConfig(attention_kl_weight=1.0))
    assert report["vocabulary"]["same"] is False
    assert "embedding tables differ: teacher 30522 rows, student 50 rows" in report["vocabulary"]["detail"]
    assert [t["can_run"] for t in report["configured"]] == [True, False]


def test_an_lstm_student_can_only_take_logit_losses(teacher_dir, tmp_path):
    lstm = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=8, hidden_size=8))
    student_dir = _save(lstm, tmp_path / "lstm")
    report = inspect_pair(teacher_dir, student_dir, LossConfig(hidden_cosine_weight=1.0))
    assert report["student"]["transformer"] is False and report["student"]["class"] == "LSTMClassifier"
    assert report["student"]["parameters"] == count_parameters(lstm)
    assert {name for name, v in report["losses"].items() if v["can_run"]} == {"kd_kl", "logits_mse"}
    assert "use the kd recipe for an LSTM student" in report["losses"]["hidden_mse"]["reason"]
    assert "error" in report["layer_map"]
    assert inspect_main(teacher_dir, student_dir, LossConfig(hidden_cosine_weight=1.0)) == 2
    assert inspect_main(teacher_dir, student_dir, LossConfig()) == 0


def test_model_objects_label_mismatch_and_mlm(tiny_bert, make_tiny_bert):
    three = make_tiny_bert(num_labels=3, num_hidden_layers=2)
    report = inspect_pair(tiny_bert, three, LossConfig(mlm_weight=1.0))
    assert report["vocabulary"]["same"] is None and "given as a model object" in report["vocabulary"]["detail"]
    reasons = {term["weight"]: term["reason"] for term in report["configured"] if not term["can_run"]}
    assert "same label set" in reasons["logits_weight"]
    assert "no masked-LM head" in reasons["mlm_weight"]


def test_a_missing_model_is_one_clear_error(teacher_dir, tmp_path):
    with pytest.raises(DistilError, match="inspect: cannot read a model config from"):
        inspect_pair(teacher_dir, str(tmp_path / "nowhere"))


def test_a_multi_stage_recipe_is_checked_stage_by_stage(teacher_dir, make_tiny_bert, tokenizer, tmp_path, capsys):
    from distil.cli import main

    # 2 heads against the teacher's 4: TinyBERT's attention MSE (stages 1-2) cannot run, its last stage (logits) can
    student_dir = _save(make_tiny_bert(num_hidden_layers=2, num_attention_heads=2), tmp_path / "student", tokenizer)
    assert main(["inspect", teacher_dir, student_dir, "--config", "tinybert"]) == 2
    out = capsys.readouterr().out
    for stage in ("general", "task-intermediate", "task-prediction"):
        assert f"configured terms, stage {stage}:" in out
    prediction = out.split("configured terms, stage task-prediction:")[1].split("every loss:")[0]
    assert "ok  logits_weight=1 (kd_kl)" in prediction and "attention" not in prediction
    assert out.count("NO  attention_weight=1 (attention_mse)") == 2
