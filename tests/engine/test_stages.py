"""Multi-stage recipes through the real CLI entry point: TinyBERT's general + task stages with augmentation."""

import json

import pytest

from distil.cli import main
from distil.config import load_config


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, tokenizer):
    from conftest import _tiny_bert

    path = tmp_path_factory.mktemp("t") / "teacher"
    _tiny_bert(hidden_size=48).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _args(teacher, out, *extra):
    return [
        "run",
        "tinybert",
        "--teacher.model",
        teacher,
        "--output_dir",
        str(out),
        "--cache_dir",
        str(out.parent / "cache"),
        "--data.max_train_samples",
        "96",
        "--data.max_eval_samples",
        "32",
        "--data.max_length",
        "24",
        "--data.extra_test_sets",
        "[]",
        "--teacher.train.epochs",
        "1",
        "--student.hidden_size",
        "32",
        "--student.num_attention_heads",
        "4",
        "--student.intermediate_size",
        "64",
        "--general_data.max_rows",
        "96",
        "--augment.num_variants",
        "2",
        "--eval.latency_repeats",
        "1",
        "--eval.latency_batch_sizes",
        "[1]",
        *extra,
    ]


def test_tinybert_recipe_runs_every_stage(tiny_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_teacher, out)) == 0
    history = json.loads((out / "student" / "training_history.json").read_text())
    names = [s["name"] for s in history["stages"]]
    assert names == ["general", "task-intermediate", "task-prediction"]
    general, inter, pred = history["stages"]
    assert general["data"] == "general" and general["train_rows"] == 96
    assert inter["data"] == "train_augmented" and inter["train_rows"] == 96 * 3  # originals + 2 variants each
    assert pred["teacher_signal"] == "cached soft labels"
    parts = {k for e in inter["log_history"] for k in e if k.startswith("loss_")}
    assert {"loss_embedding", "loss_hidden", "loss_attention"} <= parts and "loss_ce" not in parts
    assert (out / "work" / "stages" / "general.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["student"]["parameters"] < report["models"]["teacher"]["parameters"]
    printed = capsys.readouterr().out
    assert "augmentation: built: 96 -> 288 training rows" in printed

    # resume after the last stage's model was lost: the finished stages are kept, not retrained
    import shutil

    shutil.rmtree(out / "student")
    (out / "report.json").unlink()
    assert main(_args(tiny_teacher, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "stage general: done" in printed and "stage task-intermediate: done" in printed
    assert "augmentation: hit" in printed


def test_skip_stages_and_no_augmentation(tiny_teacher, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            _args(tiny_teacher, out, "--skip_stages", "[general]", "--augment.enabled", "false", "--baseline", "false")
        )
        == 0
    )
    history = json.loads((out / "student" / "training_history.json").read_text())
    assert [s["name"] for s in history["stages"]] == ["task-intermediate", "task-prediction"]
    assert all(s["data"] == "train" for s in history["stages"])
    assert not (out / "baseline").exists()


def test_unknown_skip_stage_is_refused(capsys, tmp_path):
    assert (
        main(
            [
                "run",
                "tinybert",
                "--skip_stages",
                "[genral]",
                "--output_dir",
                str(tmp_path / "o"),
                "--data.max_train_samples",
                "10",
            ]
        )
        == 2
    )
    assert "skip_stages: no stage named 'genral'" in capsys.readouterr().err


def test_every_recipe_loads():
    for name in ("kd", "distilbert", "tinybert", "minilm"):
        cfg = load_config(name)
        assert cfg.loss.uses_features or cfg.stages or name == "kd"


def test_two_teachers_through_the_cli(tiny_teacher, tmp_path, capsys):
    """A second fine-tuned teacher of the same task: each keeps its own cache entry, the student learns from both."""
    common = [
        "--data.max_train_samples",
        "64",
        "--data.max_eval_samples",
        "32",
        "--data.max_length",
        "24",
        "--data.extra_test_sets",
        "[]",
        "--cache_dir",
        str(tmp_path / "cache"),
        "--teacher.fine_tune",
        "false",
        "--eval.latency_repeats",
        "1",
        "--eval.latency_batch_sizes",
        "[1]",
        "--distill.epochs",
        "1",
        "--baseline",
        "false",
    ]
    first = tmp_path / "first"
    fine_tune = ["--teacher.fine_tune", "true", "--teacher.train.epochs", "1"]  # a second, different teacher
    assert main(["teacher", "--teacher.model", tiny_teacher, "--output_dir", str(first), *common, *fine_tune]) == 0
    out = tmp_path / "two"
    assert (
        main(
            [
                "run",
                "kd",
                "--teacher.model",
                tiny_teacher,
                "--teacher.additional",
                f"[{first / 'teacher'}]",
                "--teacher.weights",
                "[0.7, 0.3]",
                "--output_dir",
                str(out),
                *common,
            ]
        )
        == 0
    )
    info = json.loads((out / "soft_labels.json").read_text())
    assert info["teachers"] == 2 and info["status"].count("teacher") == 2
    entries = [p for p in (tmp_path / "cache" / "soft_labels").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2  # one verified cache entry per teacher
    assert (out / "student" / "model.safetensors").is_file()
