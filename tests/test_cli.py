"""The real CLI end to end on a tiny teacher and a few hundred real Rotten Tomatoes rows.

Also bad inputs, and kill -9 during distillation followed by --resume.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import small_run_flags

from distil.cli import main

FAST = [
    "--data.max_train_samples",
    "320",
    "--data.max_eval_samples",
    "96",
    "--data.max_length",
    "32",
    "--teacher.train.epochs",
    "1",
    "--teacher.train.bf16",
    "false",
    "--distill.bf16",
    "false",
    "--eval.latency_repeats",
    "2",
    "--eval.latency_batch_sizes",
    "[1, 8]",
    "--teacher.train.learning_rate",
    "0.001",
    "--distill.learning_rate",
    "0.001",
]


def _cli(*args, env_extra=None, **popen):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "distil.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _run_args(teacher, out, cache, *extra):
    return ["run", "--teacher.model", teacher, "--output_dir", str(out), "--cache_dir", str(cache), *FAST, *extra]


def test_run_kill_resume_matches_uninterrupted(tiny_teacher_dir, tmp_path):
    cache = tmp_path / "cache"
    extra = ("--distill.epochs", "3", "--data.extra_test_sets", "[vader-nyt]")
    # 1. uninterrupted
    full = _cli(*_run_args(tiny_teacher_dir, tmp_path / "full", cache, *extra))
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out[-3000:]
    # 2. killed with SIGKILL right after the student's first checkpoint, then resumed
    killed_dir = tmp_path / "killed"
    proc = _cli(*_run_args(tiny_teacher_dir, killed_dir, cache, *extra))
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if list((killed_dir / "work" / "student").glob("checkpoint-*/trainer_state.json")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed_dir / "student").exists() and not (killed_dir / "report.json").exists()
    refused = _cli(*_run_args(tiny_teacher_dir, killed_dir, cache, *extra))
    text, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "holds an unfinished run; pass --resume" in text
    resumed = _cli(*_run_args(tiny_teacher_dir, killed_dir, cache, *extra, "--resume"))
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    assert "student: resuming from" in text and "soft labels: hit" in text

    a = json.loads((tmp_path / "full" / "report.json").read_text())
    b = json.loads((killed_dir / "report.json").read_text())
    for stage in ("teacher", "student", "baseline"):
        assert a["models"][stage]["test"] == b["models"][stage]["test"], stage
        assert a["models"][stage]["vader-nyt"] == b["models"][stage]["vader-nyt"], stage
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full" / "student" / "model.safetensors")
    wb = load_file(killed_dir / "student" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)

    # the saved student is an ordinary HF classifier with the label names
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(killed_dir / "student")
    assert student.config.id2label == {0: "fresh", 1: "rotten"} and student.config.num_hidden_layers == 2
    report = b
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    assert report["models"]["student"]["parameters"] < report["models"]["teacher"]["parameters"]
    assert report["data"]["splits"] == {"train": 320, "validation": 96, "test": 96}
    assert report["soft_labels"]["status"] == "hit"
    assert len(report["verdicts"]) == 2 and report["verdicts"][0].startswith("test: distilled student")
    for name in (
        "report.md",
        "plots/training_curves.png",
        "plots/comparison.png",
        "config.yaml",
        "teacher/training_history.json",
        "student/tokenizer.json",
    ):
        assert (killed_dir / name).is_file(), name
    assert "| distilled student |" in (killed_dir / "report.md").read_text()
    assert list((killed_dir / "work" / "student").rglob("events.out.tfevents*")), "no TensorBoard logs"

    # predict with the saved student, from arguments and from a file
    texts = tmp_path / "texts.txt"
    texts.write_text("a triumph, funny and moving\n\na dull, lifeless mess\n")
    pred = _cli("predict", str(killed_dir / "student"), "what a film", "--file", str(texts), "--json")
    out, _ = pred.communicate(timeout=300)
    assert pred.returncode == 0, out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == ["what a film", "a triumph, funny and moving", "a dull, lifeless mess"]
    assert all(r["label"] in ("fresh", "rotten") and 0.5 <= r["score"] <= 1 for r in rows)

    # a finished run is never overwritten silently
    again = _cli(*_run_args(tiny_teacher_dir, killed_dir, cache, *extra))
    text, _ = again.communicate(timeout=300)
    assert again.returncode == 2 and "already holds a finished run; pass --overwrite" in text


def _error(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]  # progress bars may precede it on stderr; the error itself is one line
    assert last.startswith("distil: error: ") and err.count("distil: error") == 1, err
    return last


def test_bad_inputs_get_one_line(tmp_path, capsys, tiny_teacher_dir):
    out = ["--output_dir", str(tmp_path / "o"), "--cache_dir", str(tmp_path / "c")]
    assert "does not exist" in _error(capsys, "teacher", "--data.source", str(tmp_path / "no.csv"), *out)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "is empty" in _error(capsys, "teacher", "--data.source", str(empty), *out)
    csv = tmp_path / "d.csv"
    csv.write_text("review,label\n" + "\n".join(f"text {i},{'pos' if i % 2 else 'neg'}" for i in range(30)))
    assert "column 'text' is missing" in _error(capsys, "teacher", "--data.source", str(csv), *out)
    assert "unknown label 'pos'" in _error(
        capsys,
        "teacher",
        "--data.source",
        str(csv),
        "--data.text_column",
        "review",
        "--data.labels",
        "[neg, neutral]",
        *out,
    )
    assert "'loss.alpha'" in _error(capsys, "run", "--loss.alpha", "2", *out)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data:\n  sourec: x\n")
    assert "'data.sourec' is unknown" in _error(capsys, "run", str(bad_yaml), *out)


def test_pickle_checkpoint_refused_and_never_loaded(tmp_path, capsys, monkeypatch, tiny_teacher_dir):
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((Path(tiny_teacher_dir) / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, bad / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a checkpoint"))
    err = _error(
        capsys,
        "teacher",
        "--teacher.model",
        str(bad),
        "--output_dir",
        str(tmp_path / "o"),
        "--data.max_train_samples",
        "50",
    )
    assert "not safetensors" in err


def test_layer_list_out_of_range_and_foreign_tokenizer(tmp_path, capsys, tiny_teacher_dir, make_tiny_bert):
    out = [*small_run_flags(tmp_path / "o", tmp_path / "c"), "--teacher.fine_tune", "false"]
    assert main(["teacher", "--teacher.model", tiny_teacher_dir, *out]) == 0
    capsys.readouterr()
    err = _error(capsys, "student", "--teacher.model", tiny_teacher_dir, "--student.layers", "[0, 9]", *out)
    assert "9" in err and "0..3" in err
    # a pretrained student whose vocabulary differs from the teacher's
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "good", "bad"]))
    other = tmp_path / "other-student"
    make_tiny_bert().save_pretrained(other)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(other)
    err = _error(
        capsys,
        "student",
        "--teacher.model",
        tiny_teacher_dir,
        "--student.init",
        "pretrained",
        "--student.pretrained",
        str(other),
        *out,
    )
    assert "vocabular" in err.lower()


def test_a_stage_command_on_an_existing_run_reads_the_runs_config(tmp_path, capsys, tiny_teacher_dir):
    from distil.cli import main
    from distil.config import load_config

    out = tmp_path / "run"
    first = [*small_run_flags(out, tmp_path / "cache"), "--data.extra_test_sets", "[]"]
    assert main(["teacher", "--teacher.model", tiny_teacher_dir, "--teacher.fine_tune", "false", *first]) == 0
    capsys.readouterr()
    # no config, no data flags: the run's own config.yaml, not the embedded default (MiniLM, 64 tokens, vader sets)
    assert main(["soft-labels", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"config: {out / 'config.yaml'} (the run's own)" in printed
    assert "(64, 2)" in printed  # the 64 training rows of the saved config
    saved = load_config(str(out / "config.yaml"))
    assert saved.data.max_length == 16 and saved.teacher.model == tiny_teacher_dir
    assert saved.data.extra_test_sets == []
