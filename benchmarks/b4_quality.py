"""B4 quality: students x recipes distilled from one fine-tuned teacher, evaluated on the held-out test split.

Reuses a finished run's teacher (default: runs/default/teacher) and its data split, so every cell sees the same
teacher, data and seed. Each cell runs distil's own stages (pipeline._train_student) and is appended to the JSON
as soon as it finishes, so a long matrix can be stopped and resumed (finished cells are skipped).

    .venv/bin/python benchmarks/b4_quality.py --run runs/default            # the whole matrix (long)
    .venv/bin/python benchmarks/b4_quality.py --cells 3L:kd 4x312:tinybert   # some cells
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: no spinning threads on a shared machine

from distil.config import RunConfig, from_dict, load_config, merge, to_dict  # noqa: E402
from distil.engine import stages as pipeline  # noqa: E402
from distil.io import write_json, write_text  # noqa: E402
from distil.models.loading import count_parameters  # noqa: E402
from distil.report.evaluate import evaluate_split, latency_table  # noqa: E402

SIZES = {
    "3L": {"init": "teacher-layers", "layers": [0, 2, 4]},
    "2L": {"init": "teacher-layers", "layers": [1, 4]},
    "4x312": {
        "init": "config",
        "num_layers": 4,
        "hidden_size": 312,
        "num_attention_heads": 12,
        "intermediate_size": 1200,
    },
}
RECIPES = ["no-teacher", "kd", "distilbert", "tinybert", "tinybert-noaug", "tinybert-nogd", "minilm", "minilm-nogd"]
# The cells that answer "which recipe wins at each size" first; the ablations after.
DEFAULT_ORDER = [
    "3L:no-teacher",
    "3L:kd",
    "2L:no-teacher",
    "2L:kd",
    "4x312:no-teacher",
    "4x312:kd",
    "4x312:tinybert",
    "4x312:minilm",
    "3L:distilbert",
    "2L:distilbert",
    "4x312:tinybert-noaug",
    "4x312:tinybert-nogd",
]
PUBLISHED = [("DistilBERT (6L from BERT-base, GLUE)", "97%", "1.6x"), ("TinyBERT-4 (4x312, GLUE)", "96.8%", "9.4x")]


def cell_config(base: dict, size: str, recipe: str, epochs: float, general_rows: int, variants: int) -> dict:
    """The run configuration of one cell, as a dict over the run's own config."""
    cfg = copy.deepcopy(base)
    cfg["student"] = {**cfg["student"], **SIZES[size]}
    cfg["stages"], cfg["skip_stages"] = [], []
    cfg["general_data"] = {**cfg["general_data"], "max_rows": general_rows}
    cfg["augment"] = {**cfg["augment"], "num_variants": variants, "enabled": True}
    cfg["distill"] = {**cfg["distill"], "epochs": epochs}
    name = recipe.split("-")[0]
    if name in ("kd", "distilbert", "tinybert", "minilm"):
        recipe_cfg = load_config(name)
        cfg["loss"] = to_dict(recipe_cfg.loss)
        stages = [to_dict(s) for s in recipe_cfg.stages]
        for s in stages:
            if s["data"] == "task":
                s["train"]["epochs"] = epochs if s["loss"]["logits_weight"] > 0 else 1.0
        cfg["stages"] = stages
        if recipe == "tinybert-noaug":
            cfg["augment"]["enabled"] = False
        if recipe in ("tinybert-nogd", "minilm-nogd"):  # minilm-nogd: the recipe's task stage only (KD, lr 2e-4)
            cfg["skip_stages"] = ["general"]
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/default", help="a finished run whose teacher/ and split are reused")
    parser.add_argument("--cells", nargs="*", default=None, help="SIZE:RECIPE cells (default: all)")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of each task stage with a logit loss")
    parser.add_argument("--general-rows", type=int, default=10000, help="unlabelled texts for general stages")
    parser.add_argument("--variants", type=int, default=1, help="augmented variants per training sentence")
    parser.add_argument("--out", default="benchmarks/results/b4_quality")
    args = parser.parse_args()

    run = Path(args.run)
    if not (run / "teacher" / "config.json").is_file():
        sys.exit(f"b4: {run}/teacher is missing; run `distil run --output_dir {run}` first")
    base = to_dict(load_config(str(run / "config.yaml")))
    base["teacher"] = {**base["teacher"], "model": str(run / "teacher"), "fine_tune": False}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"cells": {}}
    cells = args.cells or DEFAULT_ORDER + [
        f"{s}:{r}" for s in SIZES for r in RECIPES if f"{s}:{r}" not in DEFAULT_ORDER
    ]

    ctx = pipeline.Context(from_dict(RunConfig, merge(base, {"output_dir": str(out / "work")})))
    ctx.load_data()
    teacher = pipeline.load_classifier(str(run / "teacher")).eval()
    num_labels = len(ctx.data.label_names)
    if "teacher" not in results:
        results["teacher"] = {
            "test": evaluate_split(teacher, ctx.datasets["test"], ctx.collator(), num_labels),
            "parameters": count_parameters(teacher),
        }
    for cell in cells:
        if cell in results["cells"]:
            print(f"b4: {cell}: done")
            continue
        size, recipe = cell.split(":")
        cell_dict = cell_config(base, size, recipe, args.epochs, args.general_rows, args.variants)
        cfg = from_dict(RunConfig, merge(cell_dict, {"output_dir": str(out / "work" / cell.replace(":", "-"))}))
        ctx.cfg, ctx.resume = cfg, False
        ctx.datasets.pop("train_augmented", None)
        start = time.perf_counter()
        student = pipeline.build_student(ctx, teacher)
        if recipe == "no-teacher":
            history = pipeline._fit(ctx, "baseline", student, cfg.distill)
            stages = ["ce"]
        else:
            history = pipeline._train_student(ctx, student, teacher, live_teacher=False)
            stages = [s["name"] for s in history["stages"]]
        seconds = time.perf_counter() - start
        student.eval()
        test = evaluate_split(student, ctx.datasets["test"], ctx.collator(), num_labels)
        results["cells"][cell] = {
            "size": size,
            "recipe": recipe,
            "stages": stages,
            "test": test,
            "parameters": count_parameters(student),
            "train_seconds": round(seconds, 1),
            "retention": test["accuracy"] / results["teacher"]["test"]["accuracy"],
        }
        if f"latency:{size}" not in results:
            lat = latency_table({"teacher": teacher, "student": student}, [1, 32], 32, 20)
            results[f"latency:{size}"] = {str(b): lat["teacher"][b] / lat["student"][b] for b in (1, 32)}
        write_json(results_path, results)
        print(f"b4: {cell}: test accuracy {100 * test['accuracy']:.2f} in {seconds:.0f}s", flush=True)
        del student
    write_text(out.parent / "b4_quality.md", render(results))
    print(render(results))
    return 0


def render(results: dict) -> str:
    t = results["teacher"]["test"]["accuracy"]
    lines = [
        "## B4 quality: teacher vs students by recipe (Rotten Tomatoes test split)",
        "",
        f"Teacher all-MiniLM-L6-v2 fine-tuned: {100 * t:.2f}% test accuracy, "
        f"{results['teacher']['parameters'] / 1e6:.2f}M parameters. 97% of the teacher = {97 * t:.2f}%.",
        "",
        "| student | recipe | stages | test acc | macro-F1 | of teacher | gap to 97% | params | speedup b1 / b32 "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(r: dict) -> tuple[int, int]:  # by student size, then recipe
        sizes, recipes = list(SIZES), RECIPES
        return (sizes.index(r["size"]) if r["size"] in sizes else 99, recipes.index(r["recipe"]))

    for r in sorted(results["cells"].values(), key=order):
        lat = results.get(f"latency:{r['size']}", {})
        speed = f"{lat.get('1', 0):.2f}x / {lat.get('32', 0):.2f}x" if lat else "n/a"
        lines.append(
            f"| {r['size']} | {r['recipe']} | {' > '.join(r['stages'])} | {100 * r['test']['accuracy']:.2f} "
            f"| {100 * r['test']['macro_f1']:.2f} | {100 * r['retention']:.1f}% "
            f"| {100 * r['retention'] - 97:+.1f} | {r['parameters'] / 1e6:.2f}M | {speed} "
            f"| {r['train_seconds']:.0f} |"
        )
    lines += ["", "Published points: " + "; ".join(f"{n} keeps {k} at {s}" for n, k, s in PUBLISHED) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
