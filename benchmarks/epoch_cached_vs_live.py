"""One distillation epoch with cached soft labels vs with the teacher running live, interleaved, median of N.

Same teacher (a finished run's, or the packaged MiniLM with a fresh head), same student (3 teacher layers), same
rows, batch size, bf16 setting and loss (logits only: 0.5*CE + 0.5*T^2*KL). Only the teacher signal differs.

    .venv/bin/python benchmarks/epoch_cached_vs_live.py --run runs/default --rows 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: no spinning threads on a shared machine

from distil.config import load_config, merge, to_dict  # noqa: E402
from distil.engine import stages as pipeline  # noqa: E402
from distil.engine.trainer import Distiller  # noqa: E402
from distil.io import write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/default")
    parser.add_argument("--rows", type=int, default=2048, help="training rows in the epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/epoch_cached_vs_live.json")
    args = parser.parse_args()

    run = Path(args.run)
    teacher_path = str(run / "teacher") if (run / "teacher" / "config.json").is_file() else None
    overrides = {
        "output_dir": "benchmarks/results/epoch-work",
        "data": {"max_train_samples": args.rows},
        "distill": {"epochs": 1.0, "save_steps": 0},
    }
    if teacher_path:
        overrides["teacher"] = {"model": teacher_path}
    cfg = load_config(None, merge(to_dict(load_config()), overrides))
    ctx = pipeline.Context(cfg)
    ctx.load_data()
    teacher = pipeline.load_classifier(
        teacher_path or pipeline.resolve_model(cfg.teacher.model), num_labels=len(ctx.data.label_names)
    ).eval()
    soft = pipeline.run_soft_labels(ctx, teacher)
    times: dict[str, list[float]] = {"cached": [], "live": []}
    for _ in range(args.repeats):
        for mode in ("cached", "live"):
            student = pipeline.build_student(ctx, teacher)
            distiller = (
                Distiller(cfg.loss, soft_labels=soft) if mode == "cached" else Distiller(cfg.loss, teacher=teacher)
            )
            history = pipeline._fit(ctx, f"epoch-{mode}", student, cfg.distill, distiller, evaluate=False)
            times[mode].append(history["train_seconds"])  # trainer.train() only, not the final evaluation
            print(f"{mode}: {times[mode][-1]:.1f}s", flush=True)
    ratios = [live / cached for cached, live in zip(times["cached"], times["live"])]
    result = {
        "rows": args.rows,
        "teacher": teacher_path or cfg.teacher.model,
        "bf16": cfg.distill.bf16,
        "seconds": times,
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "live_over_cached": {"per_round": ratios, "median": statistics.median(ratios)},
        "load_average": os.getloadavg(),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
