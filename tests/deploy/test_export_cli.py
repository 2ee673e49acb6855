"""`export_main`: every variant exported and scored on the run's test split, the table printed; bad input refused."""

from __future__ import annotations

import copy
import json

import pytest

from distil.config import RunConfig, dump_yaml
from distil.deploy.export_cli import export_main, find_run_dir, model_label_names, render_table
from distil.errors import DistilError

TEST_ROWS = 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, _tiny_bert_session, tokenizer):
    """A finished-looking run: config.yaml (Rotten Tomatoes, 24 test rows), student/ (tiny BERT), report.json."""
    run = tmp_path_factory.mktemp("run")
    cfg = RunConfig(output_dir=str(run))
    cfg.data.max_train_samples, cfg.data.max_eval_samples, cfg.data.max_length = 32, TEST_ROWS, 32
    (run / "config.yaml").write_text(dump_yaml(cfg))
    model = copy.deepcopy(_tiny_bert_session)
    model.config.id2label, model.config.label2id = {0: "fresh", 1: "rotten"}, {"fresh": 0, "rotten": 1}
    model.save_pretrained(run / "student")
    tokenizer.save_pretrained(run / "student")
    report = {"models": {"student": {"test": {"accuracy": 0.5, "macro_f1": 0.4}, "latency_ms": {"1": 1.0}},
                         "teacher": {"test": {"accuracy": 0.8}, "parameters": 22_700_000}}}  # fmt: skip
    (run / "report.json").write_text(json.dumps(report))
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    return out, export_main(str(run_dir / "student"), str(out))


def test_exports_every_variant_and_scores_each_on_the_run_test_split(exported, capsys):
    out, code = exported
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"hf", "onnx", "onnx-int8", "export.json"}
    figures = json.loads((out / "export.json").read_text())
    assert set(figures) == {"hf", "torch-int8", "onnx", "onnx-int8"}
    for variant, f in figures.items():
        assert f["test_rows"] == TEST_ROWS, variant
        assert 0.0 <= f["accuracy"] <= 1.0
    # fp32 ONNX is the same function as the PyTorch model: identical predictions on the same rows.
    assert figures["onnx"]["accuracy"] == figures["hf"]["accuracy"]
    assert figures["onnx"]["max_abs_diff"] <= 1e-4


def test_prints_the_variant_table_and_writes_the_model_card(exported, capsys, run_dir, tmp_path):
    out, _ = exported
    card = (out / "hf" / "README.md").read_text()
    assert "Deployment variants" in card and "sentence-transformers/all-MiniLM-L6-v2" in card
    table = render_table(json.loads((out / "export.json").read_text()))
    assert table.splitlines()[0] == "| variant | accuracy | vs fp32 (points) | size | max abs diff |"
    assert len(table.splitlines()) == 2 + 4
    assert "+0.00" in table.splitlines()[2]  # hf is the reference row


def test_without_a_run_it_exports_but_measures_no_accuracy(run_dir, tmp_path, capsys):
    lone = tmp_path / "student"
    import shutil

    shutil.copytree(run_dir / "student", lone)
    assert find_run_dir(lone) is None
    assert export_main(str(lone), str(tmp_path / "out"), int8=False) == 0
    printed = capsys.readouterr().out
    assert "no accuracy" in printed and "| onnx fp32 (onnx/) | - |" in printed
    assert not (tmp_path / "out" / "onnx-int8").exists()


def test_refuses_an_existing_out_dir_a_missing_model_and_foreign_labels(run_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DistilError, match="already exists"):
        export_main(str(run_dir / "student"), str(tmp_path / "taken"))
    with pytest.raises(DistilError, match="does not exist"):
        export_main(str(tmp_path / "nope"), str(tmp_path / "out"))
    bbc = tmp_path / "topics.csv"
    bbc.write_text("text,label\n" + "".join(f"story {i},{'sport' if i % 2 else 'tech'}\n" for i in range(40)))
    with pytest.raises(DistilError, match="not among the model's labels"):
        export_main(str(run_dir / "student"), str(tmp_path / "out"), eval_source=str(bbc))
    assert not (tmp_path / "out").exists()


def test_label_names_fall_back_to_label_i():
    assert model_label_names({"num_labels": 3}) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert model_label_names({"id2label": {"0": "neg", "1": "pos"}}) == ["neg", "pos"]
