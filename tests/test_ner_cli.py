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
    assert "entity F1" in md and "sentences whose entities are all right" in md
    soft = json.loads((ner_run / "soft_labels.json").read_text())
    assert soft["shape"][1] == 9  # flat (sum of sentence lengths, 9 tags)


def test_predict_prints_entities_with_offsets(ner_run, capsys):
    assert main(["predict", str(ner_run / "student"), "Angela Merkel visited Paris", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["text"] == "Angela Merkel visited Paris" and isinstance(line["entities"], list)
    for e in line["entities"]:
        assert line["text"][e["start"] : e["end"]] == e["text"] and e["type"] in {"PER", "ORG", "LOC", "MISC"}
