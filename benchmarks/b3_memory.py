"""B3: memory. Peak RSS of a short distillation run, and the soft-label cache's RSS as it grows to 1M rows.

1. Distillation runs, each in a fresh subprocess: read and tokenise the data, load the teacher, build (or find) the
   soft labels, cut the student, train it for --steps DistillationTrainer steps. The child reports its RSS after
   each phase; the parent samples the child's RSS every 50 ms and takes its peak (ru_maxrss) from wait4.
   "cached" trains from the soft-label cache; "live" runs the teacher every step instead. These are distil's own
   pipeline stages (distil.engine.stages.run_teacher, run_student) on a small config, the teacher not fine-tuned.
2. Soft-label cache at 10k, 100k and 1M synthetic rows (x --classes): entries written through
   SoftLabelCache.get_or_build, then a fresh subprocess opens each (checksum verified) and looks up --batches
   random batches of 32 rows spread over the whole cache. Linux counts two kinds of resident memory: anonymous
   (RssAnon: the process's own allocations) and file-backed (RssFile: pages of the memory-mapped logits.npy
   that were touched, which the kernel drops under pressure). The cache must keep RssAnon flat as it grows; for
   contrast, "in-memory" loads the same array with np.load (no mmap).

    python benchmarks/b3_memory.py
    python benchmarks/b3_memory.py --rows 2000 --steps 60 --sizes 10000,100000,1000000,10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness  # first: sets OMP_WAIT_POLICY before torch loads

STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile of a process in MB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            out[key] = int(value.split()[0]) / 1024  # kB -> MB
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=640, help="training rows of the distillation runs")
    p.add_argument("--steps", type=int, default=20, help="training steps of the distillation runs")
    p.add_argument("--modes", default="cached,live", help="distillation runs to measure")
    p.add_argument("--sizes", default="10000,100000,1000000", help="synthetic cache rows")
    p.add_argument("--classes", default="2,64", help="logit columns of the synthetic caches (2: binary task)")
    p.add_argument("--batches", type=int, default=2000, help="random 32-row lookups per cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- children


def child_distill(spec: dict) -> dict:
    """distil's own stages (teacher -> soft labels -> student), as `distil run` chains them, minus the report."""
    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import TrainerCallback

    from distil.config import load_config
    from distil.engine import stages as pipeline

    phases = {"python + imports": proc_status()}

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            phases["student: training starts (soft labels, student built)"] = proc_status()

        def on_train_end(self, args, state, control, **kwargs):
            phases["student: training ends"] = proc_status()

    cfg = load_config(None, {
        "output_dir": spec["work"], "cache_dir": spec["cache_dir"], "baseline": False,
        "data": {"max_train_samples": spec["rows"], "max_eval_samples": 64, "extra_test_sets": []},
        "teacher": {"fine_tune": False},
        "distill": {"epochs": spec["steps"] * 32 / spec["rows"], "logging_steps": 5},
    })  # fmt: skip
    ctx = pipeline.Context(cfg, callbacks=[Marks()])
    ctx.load_data()
    phases["data tokenised"] = proc_status()
    pipeline.run_teacher(ctx)
    phases["teacher loaded and saved (not fine-tuned)"] = proc_status()
    pipeline.run_student(ctx, live_teacher=spec["mode"] == "live")
    phases["student evaluated and saved"] = proc_status()
    return {"phases": phases}


def child_lookup(spec: dict) -> dict:
    import numpy as np
    import torch

    from distil.engine.teacher_cache import SoftLabelCache, SoftLabels

    torch.set_num_threads(spec["threads"])
    before = proc_status()
    start = time.perf_counter()
    if spec["in_memory"]:
        logits = np.load(Path(spec["root"]) / "soft_labels" / spec["key"] / "logits.npy")
        status = "in-memory"
    else:
        logits, status = SoftLabelCache(spec["root"]).check(spec["key"], spec["rows"])
        assert logits is not None, status
    soft = SoftLabels(logits, spec["key"], status, Path(spec["root"]))
    open_seconds = time.perf_counter() - start
    opened = proc_status()
    g = torch.Generator().manual_seed(0)
    times = []
    checksum = 0.0
    for _ in range(spec["batches"]):
        idx = torch.randint(0, spec["rows"], (32,), generator=g)
        t0 = time.perf_counter()
        out = soft.lookup(idx)  # (32, C)
        times.append(time.perf_counter() - t0)
        checksum += float(out[0, 0])
    after = proc_status()
    return {"before": before, "opened": opened, "after": after, "open_seconds": open_seconds,
            "lookup_us_median": 1e6 * float(np.median(times)), "checksum": checksum}  # fmt: skip


def run_child(kind: str, spec: dict, threads: int) -> dict:
    """Run this script as a child, sample its RSS every 50 ms, and take its peak from wait4."""
    cmd = [sys.executable, __file__, "--child", kind, "--child-args", json.dumps({**spec, "threads": threads})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()

    def sample():
        while proc.returncode is None:
            try:
                samples.append((time.perf_counter() - start, proc_status(proc.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join(timeout=1)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} exited with {proc.returncode}; run: {' '.join(cmd)}")
    result = json.loads(output.strip().splitlines()[-1])
    result.update({"ru_maxrss_mb": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - start,
                   "timeline": samples[::4]})  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------- parent


def build_synthetic(root: Path, rows: int, classes: int) -> tuple[str, float]:
    import numpy as np

    from distil.engine.teacher_cache import SoftLabelCache

    def compute(path):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, classes))
        rng = np.random.default_rng(rows + classes)
        for start in range(0, rows, 100_000):
            stop = min(rows, start + 100_000)
            out[start:stop] = rng.standard_normal((stop - start, classes), dtype=np.float32)
        return out

    key = f"synthetic-{rows}x{classes}"
    start = time.perf_counter()
    SoftLabelCache(root).get_or_build(key, rows, compute, description="b3 synthetic")
    return key, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child_args)
        result = child_distill(spec) if args.child == "distill" else child_lookup(spec)
        print(json.dumps(result))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    harness.setup_torch(args.threads)
    info = harness.machine_info(args.threads)
    calibration = harness.Calibration()
    calibration.log("start")
    work = Path(tempfile.mkdtemp(prefix="b3-", dir=args.out))
    try:
        runs = {}
        for mode in [m for m in args.modes.split(",") if m]:
            spec = {"mode": mode, "rows": args.rows, "steps": args.steps, "cache_dir": str(work / "cache"),
                    "work": str(work / f"trainer-{mode}")}  # fmt: skip
            runs[mode] = run_child("distill", spec, args.threads)
            print(f"distillation ({mode}): peak RSS {runs[mode]['ru_maxrss_mb']:.0f} MB "
                  f"in {runs[mode]['seconds']:.0f}s", flush=True)  # fmt: skip
        calibration.log("after distillation runs")
        caches = []
        for classes in [int(c) for c in args.classes.split(",")]:
            for rows in [int(n) for n in args.sizes.split(",")]:
                key, build_seconds = build_synthetic(work / "synthetic", rows, classes)
                file_mb = (work / "synthetic" / "soft_labels" / key / "logits.npy").stat().st_size / 1e6
                for in_memory in (False, True):
                    spec = {"root": str(work / "synthetic"), "key": key, "rows": rows, "batches": args.batches,
                            "in_memory": in_memory}  # fmt: skip
                    r = run_child("lookup", spec, args.threads)
                    r.update({"rows": rows, "classes": classes, "file_mb": file_mb, "build_seconds": build_seconds,
                              "how": "np.load (in memory)" if in_memory else "SoftLabelCache (memmap)"})  # fmt: skip
                    caches.append(r)
                    print(f"cache {rows:>9,} x {classes:<3} {r['how']:24s} RssAnon {r['after']['RssAnon']:7.1f} MB "
                          f"RssFile {r['after']['RssFile']:7.1f} MB open {r['open_seconds']:.2f}s lookup "
                          f"{r['lookup_us_median']:.0f} us", flush=True)  # fmt: skip
                shutil.rmtree(work / "synthetic" / "soft_labels" / key)
        calibration.log("end")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "B3 memory", "machine": info, "calibration": calibration.summary(),
              "setup": {"rows": args.rows, "steps": args.steps, "batches": args.batches}, "distillation": runs,
              "caches": caches, "checks": checks(caches)}  # fmt: skip
    write_outputs(result, args.out)
    return 0


def checks(caches: list[dict]) -> dict:
    out = {}
    for classes in sorted({c["classes"] for c in caches}):
        mm = sorted((c for c in caches if c["classes"] == classes and "memmap" in c["how"]), key=lambda c: c["rows"])
        if len(mm) >= 2:
            grown = [c["after"]["RssAnon"] - c["before"]["RssAnon"] for c in (mm[0], mm[-1])]
            growth = grown[1] - grown[0]
            out[
                f"memmap cache, {classes} classes: RssAnon growth {mm[0]['rows']:,} -> {mm[-1]['rows']:,} rows "
                f"(file {mm[0]['file_mb']:.1f} -> {mm[-1]['file_mb']:.1f} MB)"
            ] = f"{growth:+.1f} MB ({'flat' if abs(growth) < 0.05 * mm[-1]['file_mb'] + 5 else 'NOT flat'})"
    return out


def write_outputs(result: dict, out_dir: Path) -> None:
    f = harness.fmt
    phase_rows = []
    for mode, run in result["distillation"].items():
        for phase, status in run["phases"].items():
            phase_rows.append([mode, phase, f(status["VmRSS"], 0), f(status["RssAnon"], 0), f(status["RssFile"], 0),
                               f(status["VmHWM"], 0)])  # fmt: skip
        phase_rows.append([mode, "**peak (wait4 ru_maxrss)**", f"**{f(run['ru_maxrss_mb'], 0)}**", "", "", ""])
    cache_rows = [[f"{c['rows']:,}", c["classes"], f(c["file_mb"], 1), c["how"], f(c["before"]["RssAnon"], 1),
                   f(c["after"]["RssAnon"], 1), f(c["after"]["RssAnon"] - c["before"]["RssAnon"], 1),
                   f(c["after"]["RssFile"] - c["before"]["RssFile"], 1), f(c["ru_maxrss_mb"], 0),
                   f(c["open_seconds"], 3), f(c["lookup_us_median"], 0)] for c in result["caches"]]  # fmt: skip
    s = result["setup"]
    md = ["## B3 memory\n\n",
          (f"Distillation runs: {s['rows']} rows, {s['steps']} steps, batch 32, MiniLM-L6 teacher, 3-layer student, "
          "fresh subprocess each; RSS in MB from /proc/self/status after each phase.\n\n"),
          harness.md_table(["run", "phase", "VmRSS", "RssAnon", "RssFile", "VmHWM"], phase_rows), "\n",
          (f"Soft-label cache: {s['batches']} random lookups of 32 rows each over the whole cache, a fresh "
          "subprocess for each table row; RSS in MB (before = after imports, before opening). RssFile = "
          "touched pages of the memory-mapped file (page cache: shared, reclaimable); peak RSS (ru_maxrss) counts "
          "them too.\n\n"),
          harness.md_table(["rows", "classes", "file MB", "opened with", "RssAnon before", "RssAnon after",
                            "RssAnon growth", "RssFile growth", "peak RSS", "open s (incl. sha256)",
                            "lookup us (median)"], cache_rows), "\n",
          harness.md_table(["check", "measured"], [[k, v] for k, v in result["checks"].items()]), "\n",
          harness.environment_note(result["machine"], result["calibration"])]  # fmt: skip
    markdown = "".join(md)
    harness.write_results("b3_memory", result, markdown, out_dir)
    fig, _ax = harness.new_figure(11, 5)
    fig.clf()
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for mode, run in result["distillation"].items():
        t = [p[0] for p in run["timeline"]]
        left.plot(t, [p[1] for p in run["timeline"]], label=f"{mode} (peak {run['ru_maxrss_mb']:.0f} MB)")
    left.set_xlabel("seconds")
    left.set_ylabel("RSS MB (sampled)")
    left.set_title("distillation run")
    left.legend()
    for classes in sorted({c["classes"] for c in result["caches"]}):
        for how, style in (("memmap", "-o"), ("in memory", "--x")):
            sub = [c for c in result["caches"] if c["classes"] == classes and how in c["how"]]
            right.plot([c["rows"] for c in sub], [c["after"]["RssAnon"] - c["before"]["RssAnon"] for c in sub], style,
                       label=f"{how}, {classes} classes: RssAnon growth")  # fmt: skip
    right.set_xscale("log")
    right.set_xlabel("cache rows")
    right.set_ylabel("MB")
    right.set_title("soft-label cache lookups")
    right.legend(fontsize=8)
    harness.save_figure(fig, "b3_memory", out_dir)
    print("\n" + markdown)


if __name__ == "__main__":
    sys.exit(main())
