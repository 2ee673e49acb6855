"""`distil export MODEL_DIR OUT_DIR`: write every deployment variant of a student and show how each one scores.

`export_main` runs `distil.deploy.export.export_all` (hf/, onnx/, onnx-int8/, plus torch-int8 quantised on load) and,
when it knows which data the student was trained on, evaluates every variant on that data's test split:

    - MODEL_DIR inside a run (RUN/student, RUN/baseline, RUN/teacher beside RUN/config.yaml): the run's own test
      split, rebuilt from RUN/config.yaml exactly as the run split it (same source, split seed and fractions);
    - ``eval_source`` (a built-in name, a CSV/TSV/JSONL/Parquet file or a saved dataset): the test split of that
      source as distil splits it (the run's split settings when there is a run, else the defaults);
    - neither: the variants are exported and checked against PyTorch, but no accuracy is measured.

It prints one row per variant: accuracy, its change against the fp32 PyTorch model, size on disk, and the largest
|logit difference| measured during export (ONNX vs PyTorch, int8 vs fp32 ONNX). RUN/report.json, when present,
feeds the model card (teacher, loss settings, test metrics, latency).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distil.config import DataConfig, load_config
from distil.deploy.export import export_all, read_student_config
from distil.errors import DistilError
from distil.io import read_json
from distil.tasks import task_for_model

VARIANT_ORDER = ("hf", "torch-int8", "onnx", "onnx-int8")
VARIANT_LABEL = {
    "hf": "torch fp32 (hf/)",
    "torch-int8": "torch int8 (hf/, on load)",
    "onnx": "onnx fp32 (onnx/)",
    "onnx-int8": "onnx int8 (onnx-int8/)",
}


def find_run_dir(model_dir: Path) -> Path | None:
    """The run directory holding ``model_dir`` (RUN/<stage>), recognised by RUN/config.yaml; else None."""
    parent = model_dir.resolve().parent
    return parent if (parent / "config.yaml").is_file() else None


def _data_config(run_dir: Path | None, eval_source: str | None):
    data = load_config(str(run_dir / "config.yaml")).data if run_dir is not None else DataConfig()
    if eval_source is not None:
        # A different source: keep the run's split settings, drop its row caps and extra test sets.
        data.source, data.extra_test_sets, data.max_train_samples = eval_source, [], None
    return data


def model_label_names(config: dict) -> list[str]:
    """Class names in id order from a config.json dict (LABEL_i where it names none)."""
    id2label = config.get("id2label") or {}
    n = len(id2label) or int(config.get("num_labels", 2))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def test_split_evaluator(model_dir: Path, run_dir: Path | None, eval_source: str | None, batch_size: int = 64):
    """A ``Predictor -> {"accuracy", "macro_f1", "test_rows"}`` function over the chosen test split, and its name.

    Returns:
        (evaluate, description), or (None, why no evaluation) when there is no run and no ``eval_source``.

    Raises:
        DistilError: the source cannot be read, has no test rows, or its labels are not the model's.
    """
    if run_dir is None and eval_source is None:
        return None, "no accuracy: MODEL_DIR is not inside a run (no config.yaml beside it) and no --eval-source"
    data_cfg = _data_config(run_dir, eval_source)
    config = read_student_config(model_dir)
    task = task_for_model(config)
    evaluate, what = task.test_evaluator(data_cfg, model_label_names(config), batch_size)
    origin = f"the run's test split ({run_dir / 'config.yaml'})" if eval_source is None else "its test split"
    return evaluate, f"{data_cfg.source}: {what}, {origin}, max_length {data_cfg.max_length}"


def card_report(run_dir: Path | None, model_dir: Path) -> dict:
    """Model-card figures from RUN/report.json and RUN/config.yaml when present; empty otherwise."""
    if run_dir is None:
        return {}
    cfg = load_config(str(run_dir / "config.yaml"))
    report: dict[str, Any] = {
        "teacher": cfg.teacher.model,
        "dataset": cfg.data.source,
        "kd_temperature": cfg.loss.kd_temperature,
        "alpha": cfg.loss.alpha,
    }
    path = run_dir / "report.json"
    if path.is_file():
        models = read_json(path).get("models", {})
        stage, teacher = models.get(model_dir.resolve().name, {}), models.get("teacher", {})
        if "test" in stage:
            report["metrics"] = {f"test {k}": v for k, v in stage["test"].items()}
        if "test" in teacher:
            report["teacher_metrics"] = {f"test {k}": v for k, v in teacher["test"].items()}
        if "parameters" in teacher:
            report["teacher_params"] = teacher["parameters"]
        if "latency_ms" in stage:
            report["latency_ms"] = {f"batch {b}": ms for b, ms in stage["latency_ms"].items()}
    return report


def _mb(n_bytes: Any) -> str:
    return f"{n_bytes / 1e6:.2f} MB" if isinstance(n_bytes, (int, float)) else "-"


def render_table(results: dict[str, dict]) -> str:
    """Variant / accuracy (entity F1 for a tagger, SQuAD F1 for a reader, Lee Spearman for an encoder) / change vs
    fp32 / size / max-abs-diff, as a markdown table."""
    metric = next((m for m in ("f1", "spearman") if any(m in r for r in results.values())), "accuracy")
    base = results.get("hf", {}).get(metric)
    hf_size = results.get("hf", {}).get("size_bytes")
    squad = any("exact_match" in r for r in results.values())
    title = {"f1": "SQuAD F1" if squad else "entity F1", "spearman": "Lee Spearman"}.get(metric, "accuracy")
    lines = [f"| variant | {title} | vs fp32 (points) | size | max abs diff |", "|---|---|---|---|---|"]
    for key in [k for k in VARIANT_ORDER if k in results] + [k for k in results if k not in VARIANT_ORDER]:
        r = results[key]
        acc = r.get(metric)
        delta = f"{100 * (acc - base):+.2f}" if acc is not None and base is not None else "-"
        size = r.get("size_bytes", hf_size if key == "torch-int8" else None)
        size_text = _mb(size) + (" (fp32 weights; int8 in memory)" if key == "torch-int8" else "")
        diff = r.get("max_abs_diff")
        diff_text = f"{diff:.2e}" + (" vs onnx fp32" if key == "onnx-int8" else "") if diff is not None else "-"
        lines.append(
            f"| {VARIANT_LABEL.get(key, key)} | {f'{100 * acc:.2f}%' if acc is not None else '-'} | "
            f"{delta} | {size_text} | {diff_text} |"
        )
    return "\n".join(lines)


def export_main(
    model_dir: str, out_dir: str, *, int8: bool = True, eval_source: str | None = None, overwrite: bool = False
) -> int:
    """Export ``model_dir`` to ``out_dir`` (hf, onnx, onnx-int8), evaluate each variant, print the table.

    Args:
        model_dir: a saved HF student (RUN/student, or any save_pretrained directory with its tokenizer).
        out_dir: created whole; refused if it exists unless ``overwrite``.
        int8: also write the ONNX Runtime int8 variant.
        eval_source: data source whose test split scores the variants (default: the run's own, if any).
        overwrite: replace an existing ``out_dir``.

    Returns:
        0 (failures raise).

    Raises:
        DistilError: a bad model_dir or out_dir, an export that fails its check against PyTorch, or evaluation
            data that cannot be read or whose labels are not the model's.
    """
    model_path, out_path = Path(model_dir), Path(out_dir)
    read_student_config(model_path)  # refuse a bad model_dir before any data is read
    if out_path.exists() and not overwrite:
        raise DistilError(f"out_dir '{out_path}' already exists; pass --overwrite or another path")
    run_dir = find_run_dir(model_path)
    evaluate, description = test_split_evaluator(model_path, run_dir, eval_source)
    print(f"export: {model_path} -> {out_path}" + (f" (run {run_dir})" if run_dir else ""))
    print(f"evaluation: {description}")
    results = export_all(
        model_path,
        out_path,
        int8=int8,
        report=card_report(run_dir, model_path),
        evaluate=evaluate,
        overwrite=overwrite,
    )
    print(render_table(results))
    print(
        f"\nwrote {', '.join(sorted({Path(r['dir']).name for r in results.values()}))} under {out_path}; "
        f"figures in {out_path / 'export.json'}; model card {out_path / 'hf' / 'README.md'}"
    )
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `export` sub-command to the CLI's subparsers; `run_export_args` runs it."""
    p = subparsers.add_parser(
        "export",
        help="write hf/, onnx/ and onnx-int8/ variants of a student, each evaluated",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("model_dir", help="a saved student directory (e.g. runs/default/student)")
    p.add_argument("out_dir", help="where to write the variants (created)")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the ONNX Runtime int8 variant")
    p.add_argument(
        "--eval-source",
        default=None,
        help="data source whose test split scores each variant (default: the run's own, if any)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    return p


def run_export_args(args: argparse.Namespace) -> int:
    return export_main(
        args.model_dir, args.out_dir, int8=args.int8, eval_source=args.eval_source, overwrite=args.overwrite
    )
