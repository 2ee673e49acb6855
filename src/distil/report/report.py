"""The comparison a person can trust: report.json, report.md, PNG plots, and the table printed at the end."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from distil.config import FEATURE_WEIGHTS
from distil.engine.run_dir import MODEL_STAGES, load_stage_model, previous_history
from distil.errors import DistilError
from distil.io import atomic_path, read_json, write_json, write_text
from distil.models.loading import count_parameters
from distil.report.evaluate import latency_table, predict_logits, size_on_disk

ROLES = {"teacher": "teacher", "student": "distilled student", "baseline": "student without teacher"}


def run_eval(ctx) -> dict:
    """Stage 4: evaluate every saved model on the test split(s), time them, write report.json/.md and plots."""
    cfg = ctx.cfg
    ctx.load_data()
    stages = [s for s in MODEL_STAGES if ctx.done(s)]
    if "teacher" not in stages:
        raise DistilError(f"output_dir '{ctx.out}' has no trained teacher to evaluate; run `distil run` first")
    models = {s: load_stage_model(ctx, s) for s in stages}
    rows: dict[str, dict] = {}
    eval_sets = ["test"] + [k for k in ctx.datasets if k.startswith("extra:")]
    correct: dict[tuple[str, str], np.ndarray] = {}  # (stage, eval set) -> (N,) bool, for the paired test
    teacher_out: dict[str, np.ndarray] = {}  # eval set -> the teacher's outputs (fidelity of the others to them)
    versus = getattr(ctx.task, "versus_teacher", None)
    reducer = getattr(ctx.task, "reducer", None)  # a task whose raw outputs are too big to keep (a vocabulary)
    block_scores = getattr(ctx.task, "block_nll", None)
    per_block: dict[tuple[str, str], np.ndarray] = {}  # (stage, eval set) -> (N,) a score per row, lower better
    for stage, model in models.items():
        row = {
            "role": ctx.roles.get(stage, ROLES[stage]),
            "parameters": count_parameters(model),
            "size_bytes": size_on_disk(ctx.stage_dir(stage)),
        }
        for name in eval_sets:
            student = stage != "teacher"
            dataset = ctx.dataset(name, student)
            key = name.replace("extra:", "")
            logits = predict_logits(
                model,
                dataset,
                ctx.collator(student=student),
                cfg.distill.eval_batch_size,
                desc=f"{stage} {name}",
                reduce=reducer(teacher_out.get(key)) if reducer is not None else None,
            )
            gold = ctx.task.gold(dataset)
            if block_scores is not None:
                per_block[stage, key] = block_scores(logits, gold)
            unit_correct = ctx.task.correct(logits, gold)
            if unit_correct is not None:  # None: the set's metric has no per-unit right or wrong (a correlation)
                correct[stage, key] = unit_correct
            row[key] = ctx.task.metrics(logits, gold, ctx.data.label_names)
            if versus is not None:
                teacher_out.setdefault(key, logits)
                row[key].update(versus(logits, teacher_out[key], gold))
        history = previous_history(ctx, stage)
        row["validation"] = {
            k.replace("eval_", ""): v
            for k, v in history.get("best_validation", {}).items()
            if k in {f"eval_{m}" for m, _ in ctx.task.report_metrics}
        }
        row["train_seconds"] = history.get("train_seconds")
        rows[stage] = row
    start = time.perf_counter()
    latency = latency_table(
        models, cfg.eval.latency_batch_sizes, cfg.eval.latency_seq_length, cfg.eval.latency_repeats
    )
    headline, headline_set = ctx.task.best_metric, "test"
    if hasattr(ctx.task, "headline_for"):  # a task whose sets measure different things (embeddings)
        headline_set, headline = ctx.task.headline_for([name.replace("extra:", "") for name in eval_sets])
    lower = getattr(ctx.task, "lower_is_better", False)  # perplexity: retention is teacher / model
    for stage in rows:
        rows[stage]["latency_ms"] = {str(b): round(v, 3) for b, v in latency[stage].items()}
        rows[stage]["speedup"] = {str(b): round(latency["teacher"][b] / latency[stage][b], 3) for b in latency[stage]}
        teacher_score, score = rows["teacher"][headline_set][headline], rows[stage][headline_set][headline]
        ratio = (teacher_score / score if lower else score / teacher_score) if teacher_score and score else 0.0
        rows[stage]["retention"] = round(ratio, 4)
    ctx.timings["latency"] = time.perf_counter() - start
    generation = None
    if hasattr(ctx.task, "generation_report"):  # a generator: tokens/s and continuations side by side
        start = time.perf_counter()
        generation = ctx.task.generation_report(
            models, ctx.tokenizer, ctx.task.prompts(ctx.frames["test"], ctx.tokenizer)
        )
        ctx.timings["generation"] = time.perf_counter() - start
        for stage, speed in generation["speed"].items():
            rows[stage]["generation"] = speed
            rows[stage]["generation_speedup"] = round(
                speed["tokens_per_s"] / generation["speed"]["teacher"]["tokens_per_s"], 3
            )
    soft = ctx.out / "soft_labels.json"
    report = {
        "task": {
            "name": ctx.task.name,
            "metric": headline,
            **({"headline_set": headline_set} if headline_set != "test" else {}),
            "columns": [list(c) for c in ctx.task.report_metrics],
            "paired_unit": ctx.task.paired_unit,
            **({"raw_metrics": list(ctx.task.raw_metrics)} if hasattr(ctx.task, "raw_metrics") else {}),
            **({"lower_is_better": True} if lower else {}),
            **_set_layout(ctx.task, eval_sets),
        },
        "data": {
            "source": cfg.data.source,
            "splits": {k: len(v) for k, v in ctx.data.splits.items()},
            "labels": ctx.data.label_names,
            "skipped_empty_rows": ctx.data.skipped_empty,
            "dropped": ctx.data.dropped,
            "truncated": ctx.truncated(),
            "extra_test_sets": {k: len(v) for k, v in ctx.data.extra_tests.items()},
        },
        "teacher_source": cfg.teacher.model,
        "student_init": _student_summary(cfg.student),
        "loss": _loss_summary(cfg),
        "latency_protocol": {
            "device": "cpu fp32, inference_mode",
            "seq_length": cfg.eval.latency_seq_length,
            "repeats": cfg.eval.latency_repeats,
            "rounds": 3,
            "statistic": "median of round medians",
            "threads": _threads(),
        },
        "models": rows,
        "soft_labels": read_json(soft) if soft.is_file() else None,
        "timings": {k: round(v, 1) for k, v in ctx.timings.items()},
    }
    report["training_text"] = _training_text_notes(previous_history(ctx, "student"))
    report["training_processes"] = previous_history(ctx, "student").get("processes", 1)  # torchrun / accelerate
    if "baseline" in models:
        report["baseline"] = previous_history(ctx, "baseline").get("description", "cross-entropy only, no teacher")
    if generation is not None:
        report["generation"] = {"samples": generation["samples"], "protocol": _generation_protocol(cfg)}
    if "student" in models and "baseline" in models:
        names = ["test", *report["data"]["extra_test_sets"]]
        report["paired"] = {
            name: mcnemar(correct["student", name], correct["baseline", name])
            for name in names
            if ("student", name) in correct
        }
        for name in names:  # a score per row, lower better: a sign test of the rows each model does better on
            if ("student", name) in per_block:
                s, b = per_block["student", name], per_block["baseline", name]
                report["paired"][name] = mcnemar(s < b, b < s)
    report["verdicts"] = verdicts(report)
    write_text(ctx.out / "report.md", render_markdown(report))
    plot_report(ctx, report)
    write_json(ctx.out / "report.json", report)
    print(render_table(report))
    for line in report["verdicts"]:
        print(line)
    return report


def _generation_protocol(cfg) -> dict:
    o = cfg.causal_lm
    return {
        "speed": f"batch 1, greedy, KV cache, {o.speed_prompt_tokens}-token prompt, {o.speed_new_tokens} new tokens, "
        "cpu fp32, median of 3",
        "samples": f"greedy, {o.sample_new_tokens} new tokens, openings of test documents",
    }


def _set_layout(task, eval_sets: list[str]) -> dict:
    """A task whose evaluation sets measure different things (embeddings: STS, retrieval, fidelity) names, per
    set, the metric its verdict compares and the report's columns; {} for one metric on every set."""
    columns = getattr(task, "table_columns", None)
    if columns is None:
        return {}
    present = {name.replace("extra:", "") for name in eval_sets}
    if hasattr(task, "table_for"):
        columns = task.table_for([name.replace("extra:", "") for name in eval_sets])
    return {
        "table": [list(c) for c in columns if c[0] in present],
        "set_metrics": {name: task.set_metric(name) for name in sorted(present)},
    }


def _training_text_notes(history: dict) -> list[dict]:
    """Per student stage that trained on text beyond the training split: what it was and how many validation/test
    texts were removed from it."""
    notes = []
    for stage in history.get("stages", []):
        if stage.get("data_notes"):
            notes.append({"stage": stage["name"], "data": stage["data"], **stage["data_notes"]})
    return notes


def _student_summary(student) -> dict:
    """How the student was built, with only the settings its init reads."""
    keys = {
        "teacher-layers": ("layers", "num_layers"),
        "config": ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size"),
        "pretrained": ("pretrained", "allow_different_vocab"),
        "lstm": ("lstm_embedding_dim", "lstm_hidden_size", "lstm_num_layers"),
    }[student.init]
    return {"init": student.init, **{k: getattr(student, k) for k in keys if getattr(student, k) is not None}}


def _loss_summary(cfg) -> dict:
    """The objective of the (last) stage that trains the student on the task, with every weight > 0."""
    loss = cfg.stages[-1].loss if cfg.stages else cfg.loss
    summary = {"alpha": loss.alpha, "kd_temperature": loss.kd_temperature, "soft_loss": loss.soft_loss}
    if cfg.task == "embeddings":  # no classes, no temperature: the embedding terms (docs/losses.md)
        e = cfg.embedding
        summary = {k: getattr(e, k) for k in ("mse_weight", "cosine_weight", "relation_weight") if getattr(e, k)}
        summary.update({"dim": e.dim} if e.dim else {})
    summary.update({k: getattr(loss, k) for k in ("logits_weight", *FEATURE_WEIGHTS) if getattr(loss, k) != 0})
    if loss.uses_features:
        summary["layer_map"] = loss.layer_map
    if cfg.stages:
        summary["stages"] = [s.name for s in cfg.stages if s.name not in cfg.skip_stages]
    return summary


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """Exact McNemar test of two models scored on the same examples.

    Only the examples where exactly one model is right carry information: ``a_only`` (A right, B wrong) and
    ``b_only``. Under "no difference" each is Binomial(a_only + b_only, 1/2); the two-sided p-value is twice the
    smaller tail, capped at 1.
    """
    a_only = int(np.sum(a_correct & ~b_correct))
    b_only = int(np.sum(b_correct & ~a_correct))
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}


def _task_info(report: dict) -> dict:
    """The report's task section; reports written before tasks existed are classification reports."""
    return report.get("task") or {
        "name": "classification",
        "metric": "accuracy",
        "columns": [["accuracy", "test acc"], ["macro_f1", "macro-F1"]],
        "paired_unit": "examples",
    }


def verdicts(report: dict, level: float = 0.05) -> list[str]:
    """Plain-language comparison of the distilled student with the baseline, against the test-set noise.

    Paired (``report["paired"]``, the exact McNemar test on the units (examples, sentences) where only one of the
    two is right): "better"/"worse" when p < ``level``. Reports written before the paired test fall back to the
    unpaired rule (a difference above twice the standard error of a difference of two accuracies).
    """
    models = report["models"]
    if "student" not in models or "baseline" not in models:
        return []
    info = _task_info(report)
    unit = info["paired_unit"]
    sizes = {"test": report["data"]["splits"]["test"], **report["data"]["extra_test_sets"]}
    lines = []
    a_name, b_name = models["student"].get("role", ROLES["student"]), models["baseline"].get("role", ROLES["baseline"])
    b_name = "the same student without teacher" if b_name == ROLES["baseline"] else f"the {b_name}"
    set_metrics = info.get("set_metrics", {})
    for name, n in sizes.items():
        metric = set_metrics.get(name, info["metric"])
        s, b = models["student"][name][metric], models["baseline"][name][metric]
        scores = models["student"][name]
        n = int(scores.get("queries", scores.get("blocks", n)))  # a set's unit: a retrieval query, a text block
        diff = s - b
        amount = (
            f"{diff:+.2f} {metric}"
            if metric in info.get("raw_metrics", ())
            else f"{100 * diff:+.2f} points of {metric}"
        )
        head = f"{name}: {a_name} {amount} vs {b_name} (n={n}"
        paired = report.get("paired", {}).get(name)
        if paired is None and set_metrics:  # a correlation or a fidelity score: no per-unit paired test
            lines.append(f"{head}; {metric} has no per-unit paired test)")
            continue
        if paired is not None:
            p = paired["p_value"]
            word = "within noise" if p >= level else ("better" if paired["a_only"] > paired["b_only"] else "worse")
            if set_metrics and metric in info.get("raw_metrics", ()):  # a per-row score, lower better (perplexity)
                lines.append(
                    f"{head}; {unit} on which each has the lower loss: {paired['a_only']} vs {paired['b_only']}, "
                    f"sign test p={p:.3g}): {word}"
                )
                continue
            lines.append(
                f"{head}; {unit} only one of the two gets right: {paired['a_only']} vs {paired['b_only']}, "
                f"McNemar p={p:.3g}): {word}"
            )
            continue
        se = (max(s * (1 - s), 1e-9) / n) ** 0.5 * 2**0.5
        word = "within noise" if abs(diff) < 2 * se else ("better" if diff > 0 else "worse")
        lines.append(f"{head}, standard error of the difference ~{100 * se:.2f}): {word}")
    return lines


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def table_rows(report: dict) -> list[list[str]]:
    batch_sizes = list(next(iter(report["models"].values()))["latency_ms"])
    extra = list(report["data"]["extra_test_sets"])
    info = _task_info(report)
    metric, title = info["metric"], info["columns"][0][1]
    head = ["model", *(t for _, t in info["columns"]), "of teacher", "params", "size MB"]
    head += [f"b{b} ms" for b in batch_sizes] + [f"speedup b{b}" for b in batch_sizes]
    head += [f"{e} {title}" for e in extra]
    rows = [head]
    if info.get("table"):
        return _set_table(report, info["table"], batch_sizes)
    for r in report["models"].values():
        row = [
            r["role"],
            *(f"{100 * r['test'][k]:.2f}" for k, _ in info["columns"]),
            f"{100 * r.get('retention', r.get('accuracy_retention', 0)):.1f}%",
            f"{r['parameters'] / 1e6:.2f}M",
            f"{r['size_bytes'] / 1e6:.1f}",
        ]
        row += [f"{r['latency_ms'][b]:.1f}" for b in batch_sizes] + [f"{r['speedup'][b]:.2f}x" for b in batch_sizes]
        row += [f"{100 * r[e][metric]:.2f}" for e in extra]
        rows.append(row)
    return rows


def _set_table(report: dict, table: list, batch_sizes: list[str]) -> list[list[str]]:
    """The table of a task with per-set columns: (set, metric, title) each, then retention, size and speed."""
    head = ["model", *(title for _, _, title in table), "of teacher", "params", "size MB"]
    head += [f"b{b} ms" for b in batch_sizes] + [f"speedup b{b}" for b in batch_sizes]
    raw = set(_task_info(report).get("raw_metrics", ()))
    generation = any("generation" in r for r in report["models"].values())
    head += ["tokens/s", "gen speedup"] if generation else []
    rows = [head]
    for r in report["models"].values():
        row = [r["role"]]
        row += [_cell(r.get(name, {}).get(metric), metric in raw) for name, metric, _ in table]
        row += [f"{100 * r.get('retention', 0):.1f}%", f"{r['parameters'] / 1e6:.2f}M", f"{r['size_bytes'] / 1e6:.1f}"]
        row += [f"{r['latency_ms'][b]:.1f}" for b in batch_sizes] + [f"{r['speedup'][b]:.2f}x" for b in batch_sizes]
        if generation:
            row += [f"{r['generation']['tokens_per_s']:.1f}", f"{r['generation_speedup']:.2f}x"]
        rows.append(row)
    return rows


def _cell(value, raw: bool) -> str:
    """A metric as the table shows it: a percentage, or as it is (perplexity, a KL)."""
    if value is None:
        return "-"
    return f"{value:.3f}" if raw and value < 10 else (f"{value:.2f}" if raw else f"{100 * value:.2f}")


def render_table(report: dict) -> str:
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _per_type_table(report: dict) -> list[str]:
    """Per entity type F1 on the test split (token classification reports ``f1_<TYPE>``); [] for other tasks."""
    models = report["models"]
    types = sorted({k[3:] for r in models.values() for k in r["test"] if k.startswith("f1_")})
    if not types:
        return []
    md = ["", "| model | " + " | ".join(f"{t} F1" for t in types) + " |", "|---|" + "---|" * len(types)]
    for r in models.values():
        md.append(f"| {r['role']} | " + " | ".join(f"{100 * r['test'].get('f1_' + t, 0.0):.2f}" for t in types) + " |")
    return md


def render_markdown(report: dict) -> str:
    rows = table_rows(report)
    md = [
        "# distil report",
        "",
        f"Data: `{report['data']['source']}` {report['data']['splits']}, labels {report['data']['labels']}"
        + (f"; truncated to max_length: {report['data']['truncated']}" if report["data"].get("truncated") else "")
        + (f"; dropped while reading: {report['data']['dropped']}" if report["data"].get("dropped") else "")
        + ".",
        f"Teacher: `{report['teacher_source']}`. Student: {report['student_init']}. Loss: {report['loss']}.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += _per_type_table(report)
    p = report["latency_protocol"]
    md += [
        "",
        f"Latency: {p['device']}, {p['seq_length']}-token inputs, {p['threads']} threads, "
        f"{p['statistic']} of {p['repeats']} timed forwards x {p['rounds']} interleaved rounds.",
        f"Timings (s): {report['timings']}.",
        "",
    ]
    if report.get("training_processes", 1) > 1:
        md[-1:-1] = [f"The student was trained by {report['training_processes']} processes (DDP).", ""]
    if report.get("baseline"):
        md += [f"Baseline ({report['models']['baseline'].get('role', ROLES['baseline'])}): {report['baseline']}.", ""]
    for note in report.get("training_text", []):
        if note["data"] == "general":
            md.append(
                f"General distillation (stage {note['stage']}): {note['texts']} texts of `{note['source']}`; "
                f"{note['removed_held_out']} texts equal to a validation/test text were removed first."
            )
        else:
            md.append(
                f"Augmentation (stage {note['stage']}): {note['source_rows']} training rows augmented; "
                f"{note['removed_held_out']} training rows equal to a validation/test text were not augmented, "
                f"{note['variants_removed_held_out']} variants equal to one were dropped."
            )
    if report.get("training_text"):
        md.append("")
    if report.get("verdicts"):
        bought = (
            "distillation"
            if report["models"]["student"].get("role", ROLES["student"]) == ROLES["student"]
            else "tuning"
        )
        md += [f"What {bought} bought here:", ""] + [f"- {v}" for v in report["verdicts"]] + [""]
    if report.get("soft_labels"):
        s = report["soft_labels"]
        per_token = f", {s['bytes_per_token']} bytes per token" if s.get("bytes_per_token") else ""
        md.append(f"Soft labels: {s['status']} (fingerprint `{s['fingerprint']}`, shape {s['shape']}{per_token}).")
    md += _generation_markdown(report)
    return "\n".join(md) + "\n"


def _generation_markdown(report: dict) -> list[str]:
    """Each model's greedy continuation of the same prompts, side by side (a generator's report)."""
    generation = report.get("generation")
    if not generation:
        return []
    p = generation["protocol"]
    md = ["", f"Generation speed: {p['speed']}.", "", f"Samples ({p['samples']}):", ""]
    roles = {stage: r["role"] for stage, r in report["models"].items()}
    for i, sample in enumerate(generation["samples"], 1):
        md += [f"**Prompt {i}:** {_one_line(sample['prompt'])}", ""]
        md += [f"- {roles.get(stage, stage)}: {_one_line(text)}" for stage, text in sample["continuations"].items()]
        md.append("")
    return md


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _curves(history: dict, metric: str = "accuracy") -> tuple[list, list, list, list]:
    steps, losses, eval_steps, eval_acc = [], [], [], []
    for entry in history.get("log_history", []):
        if "loss" in entry:
            steps.append(entry["step"])
            losses.append(entry["loss"])
        if f"eval_{metric}" in entry:
            eval_steps.append(entry["step"])
            eval_acc.append(entry[f"eval_{metric}"])
    return steps, losses, eval_steps, eval_acc


def plot_report(ctx, report: dict) -> None:
    """plots/training_curves.png (loss and validation accuracy per stage) and plots/comparison.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = _task_info(report)["metric"]
    plots = Path(ctx.out) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in report["models"]:
        steps, losses, eval_steps, eval_acc = _curves(previous_history(ctx, stage), metric)
        if steps:
            ax_loss.plot(steps, losses, label=stage)
        if eval_steps:
            ax_acc.plot(eval_steps, eval_acc, marker="o", label=stage)
    ax_loss.set(title="training loss", xlabel="step")
    ax_acc.set(title=f"validation {metric}", xlabel="step")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:  # a stage without curves (an untrained baseline) draws nothing
            ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, plots / "training_curves.png")

    names = list(report["models"])
    headline_set = _task_info(report).get("headline_set", "test")
    raw = metric in _task_info(report).get("raw_metrics", ())  # perplexity: as it is, not a percentage
    acc = [(1 if raw else 100) * report["models"][n][headline_set][metric] for n in names]
    batch_sizes = list(report["models"][names[0]]["latency_ms"])
    fig, (ax_a, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    ax_a.bar(names, acc, color=["#555", "#2a7", "#aaa"][: len(names)])
    if raw:
        ax_a.set(title=f"{headline_set} {metric}", yscale="log")
    else:
        ax_a.set(title=f"{headline_set} {metric} (%)", ylim=(max(0, min(acc) - 10), min(100, max(acc) + 3)))
    width = 0.8 / len(batch_sizes)
    for i, b in enumerate(batch_sizes):
        ax_l.bar(
            np.arange(len(names)) + i * width,
            [report["models"][n]["latency_ms"][b] for n in names],
            width,
            label=f"batch {b}",
        )
    ax_l.set_xticks(np.arange(len(names)) + width * (len(batch_sizes) - 1) / 2, names)
    ax_l.set(title="CPU latency (ms, fp32)", yscale="log")
    ax_l.legend()
    _save(fig, plots / "comparison.png")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
