"""`distil tune --preset auto`: student shapes x recipes x their knobs, under a latency or parameter budget.

Every candidate shape (teacher layers 1..N-1, and new narrower models) is built and timed once before the study,
on the run's latency protocol (batch 1, eval.latency_seq_length tokens, CPU fp32); shapes over the budget are left
out of the space, so every trial meets it and the second objective (latency or size) is the shape's own figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distil.config import RunConfig, load_config, merge, to_dict
from distil.engine import stages as pipeline
from distil.engine.preflight import check_model_pair
from distil.engine.stages import student_stages
from distil.errors import DistilError
from distil.models.loading import count_parameters
from distil.report.evaluate import latency_table
from distil.tune.space import config_of

SHARED = ("task", "output_dir", "seed", "cache_dir", "overwrite", "baseline", "data", "teacher", "eval",
          "general_data", "augment", "embedding", "causal_lm", "tune", "distill")  # fmt: skip
"""Sections a recipe base takes from the user's config: everything but the student and the losses/stages."""
WIDTHS = (128, 192, 256, 312, 384, 512, 768)
KNOBS = {"kd_temperature": (1.0, 8.0, True), "alpha": (0.0, 1.0, False), "learning_rate": (2e-5, 5e-4, True)}


@dataclass
class AutoSpace:
    bases: dict[str, dict]
    """Recipe name -> the user's config with the recipe's student, loss and stages."""
    shapes: dict[str, dict] = field(default_factory=dict)
    """Shape label -> {values (config keys), latency_ms, params} of the shapes within the budget."""
    dropped: dict[str, dict] = field(default_factory=dict)
    """Shapes over the budget (with their figures), for the report."""
    teacher: dict = field(default_factory=dict)
    """The teacher's latency and params on the same protocol."""
    candidates: list[str] = field(default_factory=list)
    """"recipe shape" pairs whose loss terms can run on the student (TinyBERT's attention terms need the
    teacher's head count, ...), within the budget: the one categorical choice of the search."""
    refused: dict[str, str] = field(default_factory=dict)
    """Pairs left out and why."""

    def stored(self) -> dict:
        return {k: getattr(self, k) for k in ("shapes", "dropped", "teacher", "candidates", "refused")}

    def suggest(self, trial) -> tuple[str, dict]:
        """(recipe, config values) of one trial; the shape's latency and params are stored with it."""
        recipe, shape = trial.suggest_categorical("candidate", self.candidates).split(" ")
        values = dict(self.shapes[shape]["values"])
        last = self.bases[recipe].get("stages") or []
        prefix = f"stages.{last[-1]['name']}." if last else ""
        for knob, (low, high, log) in KNOBS.items():
            section = "train" if knob == "learning_rate" else "loss"
            key = f"{prefix}{section}.{knob}" if prefix else ("distill" if section == "train" else "loss") + f".{knob}"
            values[key] = trial.suggest_float(knob, low, high, log=log)
        trial.set_user_attr("latency_ms.b1", self.shapes[shape]["latency_ms"])
        trial.set_user_attr("params", self.shapes[shape]["params"])
        return recipe, values


def _shape_values(teacher_config) -> dict[str, dict]:
    n, hidden = teacher_config.num_hidden_layers, teacher_config.hidden_size
    heads = teacher_config.num_attention_heads
    shapes = {
        f"layers:{k}": {"student.init": "teacher-layers", "student.layers": "uniform", "student.num_layers": k}
        for k in range(1, n)
    }
    for width in (w for w in WIDTHS if w < hidden and w % heads == 0):
        for depth in sorted({2, min(4, n)}):
            shapes[f"config:{depth}x{width}"] = {
                "student.init": "config",
                "student.num_layers": depth,
                "student.hidden_size": width,
                "student.num_attention_heads": heads,
                "student.intermediate_size": 4 * width,
            }
    return shapes


def auto_space(study, teacher, stored: dict | None = None) -> AutoSpace:
    """Build and time every candidate shape once (``stored``: the figures a first process of the study kept, so
    every process searches the same shapes); keep those within the budget. Raises DistilError when none is."""
    cfg: RunConfig = study.cfg
    user = to_dict(cfg)
    bases = {}
    for recipe in cfg.tune.recipes:
        base = to_dict(load_config(recipe))
        bases[recipe] = merge(base, {k: user[k] for k in SHARED})
    space = AutoSpace(bases)
    if stored:
        for key, value in stored.items():
            setattr(space, key, value)
        return space
    models = {"teacher": teacher}
    labels = _shape_values(teacher.config)
    kd = bases[cfg.tune.recipes[0]]
    for label, values in labels.items():
        ctx = pipeline.Context(config_of(kd, values, what="tune preset auto"))
        ctx.share_data(study.ctx)
        models[label] = pipeline.build_student(ctx, teacher).eval()
    e = cfg.eval
    print(f"preset auto: timing {len(labels)} student shapes and the teacher (batch 1, {e.latency_seq_length} tokens)")
    latency = latency_table(models, [1], e.latency_seq_length, e.latency_repeats)
    space.teacher = {"latency_ms": round(latency["teacher"][1], 3), "params": count_parameters(teacher)}
    for label, values in labels.items():
        figures = {"values": values, "latency_ms": round(latency[label][1], 3)}
        figures["params"] = count_parameters(models[label])
        over = (cfg.tune.max_latency_ms and figures["latency_ms"] > cfg.tune.max_latency_ms) or (
            cfg.tune.max_params and figures["params"] > cfg.tune.max_params
        )
        (space.dropped if over else space.shapes)[label] = figures
    if not space.shapes:
        fastest = min(space.dropped.items(), key=lambda kv: kv[1]["latency_ms"])
        smallest = min(space.dropped.items(), key=lambda kv: kv[1]["params"])
        raise DistilError(
            f"--preset auto: no student shape meets the budget (max_latency_ms {cfg.tune.max_latency_ms}, max_params "
            f"{cfg.tune.max_params}); the fastest, {fastest[0]}, takes {fastest[1]['latency_ms']:.2f} ms, the "
            f"smallest, {smallest[0]}, has {smallest[1]['params']:,} parameters (teacher "
            f"{space.teacher['latency_ms']:.2f} ms); raise the budget"
        )
    for recipe, base in bases.items():  # each recipe's stages against each shape, as `distil inspect` checks them
        for label in space.shapes:
            cfg_pair = config_of(base, labels[label], what="tune preset auto")
            try:
                check_model_pair(student_stages(cfg_pair), teacher, models[label])
            except DistilError as e:
                space.refused[f"{recipe} {label}"] = str(e)
                continue
            space.candidates.append(f"{recipe} {label}")
    if not space.candidates:
        raise DistilError(f"--preset auto: no recipe of {cfg.tune.recipes} can train a shape within the budget: "
                          f"{next(iter(space.refused.values()))}")  # fmt: skip
    kept = ", ".join(f"{k} {v['latency_ms']:.2f} ms {v['params'] / 1e6:.1f}M" for k, v in space.shapes.items())
    print(f"preset auto: {len(space.shapes)} shapes within the budget: {kept}; {len(space.dropped)} over it; "
          f"{len(space.candidates)} recipe x shape candidates ({len(space.refused)} pairs cannot train)")  # fmt: skip
    return space
