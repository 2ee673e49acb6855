"""The model card (README.md) of an exported student: how it was distilled and every figure measured."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distil.io import write_text

CARD_SETTINGS = (
    ("teacher", "teacher"),
    ("recipe", "recipe"),
    ("kd_temperature", "kd_temperature (T)"),
    ("alpha", "alpha (weight of hard-label CE; 1 - alpha weights the teacher term)"),
    ("dataset", "dataset"),
    ("task", "task"),
)
CARD_KNOWN = {k for k, _ in CARD_SETTINGS} | {
    "model_name", "distillation", "metrics", "teacher_metrics", "params", "teacher_params", "size_bytes",
    "latency_ms", "variants",
}  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _fmt_size(n_bytes: Any) -> str:
    return f"{n_bytes / 1e6:.2f} MB ({n_bytes:,} bytes)" if isinstance(n_bytes, int) else _fmt(n_bytes)


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _card_sections(report: dict) -> list[str]:
    lines = []
    settings = [(label, report[k]) for k, label in CARD_SETTINGS if k in report]
    settings += list((report.get("distillation") or {}).items())
    if settings:
        lines += ["## How it was distilled", ""] + _table(["setting", "value"], [(k, _fmt(v)) for k, v in settings])
    metrics, teacher = report.get("metrics") or {}, report.get("teacher_metrics") or {}
    if metrics or teacher:
        names = list(dict.fromkeys([*metrics, *teacher]))
        rows = [(m, _fmt(metrics.get(m, "")), _fmt(teacher.get(m, ""))) for m in names]
        lines += ["## Results", ""] + _table(["metric", "student", "teacher"], rows)
    size_figures = (
        ("params", "parameters", _fmt),
        ("teacher_params", "teacher parameters", _fmt),
        ("size_bytes", "size on disk", _fmt_size),
        ("latency_ms", "latency (ms)", _fmt),
    )
    size_rows = [(label, fmt(report[key])) for key, label, fmt in size_figures if key in report]
    if size_rows:
        lines += ["## Size and speed", ""] + _table(["figure", "value"], size_rows)
    variants = report.get("variants") or {}
    if variants:
        cols = list(dict.fromkeys(f for figures in variants.values() for f in figures))
        rows = [[name] + [_fmt_size(v[c]) if c.endswith("bytes") and c in v else _fmt(v.get(c, "")) for c in cols]
                for name, v in variants.items()]  # fmt: skip
        lines += ["## Deployment variants", ""] + _table(["variant", *cols], rows)
    other = [(k, _fmt(v)) for k, v in report.items() if k not in CARD_KNOWN]
    if other:
        lines += ["## Other figures", ""] + _table(["figure", "value"], other)
    return lines


def render_model_card(report: dict) -> str:
    """Render a Hugging Face model card (README.md) from measured figures and distillation settings.

    Args:
        report: any of ``model_name``, ``teacher``, ``recipe``, ``kd_temperature``, ``alpha``, ``dataset``,
            ``task``, ``distillation`` (dict of further settings), ``metrics`` and ``teacher_metrics``
            ({name: value}), ``params``, ``teacher_params``, ``size_bytes``, ``latency_ms`` (number or dict such
            as {"p50": .., "p95": ..}), ``variants`` ({variant: {figure: value}}); other keys are listed as is.

    Returns:
        Markdown with YAML front matter; every number given appears in it.
    """
    name = report.get("model_name", "distil student")
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification"]
    front += ["tags:", "- distil", "- knowledge-distillation"]
    if isinstance(report.get("teacher"), str) and "/" in report["teacher"] and not Path(report["teacher"]).exists():
        front.append(f"base_model: {report['teacher']}")
    intro = "A sequence classifier distilled with distil"
    intro += f" from `{report['teacher']}`" if "teacher" in report else ""
    intro += f" using the `{report['recipe']}` recipe." if "recipe" in report else "."
    usage = [
        "## Usage",
        "",
        "```python",
        "from distil.deploy.serving import load_student",
        "",
        'student = load_student("path/to/this/dir")  # variant="torch-int8" quantises on load',
        'print(student.predict(["an example sentence"]))',
        "```",
        "",
    ]
    return "\n".join([*front, "---", "", f"# {name}", "", intro, "", *_card_sections(report), *usage])


def write_model_card(model_dir: str | os.PathLike, report: dict) -> Path:
    """Write ``model_dir``/README.md: the model card `render_model_card` makes of ``report``; returns its path."""
    return write_text(Path(model_dir) / "README.md", render_model_card(report))
