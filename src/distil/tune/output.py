"""What a finished study writes: tune/trials.csv, tune/best.yaml, tune/plots/*.png, and the report of the pick
against the untuned default on test (the study's only test evaluation), with a tuning section."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from distil.config import RunConfig, dump_yaml, from_dict, load_config, merge, to_dict
from distil.engine import stages as pipeline
from distil.errors import DistilError
from distil.io import atomic_path, read_json, write_json, write_text
from distil.options import TuneConfig
from distil.report.evaluate import predict_logits
from distil.report.report import render_markdown, run_eval, verdicts


def trial_rows(study, objectives: list[str]) -> list[dict]:
    """One row per trial (surplus slots of racing workers left out): number, state, objectives, parameters,
    validation metrics, seconds, steps."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == TrialState.WAITING:  # a slot of racing workers; a queued point
            continue
        row = {"number": t.number, "state": t.state.name.lower()}
        values = t.values if t.state == TrialState.COMPLETE else [None] * len(objectives)  # a pruned trial's value
        row.update({name: value for name, value in zip(objectives, values)})  # is only its last report
        if t.state == TrialState.PRUNED and t.intermediate_values:
            row["pruned_at_value"] = t.intermediate_values[t.last_step]
            row["pruned_at_step"] = t.last_step
        row.update({f"param:{k}": v for k, v in t.params.items()})
        row.update({f"validation:{k}": v for k, v in t.user_attrs.get("validation", {}).items()})
        row["seconds"] = t.user_attrs.get("seconds")
        row["steps"] = t.user_attrs.get("steps")
        row["max_steps"] = t.user_attrs.get("max_steps")
        row["error"] = t.user_attrs.get("error") or ""
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def best_trials(study: optuna.Study, keep: int) -> list:
    """The best ``keep`` finished trials by the first objective, or the whole Pareto front with two objectives."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) > 1:
        return study.best_trials
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: (sign * t.value, t.number))[:keep]


def pick_trial(study, objectives: list[str]):
    """The chosen trial: the best on the first objective (among the Pareto front with two, which all meet the
    budget: the most accurate)."""
    if len(objectives) == 1:
        return best_trials(study, 1)[0]  # ties: the earliest (the one keep_best keeps)
    maximise = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return sorted(study.best_trials, key=lambda t: ((-1 if maximise else 1) * t.values[0], t.number))[0]


def best_config(trial_dir: Path, out: Path) -> RunConfig:
    """The pick's configuration as a normal run (its own output folder, a baseline, no tune section)."""
    cfg = load_config(str(trial_dir / "config.yaml"))
    data = merge(to_dict(cfg), {"output_dir": str(out / "best"), "baseline": True, "overwrite": False})
    data["tune"] = to_dict(TuneConfig())
    return from_dict(RunConfig, data)


def savings(rows: list[dict]) -> dict:
    """Trial seconds by state, and an estimate of what pruning saved: a pruned trial's seconds scaled to the
    steps it would have run (max_steps / steps)."""
    spent = {s: round(sum(r["seconds"] or 0 for r in rows if r["state"] == s), 1) for s in ("complete", "pruned")}
    saved = 0.0
    for r in rows:
        if r["state"] == "pruned" and r["steps"] and r["max_steps"] and r["seconds"]:
            saved += r["seconds"] * (r["max_steps"] / r["steps"] - 1)
    return {"seconds_by_state": spent, "pruning_saved_seconds_estimate": round(saved, 1)}


def test_scores(study_obj, trial_dir: Path) -> dict:
    """The test metrics of one kept student (a Pareto point) with the task's own metrics."""
    ctx = study_obj.context(load_config(str(trial_dir / "config.yaml")))
    model = pipeline.load_stage_model(ctx, "student")
    dataset = ctx.dataset("test", True)
    logits = predict_logits(model, dataset, ctx.collator(student=True), ctx.cfg.distill.eval_batch_size, desc="test")
    return ctx.task.metrics(logits, ctx.task.gold(dataset), ctx.data.label_names)


def plot_study(study, objectives: list[str], folder: Path) -> list[str]:
    """Optuna's matplotlib views: optimisation history and parameter importances (one objective), the Pareto front
    (two); a view Optuna cannot draw for this study (too few trials) is skipped with a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as views

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {}
    if len(objectives) == 1:
        wanted["history.png"] = lambda: views.plot_optimization_history(study, target_name=objectives[0])
        wanted["importances.png"] = lambda: views.plot_param_importances(study, target_name=objectives[0])
    else:
        wanted["pareto.png"] = lambda: views.plot_pareto_front(study, target_names=objectives)
        wanted["importances.png"] = lambda: views.plot_param_importances(
            study, target=lambda t: t.values[0], target_name=objectives[0]
        )
    written = []
    for name, draw in wanted.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            with atomic_path(folder / name) as tmp:
                figure.savefig(tmp, dpi=110, format="png")
            plt.close(figure)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            print(f"tune plot {name}: skipped ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    return written


def tune_markdown(summary: dict) -> list[str]:
    """The report's tuning section: what was searched, how trials ended, the pick vs the default, the trials."""
    objectives = summary["objectives"]
    md = ["", "## Tuning", ""]
    md.append(
        f"Optuna {summary['sampler']} over {summary['space']}; {summary['trials']} trials "
        f"finished ({summary['states']}); selection on validation only, the pick tested once."
    )
    s = summary["savings"]
    md.append(
        f"Trial seconds: {s['seconds_by_state']}; pruning saved ~{s['pruning_saved_seconds_estimate']:.0f} s "
        "(estimate: each pruned trial scaled to its full steps). Study elapsed time (first trial start to last "
        f"end, pauses included) {summary['wall_seconds']:.0f} s "
        f"vs {summary['trials']} x the mean finished trial = {summary['unpruned_estimate_seconds']:.0f} s"
        + (
            f"; one student run of the configuration as written: {summary['default_train_seconds']:.0f} s of training."
            if summary.get("default_train_seconds")
            else "."
        )
    )
    if summary.get("default_validation") is not None:
        md.append(
            f"{objectives[0]}: pick (trial {summary['pick']['number']}) "
            f"{summary['pick']['values'][0]:.4f}, untuned default {summary['default_validation']:.4f}."
        )
    md.append(f"Pick: {json.dumps(summary['pick']['params'])}; runnable as `distil run {summary['best_yaml']}`.")
    if summary.get("auto"):
        auto = summary["auto"]
        budget = ", ".join(f"{k} {v:g}" for k, v in auto["budget"].items() if v)
        shapes = ", ".join(
            f"{k} ({v['latency_ms']:.2f} ms, {v['params'] / 1e6:.2f}M)" for k, v in auto["shapes"].items()
        )
        over = ", ".join(auto["over_budget"]) or "-"
        md.append(
            f"Preset auto, budget {budget}: shapes within it {shapes}; over it: {over}; teacher "
            f"{auto['teacher']['latency_ms']:.2f} ms, {auto['teacher']['params'] / 1e6:.2f}M."
        )
    if summary.get("front"):
        md += ["", "Pareto front (each point tested once):", ""]
        md += ["| trial | " + " | ".join(objectives) + " | test | parameters |", "|---" * (len(objectives) + 3) + "|"]
        for p in summary["front"]:
            values = " | ".join(f"{v:.4g}" for v in p["values"])
            md.append(f"| {p['number']} | {values} | {p['test']:.4f} | {json.dumps(p['params'])} |")
    md += ["", "| trial | state | " + " | ".join(objectives) + " | seconds | parameters |"]
    md.append("|---" * (len(objectives) + 4) + "|")
    for r in summary["table"]:
        values = " | ".join("" if r.get(o) is None else f"{r[o]:.4g}" for o in objectives)
        if r["state"] == "pruned" and r.get("pruned_at_value") is not None:  # where the pruner stopped it
            values = f"({r['pruned_at_value']:.4g} at step {r['pruned_at_step']})" + " |" * (len(objectives) - 1)
        params = ", ".join(f"{k[6:]}={_fmt(v)}" for k, v in r.items() if k.startswith("param:"))
        md.append(f"| {r['number']} | {r['state']} | {values} | {r['seconds'] or 0:.0f} | {params} |")
    if summary.get("plots"):
        md += ["", " ".join(f"![{p}](tune/plots/{p})" for p in summary["plots"])]
    return md


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def finish_study(study_obj, study) -> dict:
    """Write trials.csv, best.yaml and the plots; test the pick (and each Pareto point) once; write the report."""
    out, cfg, objectives = study_obj.out, study_obj.cfg, study_obj.objectives
    tune_dir = out / "tune"
    pick = pick_trial(study, objectives)
    tested = [pick] + (list(study.best_trials) if len(objectives) > 1 else [])
    for trial in tested:  # every student this report tests must be here before anything is written
        folder = out / "trials" / f"{trial.number:04d}" / "student"
        if not (folder / "config.json").is_file():
            raise DistilError(
                f"tune: trial {trial.number}'s student ({folder}) is not here; workers on several machines must "
                "share output_dir (a shared filesystem) as well as the storage"
            )
    rows = trial_rows(study, objectives)
    write_csv(tune_dir / "trials.csv", rows)
    pick_dir = out / "trials" / f"{pick.number:04d}"
    best = best_config(pick_dir, cfg.output_path)
    write_text(tune_dir / "best.yaml", dump_yaml(best))
    plots = plot_study(study, objectives, tune_dir / "plots")
    complete = [r for r in rows if r["state"] == "complete"]
    mean = sum(r["seconds"] or 0 for r in complete) / max(1, len(complete))
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    default_history = out / "default" / "student" / "training_history.json"
    default_validation = default_seconds = None
    if default_history.is_file():
        history = read_json(default_history)
        default_validation = (history.get("best_validation") or {}).get(f"eval_{study_obj.metric}")
        default_seconds = history.get("train_seconds")
    summary = {
        "sampler": cfg.tune.sampler if study_obj.auto is None else f"{cfg.tune.sampler} (preset auto)",
        "objectives": objectives,
        "space": [p.describe() for p in study_obj.params] or ["recipe", "student shape", "T", "alpha", "lr"],
        "trials": len([r for r in rows if r["state"] in ("complete", "pruned")]),
        "states": states,
        "savings": savings(rows),
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts else 0.0,
        "unpruned_estimate_seconds": round(mean * len([r for r in rows if r["state"] in ("complete", "pruned")]), 1),
        "pick": {"number": pick.number, "values": list(pick.values), "params": pick.params},
        "default_validation": default_validation,
        "default_train_seconds": default_seconds,
        "best_yaml": str(tune_dir / "best.yaml"),
        "plots": plots,
        "table": sorted(rows, key=lambda r: r["number"]),
    }
    if study_obj.auto is not None:
        auto = study_obj.auto
        summary["auto"] = {
            "budget": {"max_latency_ms": cfg.tune.max_latency_ms, "max_params": cfg.tune.max_params},
            "shapes": {k: {x: v[x] for x in ("latency_ms", "params")} for k, v in auto.shapes.items()},
            "over_budget": {k: {x: v[x] for x in ("latency_ms", "params")} for k, v in auto.dropped.items()},
            "teacher": auto.teacher,
            "candidates": auto.candidates,
            "refused": auto.refused,
        }
    if len(objectives) > 1:
        summary["front"] = [
            {"number": t.number, "values": list(t.values), "params": t.params,
             "test": test_scores(study_obj, out / "trials" / f"{t.number:04d}")[study_obj.task.best_metric]}
            for t in sorted(study.best_trials, key=lambda t: t.number)
        ]  # fmt: skip
    report = _final_report(study_obj, pick, pick_dir, best)
    if "baseline" in report["models"]:
        report["baseline"] = (
            "the configuration as written (config.yaml without the tuned values), distilled from the same teacher "
            "and cached outputs, best checkpoint on validation"
        )
        report["verdicts"] = verdicts(report)
    report["tune"] = summary
    write_text(out / "report.md", render_markdown(report) + "\n".join(tune_markdown(summary)) + "\n")
    write_json(out / "report.json", report)
    print(f"tune: pick trial {pick.number} {pick.params}; best config {tune_dir / 'best.yaml'}")
    return report


def _final_report(study_obj, pick, pick_dir: Path, best: RunConfig) -> dict:
    """The pick against the untuned default on test: the run report, its paired test included."""
    cfg = from_dict(RunConfig, merge(to_dict(best), {"output_dir": str(study_obj.out)}))
    has_default = (study_obj.out / "default" / "student" / "config.json").is_file()
    dirs = {"teacher": study_obj.out / "teacher", "student": pick_dir / "student"}
    if has_default:
        dirs["baseline"] = study_obj.out / "default" / "student"
    roles = {"student": f"tuned student (trial {pick.number})", "baseline": "untuned default"}
    ctx = study_obj.context(cfg, stage_dirs=dirs, roles=roles)
    return run_eval(ctx)
