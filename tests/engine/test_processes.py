"""Several processes: the teacher cache built in slices and gathered once, the main process alone writing the run
folder, the projections kept equal, kill and resume; real `torchrun` runs of the CLI on CPU (gloo) with a tiny
model, plus the slice arithmetic and the merge on hand-made parts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from distil.cli import main
from distil.config import TrainConfig
from distil.engine import processes
from distil.engine.cache_shards import merge_parts, slice_of
from distil.engine.run_dir import last_checkpoint, open_work_dir
from distil.engine.trainer import training_arguments
from distil.errors import DistilError
from distil.io import write_json

SMALL = [
    "--data.max_train_samples", "320", "--data.max_eval_samples", "96", "--data.max_length", "32",
    "--data.extra_test_sets", "[]", "--teacher.train.epochs", "1", "--teacher.train.bf16", "false",
    "--distill.bf16", "false", "--eval.latency_repeats", "2", "--eval.latency_batch_sizes", "[1]",
    "--teacher.train.learning_rate", "0.001", "--distill.learning_rate", "0.001",
]  # fmt: skip


def _launch(args: list[str], audit: Path | None = None, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", processes.TIMEOUT_ENV: "120"}
    if audit is not None:
        env[processes.AUDIT_ENV] = str(audit)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--max_restarts", "0", "-m", "distil.cli", *args]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(args: list[str], audit: Path | None = None, nproc: int = 2) -> str:
    proc = _launch(args, audit, nproc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_slices_cover_every_row_once():
    for n in (0, 1, 5, 320, 1001):
        for w in (1, 2, 3, 8):
            rows = [r for k in range(w) for r in slice_of(n, k, w)]
            assert rows == list(range(n))


def _part(parts: Path, rank: int, rows: range, arrays: dict) -> None:
    folder = parts / f"rank-{rank}"
    folder.mkdir(parents=True)
    kinds = {}
    for name, (data, offsets) in arrays.items():
        np.save(folder / f"{name}.npy", data)
        if offsets is not None:
            np.save(folder / f"{name}.offsets.npy", offsets)
        kinds[name] = "fixed" if offsets is None else "per_token"
    write_json(folder / "done.json", {"rank": rank, "rows": [rows.start, rows.stop], "seconds": 0.1, "arrays": kinds})


def test_merge_puts_fixed_and_per_token_slices_in_row_order(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)  # 5 rows
    lengths = np.array([2, 1, 3, 2, 4])
    tokens = rng.normal(size=(int(lengths.sum()), 2)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    parts = tmp_path / "parts"
    for rank in (1, 0):  # written out of order
        rows = slice_of(5, rank, 2)
        local = offsets[rows.start : rows.stop + 1] - offsets[rows.start]
        piece = tokens[offsets[rows.start] : offsets[rows.stop]]
        _part(parts, rank, rows, {"logits": (logits[rows.start : rows.stop], None), "tok": (piece, local)})
    out = tmp_path / "entry"
    out.mkdir()
    merged, records = merge_parts(parts, out, 5)
    assert np.array_equal(merged["logits"].data, logits) and merged["logits"].offsets is None
    assert np.array_equal(merged["tok"].data, tokens) and np.array_equal(merged["tok"].offsets, offsets)
    assert [r["rows"] for r in records] == [[0, 2], [2, 5]]


def test_merge_takes_empty_slices_when_rows_are_fewer_than_processes(tmp_path):
    parts, logits = tmp_path / "parts", np.arange(6, dtype=np.float32).reshape(3, 2)
    for rank in (3, 1, 0, 2):
        rows = slice_of(3, rank, 4)
        _part(parts, rank, rows, {"logits": (logits[rows.start : rows.stop], None)} if len(rows) else {})
    merged, records = merge_parts(parts, tmp_path, 3)
    assert np.array_equal(merged["logits"].data, logits) and [r["rank"] for r in records] == [0, 1, 2, 3]


def test_merge_refuses_a_missing_slice(tmp_path):
    parts = tmp_path / "parts"
    _part(parts, 0, range(0, 2), {"logits": (np.zeros((2, 3), np.float32), None)})
    with pytest.raises(ValueError, match="do not cover rows 0..4"):
        merge_parts(parts, tmp_path, 5)


def test_resume_refuses_another_number_of_processes(tmp_path):
    write_json(tmp_path / "launch.json", {"processes": 2})
    with pytest.raises(DistilError, match="trained by 2 processes, this launch has 1"):
        last_checkpoint(tmp_path, [])


def test_a_stage_of_an_older_run_keeps_its_process_count(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "rng_state.pth").write_bytes(b"")  # one process wrote it, before launch.json existed
    open_work_dir(tmp_path, resume=True, needs=[])
    assert json.loads((tmp_path / "launch.json").read_text()) == {"processes": 1}


def test_resume_passes_over_a_checkpoint_cut_short(tmp_path):
    for step, files in ((5, ["trainer_state.json"]), (10, ["model.safetensors"])):  # 10: killed while saving
        (tmp_path / f"checkpoint-{step}").mkdir()
        for f in files:
            (tmp_path / f"checkpoint-{step}" / f).write_text("{}")
    assert last_checkpoint(tmp_path, []) == str(tmp_path / "checkpoint-5")
    assert last_checkpoint(tmp_path, ["distiller.safetensors"]) is None


def test_commands_that_run_in_one_process_are_refused_under_a_launcher(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["tune", "configs/tune-2layer.yaml"]) == 2
    assert "distil tune runs in one process; launch it without torchrun" in capsys.readouterr().err


def test_two_processes_build_the_cache_once_in_slices_and_only_the_main_one_writes(tiny_teacher_dir, tmp_path):
    out, cache, audit = tmp_path / "run", tmp_path / "cache", tmp_path / "audit"
    args = ["run", "--teacher.model", tiny_teacher_dir, "--output_dir", str(out), "--cache_dir", str(cache), *SMALL]
    log = _run(args, audit)
    entries = list((cache / "soft_labels").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # one entry, no slices left behind
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert [(s["rank"], s["rows"]) for s in meta["shards"]] == [(0, [0, 160]), (1, [160, 320])]
    assert "process 0 of 2 computed rows 0..159" in log and "process 1 of 2 computed rows 160..319" in log
    report = json.loads((out / "report.json").read_text())
    assert report["training_processes"] == 2 and "trained by 2 processes" in (out / "report.md").read_text()
    assert json.loads((out / "work" / "student" / "launch.json").read_text()) == {"processes": 2}
    # rank 1 wrote its slice in the cache and nothing in the run folder but the Trainer's checkpoint folders
    # (where the Trainer saves each process's random state)
    written = (audit / "writes-rank1.txt").read_text().splitlines()
    assert any(".parts/rank-1/logits.npy" in line for line in written)
    in_run = [line for line in written if str(out) in line]
    checkpoint = re.compile(rf"os.mkdir {re.escape(str(out))}/work/\w+/checkpoint-\d+ \d+")
    assert in_run and all(checkpoint.fullmatch(line) for line in in_run), in_run
    assert not (audit / "writes-rank0.txt").exists()


def test_projections_stay_equal_across_processes(tiny_teacher_dir, tmp_path):
    args = ["run", "--teacher.model", tiny_teacher_dir, "--output_dir", str(tmp_path / "run"), "--cache_dir",
            str(tmp_path / "cache"), *SMALL, "--student.init", "config", "--student.num_layers", "2",
            "--student.hidden_size", "16", "--student.num_attention_heads", "2", "--student.intermediate_size", "32",
            "--loss.hidden_weight", "1", "--baseline", "false"]  # fmt: skip
    log = _run(args)
    sums = {rank: value for value, rank in re.findall(r"checksum (\S+) on process (\d)", log)}
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], log[-3000:]


def test_killing_one_process_then_resuming_finishes_the_run(tiny_teacher_dir, tmp_path):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    args = ["run", "--teacher.model", tiny_teacher_dir, "--output_dir", str(out), "--cache_dir", str(cache), *SMALL,
            "--distill.epochs", "30", "--baseline", "false"]  # fmt: skip
    proc = _launch(args)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None and not killed:
        if list((out / "work" / "student").glob("checkpoint-*/trainer_state.json")):
            for child in psutil.Process(proc.pid).children(recursive=True):
                if child.environ().get("RANK") == "1":
                    child.kill()
                    killed = True
        time.sleep(0.05)
    log, _ = proc.communicate(timeout=300)
    assert killed and proc.returncode != 0, log[-3000:]
    assert not (out / "report.json").exists()
    resumed = _run([*args, "--resume"])
    assert re.search(r"student: resuming from .*checkpoint-\d+", resumed), resumed[-3000:]
    assert json.loads((out / "report.json").read_text())["training_processes"] == 2


def test_trainer_args_reach_the_trainer_and_override_distil_values(tmp_path):
    extra = {"lr_scheduler_type": "cosine", "save_total_limit": 5, "ddp_find_unused_parameters": False}
    args = training_arguments(TrainConfig(trainer_args=extra), tmp_path, seed=0, num_train_rows=64)
    assert (args.lr_scheduler_type, args.save_total_limit, args.ddp_find_unused_parameters) == ("cosine", 5, False)
    assert training_arguments(TrainConfig(), tmp_path, seed=0, num_train_rows=64).save_total_limit == 2


@pytest.mark.parametrize(
    "given, expected",
    [
        ("{fsdp_confg: {}}", "expected names of transformers.TrainingArguments fields"),
        ("{per_device_train_batch_size: 8}", "trainer_args.per_device_train_batch_size': got 8; expected unset: use "
         "train.batch_size"),
        ("{fsdp: full_shard}", "expected unset: use nothing yet: sharded training (FSDP, DeepSpeed)"),
        ("{ddp_timeout: 60}", "use DISTIL_DDP_TIMEOUT"),
    ],
)  # fmt: skip
def test_trainer_args_refused_in_one_line(given, expected, capsys):
    assert main(["run", "--distill.trainer_args", given, "--output_dir", "/tmp/unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
