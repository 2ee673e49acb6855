"""B7: one process against several (torchrun, gloo on CPU): the teacher cache's build, a training step, the metrics.

The same `distil run` twice, each with its own fresh cache and run folder: once in one process (its torch threads:
all cores), once under `torch.distributed.run --nproc_per_node N` (torchrun gives each process one thread), with the
same global batch (per-device batch = --batch // N). The teacher is a fine-tuned classifier used as it is
(`--teacher.fine_tune false`), so both runs start from the same teacher: the cache build is the teacher over the
training rows, computed whole (1 process) or in N slices gathered by the main process. The student is the config's,
trained --epochs on the cached soft labels (no baseline). Read from each run's own files: the cache build's seconds
(soft_labels.json; the N-process entry's meta.json holds each slice's seconds), the student's training seconds and
optimiser steps (student/training_history.json), test accuracy (report.json).

A 2-core machine has no spare hardware for a second process: the two processes share the cores that one process
used with two threads, so this measures the cost of the coordination (the slices, the gather, DDP's gradient
all-reduce over gloo), not a speedup. A matmul calibration before each run records the machine's speed then.

    .venv/bin/python benchmarks/b7_processes.py --teacher runs/tune-mpnet/teacher \\
        --student sentence-transformers/all-MiniLM-L6-v2 --rows 4000 --out benchmarks/results/b7_processes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def calibrate(seconds: float = 2.0) -> float:
    """GFLOP/s of a 512 x 512 fp32 matmul loop at this moment (the machine's speed drifts)."""
    a = torch.randn(512, 512)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - start) / 1e9


def run(args, nproc: int, root: Path) -> dict:
    out, cache = root / f"run-{nproc}", root / f"cache-{nproc}"
    for path in (out, cache):
        shutil.rmtree(path, ignore_errors=True)
    flags = [
        "run", "--teacher.model", args.teacher, "--teacher.fine_tune", "false", "--output_dir", str(out),
        "--cache_dir", str(cache), "--data.max_train_samples", str(args.rows), "--data.extra_test_sets", "[]",
        "--distill.epochs", str(args.epochs), "--distill.batch_size", str(args.batch // nproc),
        "--baseline", "false", "--eval.latency_repeats", "2", "--eval.latency_batch_sizes", "[1]",
        "--teacher.soft_label_batch_size", "64",
    ]  # fmt: skip
    if args.student:
        flags += ["--student.init", "pretrained", "--student.pretrained", args.student,
                  "--student.allow_different_vocab", "true"]  # fmt: skip
    launcher = [sys.executable, "-m", "distil.cli"]
    if nproc > 1:
        launcher[1:2] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                         "--max_restarts", "0", "-m"]  # fmt: skip
    gflops = calibrate()
    start = time.perf_counter()
    proc = subprocess.run(
        [*launcher, *flags], env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"b7: the {nproc}-process run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    soft = json.loads((out / "soft_labels.json").read_text())
    meta = json.loads((Path(soft["path"]) / "meta.json").read_text())
    history = json.loads((out / "student" / "training_history.json").read_text())
    report = json.loads((out / "report.json").read_text())
    student = report["models"]["student"]
    return {
        "processes": nproc,
        "calibration_gflops": round(gflops, 1),
        "wall_seconds": round(wall, 1),
        "cache_seconds": soft["seconds"],
        "cache_status": soft["status"],
        "slices": meta.get("shards"),
        "train_seconds": round(history["train_seconds"], 1),
        "train_steps": history["stages"][0]["train_steps"] if history.get("stages") else None,
        "seconds_per_step": round(history["train_seconds"] / max(1, history["stages"][0]["train_steps"]), 3),
        "test_accuracy": student["test"]["accuracy"],
        "training_processes": report.get("training_processes"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a fine-tuned classifier folder (e.g. runs/x/teacher)")
    parser.add_argument("--student", default=None, help="a pretrained student (default: the config's student)")
    parser.add_argument("--rows", type=int, default=4000, help="training rows (the cache's size)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32, help="the global batch (per-device = batch / processes)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs, interleaved; ratios are medians")
    parser.add_argument("--out", default="benchmarks/results/b7_processes")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for repeat in range(args.repeats):  # interleaved: 1 N, N 1, 1 N, ...
        order = (1, args.nproc) if repeat % 2 == 0 else (args.nproc, 1)
        pair = {n: run(args, n, root) for n in order}
        rows += [dict(pair[n], repeat=repeat) for n in (1, args.nproc)]
    pairs = list(zip(rows[::2], rows[1::2]))

    def median_ratio(key: str) -> float:
        return round(statistics.median(many[key] / one[key] for one, many in pairs), 2)

    summary = {
        "repeats": args.repeats,
        "cache_ratio_median": median_ratio("cache_seconds"),
        "step_ratio_median": median_ratio("seconds_per_step"),
        "accuracy_difference_points": [round(100 * (m["test_accuracy"] - o["test_accuracy"]), 2) for o, m in pairs],
        "cpu_cores": os.cpu_count(),
    }
    (root / "b7_processes.json").write_text(
        json.dumps({"args": vars(args), "runs": rows, "summary": summary}, indent=2)
    )
    columns = ["repeat", "processes", "cache build s", "train s", "steps", "s / step", "test acc", "wall s",
               "GFLOP/s before"]  # fmt: skip
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [r["repeat"], r["processes"], f"{r['cache_seconds']:.1f}", f"{r['train_seconds']:.1f}",
                 r["train_steps"], f"{r['seconds_per_step']:.3f}", f"{100 * r['test_accuracy']:.2f}",
                 f"{r['wall_seconds']:.0f}", f"{r['calibration_gflops']:.0f}"]  # fmt: skip
        table.append("| " + " | ".join(str(c) for c in cells) + " |")
    (root / "b7_processes.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
