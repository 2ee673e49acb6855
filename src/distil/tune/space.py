"""The search space of `distil tune`: dotted config keys (the CLI flags' names) -> Optuna distributions.

Every key, range and choice is checked against the run's own config classes before any trial starts, so a typo
or a value the config refuses costs one line, not a study.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from distil.config import (
    ConfigError,
    RunConfig,
    StageConfig,
    flag_specs,
    from_dict,
    merge,
    parse_flag_value,
    to_dict,
)
from distil.errors import DistilError

FIXED_PREFIXES = ("task", "output_dir", "cache_dir", "seed", "overwrite", "baseline", "data.", "teacher.", "tune.",
                  "eval.", "causal_lm.max_", "embedding.eval_max_length", "embedding.max_queries",
                  "embedding.bbc_articles")  # fmt: skip
"""Keys a study never varies: the data and the teacher are shared by every trial (it is trained once), and the
seed is part of what is compared."""


@dataclass
class Param:
    """One searched key: a float or int range, or a list of choices (grid lists are choices)."""

    key: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)
    """The config values of a choice parameter."""
    labels: list = field(default_factory=list)
    """What Optuna stores for each choice (a number, a bool, a string; a list is written as YAML flow text)."""

    def suggest(self, trial) -> Any:
        """The trial's value of this key, as the config reads it."""
        if self.kind == "choice":
            label = trial.suggest_categorical(self.key, self.labels)
            return self.choices[self.labels.index(label)]
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {self.labels}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


def field_types(cfg: RunConfig) -> dict[str, Any]:
    """Dotted key -> annotation of every field a study may set: the run's flags and each stage's fields."""
    types = {key: tp for key, tp, _ in flag_specs(RunConfig) if not key.startswith("stages")}
    for stage in cfg.stages:
        types.update({key: tp for key, tp, _ in flag_specs(StageConfig, f"stages.{stage.name}")})
    return types


def apply_values(base: dict, values: dict[str, Any]) -> dict:
    """``base`` (a config as a dict) with each dotted key set; `stages.<name>.<field>` sets a stage by name."""
    out = merge(base, {})
    out["stages"] = [merge(s, {}) for s in base.get("stages", [])]
    for key, value in values.items():
        parts = key.split(".")
        if parts[0] == "stages":
            node = next(s for s in out["stages"] if s["name"] == parts[1])
            parts = parts[2:]
        else:
            node = out
        for part in parts[:-1]:
            node[part] = merge(node.get(part) or {}, {})
            node = node[part]
        node[parts[-1]] = value
    return out


def config_of(base: dict, values: dict[str, Any], what: str = "tune.space") -> RunConfig:
    """The run config of one point of the space; a value the config refuses names the key and the point."""
    try:
        return from_dict(RunConfig, apply_values(base, values))
    except ConfigError as e:
        point = ", ".join(f"{k}={v}" for k, v in values.items())
        raise DistilError(f"{what}: {point} is not a valid configuration: {e}") from None


def _label(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _number(key: str, spec: dict, name: str) -> float:
    value = spec[name]
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 2e-5 as a string
        except ValueError:
            value = None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise DistilError(f"tune.space.{key}.{name}: {spec[name]!r} is not a number")
    return value


def parse_space(space: dict, cfg: RunConfig, sampler: str) -> list[Param]:
    """Check ``space`` against the config: known keys that a trial may vary, ranges with low <= high, choices and
    both ends of each range that the config accepts. Raises DistilError (one line) on the first problem."""
    if not space:
        raise DistilError("tune.space: empty; name the keys to search (e.g. loss.alpha: {low: 0.0, high: 1.0})")
    types = field_types(cfg)
    base = to_dict(cfg)
    params = []
    for key, spec in space.items():
        key = str(key)
        if key.startswith(FIXED_PREFIXES) or key in ("task", "seed"):
            raise DistilError(
                f"tune.space: '{key}' is fixed for a study (the data and the teacher are shared by every trial, "
                "the seed is part of what is compared); search the student, loss, distill, stages, augment or "
                "general_data keys"
            )
        if key not in types:
            near = difflib.get_close_matches(key, list(types), n=3)
            hint = f"did you mean {', '.join(near)}?" if near else "keys are the `distil run --help` flags"
            stages = [s.name for s in cfg.stages]
            where = f"; a stage's field is stages.<name>.<field> with names {stages}" if stages else ""
            raise DistilError(f"tune.space: '{key}' is not a config field; {hint}{where}")
        if cfg.stages and key.startswith(("loss.", "distill.")):
            names = [s.name for s in cfg.stages]
            raise DistilError(
                f"tune.space: '{key}' is not used by a config with stages {names} (each stage has its own); search "
                f"stages.<name>.loss.* / stages.<name>.train.*, e.g. stages.{names[-1]}."
                + key.replace("distill.", "train.")
            )
        if not isinstance(spec, dict):
            raise DistilError(
                f"tune.space.{key}: {spec!r}; write {{low: A, high: B}}, {{choices: [...]}} or {{grid: [...]}}"
            )
        params.append(_param(key, spec, types[key], sampler))
    for param in params:  # every choice and both ends of every range are valid configurations on their own
        points = param.choices if param.kind == "choice" else [param.low, param.high]
        for value in points:
            config_of(base, {param.key: int(value) if param.kind == "int" else value})
    return params


def _param(key: str, spec: dict, tp: Any, sampler: str) -> Param:
    unknown = set(spec) - {"low", "high", "log", "step", "choices", "grid"}
    if unknown:
        raise DistilError(f"tune.space.{key}: unknown setting {sorted(unknown)}; use low/high/log/step, choices, grid")
    listed = spec.get("choices", spec.get("grid"))
    if listed is not None and (set(spec) & {"low", "high", "log", "step"} or len(set(spec) & {"choices", "grid"}) > 1):
        raise DistilError(f"tune.space.{key}: either a list (choices or grid) or a range (low/high), not both")
    if listed is not None:
        if not isinstance(listed, list) or not listed:
            raise DistilError(f"tune.space.{key}: choices/grid must be a non-empty list, got {listed!r}")
        values = [parse_flag_value(key, v, tp) if isinstance(v, str) else v for v in listed]
        labels = [_label(v) if not isinstance(raw, str) else raw for v, raw in zip(values, listed)]
        if len(set(map(str, labels))) != len(labels):
            raise DistilError(f"tune.space.{key}: a choice is listed twice in {listed}")
        return Param(key, "choice", choices=values, labels=labels)
    if sampler == "grid":
        raise DistilError(f"tune.space.{key}: the grid sampler needs a list here ({{grid: [..]}}), not a range")
    if "low" not in spec or "high" not in spec:
        raise DistilError(f"tune.space.{key}: a range needs low and high, got {spec}")
    low, high = _number(key, spec, "low"), _number(key, spec, "high")
    if low > high:
        raise DistilError(f"tune.space.{key}: low {low:g} > high {high:g}; swap them")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise DistilError(f"tune.space.{key}.log: {log!r}; write true or false")
    if log and low <= 0:
        raise DistilError(f"tune.space.{key}: a log range needs low > 0, got {low:g}")
    step = _number(key, spec, "step") if spec.get("step") is not None else None
    if step is not None and step <= 0:
        raise DistilError(f"tune.space.{key}.step: {step:g}; a step must be > 0")
    if log and step is not None:
        raise DistilError(f"tune.space.{key}: step and log cannot be combined (Optuna)")
    is_int = tp is int or (getattr(tp, "__args__", None) and int in tp.__args__ and float not in tp.__args__)
    if is_int and not (float(low).is_integer() and float(high).is_integer()):
        raise DistilError(f"tune.space.{key}: an int field needs int bounds, got low {low:g}, high {high:g}")
    return Param(key, "int" if is_int else "float", low=low, high=high, log=log, step=step)


def grid_of(params: list[Param]) -> dict[str, list]:
    """Optuna's GridSampler search space (every parameter a choice list)."""
    return {p.key: list(p.labels) for p in params}
