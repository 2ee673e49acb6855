"""What every benchmark shares: a steady environment, a matmul calibration, per-round medians, and the JSON +
markdown + PNG each one writes to benchmarks/results/.

Import this module before torch: it sets OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning,
which otherwise steals the 2 cores from the next system timed), offline Hugging Face, and quiet tokenizers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent


def setup_torch(threads: int) -> None:
    """Fix the intra-op thread count and silence Transformers' load chatter."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()


def calibrate(n: int = 1024, repeats: int = 7) -> float:
    """Median GFLOP/s of an (n x n) @ (n x n) fp32 matmul: a yardstick for how fast the machine is right now."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


class Calibration:
    """A log of matmul speed and load average, taken at the start, between rounds and at the end."""

    def __init__(self):
        self.entries: list[dict] = []

    def log(self, label: str) -> float:
        gflops = calibrate()
        self.entries.append({"at": label, "matmul_gflops": round(gflops, 1), "loadavg_1m": os.getloadavg()[0]})
        print(f"[calibration] {label}: {gflops:.1f} GFLOP/s, load average {os.getloadavg()[0]:.2f}", flush=True)
        return gflops

    def summary(self) -> dict:
        g = [e["matmul_gflops"] for e in self.entries]
        return {
            "entries": self.entries,
            "min_gflops": min(g),
            "max_gflops": max(g),
            "drift": round(max(g) / min(g), 2) if min(g) > 0 else None,
        }


def machine_info(threads: int) -> dict:
    """CPU, versions, threads and the load average when the benchmark started."""
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "loadavg_start": list(os.getloadavg()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def write_results(name: str, payload: dict, markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under the results directory; returns both paths."""
    out = Path(out_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def new_figure(width: float = 9.0, height: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(fig, name: str, out_dir: Path | None = None) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def environment_note(info: dict, calibration: dict) -> str:
    """One markdown paragraph: machine, threads, load, and how much the machine's speed drifted meanwhile."""
    load = ", ".join(f"{x:.2f}" for x in info["loadavg_start"])
    loads = [e["loadavg_1m"] for e in calibration["entries"]]
    return (
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['threads']} torch threads, "
        f"OMP_WAIT_POLICY={info['omp_wait_policy']}; torch {info['torch']}, transformers {info['transformers']}; "
        f"{info['date']}. Load average at start (1/5/15 min): {load}; during the run (1 min): "
        f"{min(loads):.2f}-{max(loads):.2f} (the machine was shared with other jobs). Matmul calibration "
        f"(1024^2 fp32): {calibration['min_gflops']:.1f}-{calibration['max_gflops']:.1f} GFLOP/s "
        f"(max/min {calibration['drift']}).\n"
    )


def now() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads): CPU time is what a step costs in work, so
    it moves far less than wall time when another job takes cores away."""
    return time.perf_counter(), time.process_time()


def intervals(marks: list[tuple[float, float]], skip: int = 0) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds between consecutive ``now()`` marks, dropping the first ``skip`` intervals."""
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])][skip:]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])][skip:]
    return wall, cpu
