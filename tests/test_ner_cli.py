"""NER end to end through the real CLI on a few hundred real CoNLL-2003 sentences and a tiny teacher:
teacher -> per-token soft labels -> student + baseline -> entity-level report; then predict and export."""

from __future__ import annotations

import json

import pytest
from conftest import small_run_flags

from distil.cli import main


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, _tiny_bert_session, tokenizer):
    root = tmp_path_factory.mktemp("ner")
    teacher = root / "tiny-teacher"
    _tiny_bert_session.save_pretrained(teacher)  # a sequence classifier: the run puts a token head on it
    tokenizer.save_pretrained(teacher)
    out = root / "run"
    flags = small_run_flags(out, root / "cache")
    flags[flags.index("--data.max_train_samples") + 1] = "256"
    flags[flags.index("--data.max_length") + 1] = "48"
    args = ["run", "ner", "--teacher.model", str(teacher), *flags, "--teacher.train.epochs", "1",
            "--distill.epochs", "1", "--teacher.train.learning_rate", "0.003", "--distill.learning_rate", "0.003",
            "--eval.latency_repeats", "1", "--eval.latency_batch_sizes", "[1]"]  # fmt: skip
    assert main(args) == 0
    return out


def test_the_report_holds_entity_level_metrics(ner_run):
    report = json.loads((ner_run / "report.json").read_text())
    assert report["task"]["name"] == "token-classification" and report["task"]["metric"] == "f1"
    assert report["data"]["splits"] == {"train": 256, "validation": 32, "test": 32}
    for role in ("teacher", "student", "baseline"):
        test = report["models"][role]["test"]
        assert {"f1", "precision", "recall", "token_accuracy"} <= set(test)
        assert 0.0 <= test["f1"] <= 1.0 and test["token_accuracy"] > 0.3  # "O" alone is most tokens
    assert report["paired"]["test"]["a_only"] + report["paired"]["test"]["b_only"] <= 32
    md = (ner_run / "report.md").read_text()
    assert "entity F1" in md and "sentences (every entity exactly right) only one of the two gets right" in md
    assert "| model | LOC F1 | MISC F1 | ORG F1 | PER F1 |" in md
    soft = json.loads((ner_run / "soft_labels.json").read_text())
    assert soft["shape"][1] == 9  # flat (sum of sentence lengths, 9 tags)


def test_predict_prints_entities_with_offsets(ner_run, capsys):
    assert main(["predict", str(ner_run / "student"), "Angela Merkel visited Paris", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["text"] == "Angela Merkel visited Paris" and isinstance(line["entities"], list)
    for e in line["entities"]:
        assert line["text"][e["start"] : e["end"]] == e["text"] and e["type"] in {"PER", "ORG", "LOC", "MISC"}


def test_export_checks_onnx_and_scores_entity_f1_on_the_test_split(ner_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(ner_run / "student"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "entity F1" in printed and "32 test sentences" in printed
    figures = json.loads((out / "export.json").read_text())
    variants = figures.get("variants", figures)
    scored = [v for v in variants.values() if isinstance(v, dict) and "f1" in v]
    assert len(scored) >= 3  # hf, onnx, onnx-int8 at least
    report = json.loads((ner_run / "report.json").read_text())
    hf = next(v for k, v in variants.items() if k == "hf")
    assert hf["f1"] == pytest.approx(report["models"]["student"]["test"]["f1"], abs=1e-6)
    from distil.deploy.serving import load_student

    onnx = load_student(out / "onnx").predict(["Angela Merkel visited Paris"])[0]
    torch_out = load_student(ner_run / "student").predict(["Angela Merkel visited Paris"])[0]
    assert [e["type"] for e in onnx["entities"]] == [e["type"] for e in torch_out["entities"]]


def test_tinybert_recipe_runs_on_token_classification(tmp_path, _tiny_bert_session, tokenizer):
    teacher = tmp_path / "teacher"
    _tiny_bert_session.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "run"
    flags = small_run_flags(out, tmp_path / "cache")
    args = ["run", "tinybert", "--task", "token-classification", "--data.source", "conll2003",
            "--data.extra_test_sets", "[]", "--teacher.model", str(teacher), *flags, "--teacher.train.epochs", "1",
            "--student.hidden_size", "32", "--student.num_attention_heads", "4", "--student.intermediate_size", "64",
            "--general_data.max_rows", "64", "--augment.num_variants", "1",
            "--eval.latency_repeats", "1", "--eval.latency_batch_sizes", "[1]"]  # fmt: skip
    assert main(args) == 0
    history = json.loads((out / "student" / "training_history.json").read_text())
    assert [s["name"] for s in history["stages"]] == ["general", "task-intermediate", "task-prediction"]
    augmented = history["stages"][1]
    assert augmented["data"] == "train_augmented" and augmented["train_rows"] > 64
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "token-classification" and "f1" in report["models"]["student"]["test"]


def test_the_lstm_tagger_is_a_student_too(tmp_path, _tiny_bert_session, tokenizer):
    teacher = tmp_path / "teacher"
    _tiny_bert_session.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "run"
    args = ["run", "ner", "--teacher.model", str(teacher), *small_run_flags(out, tmp_path / "cache"),
            "--student.init", "lstm", "--student.lstm_embedding_dim", "16", "--student.lstm_hidden_size", "16",
            "--teacher.train.epochs", "1", "--distill.epochs", "1", "--baseline", "false",
            "--eval.latency_repeats", "1", "--eval.latency_batch_sizes", "[1]"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["distil_model"] == "lstm" and config["per_token"] is True
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["models"]["student"]["test"]["f1"] <= 1.0
