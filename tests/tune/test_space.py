"""`distil tune`'s search space and objectives, checked against the run's config before any trial (no training)."""

from __future__ import annotations

import copy

import optuna
import pytest

from distil.config import RunConfig, load_config, to_dict
from distil.errors import DistilError
from distil.tasks import task_of
from distil.tune.space import Param, apply_values, config_of, parse_space
from distil.tune.study import objective_names


@pytest.fixture(scope="module")
def cfg() -> RunConfig:
    return load_config(None)


@pytest.fixture(scope="module")
def minilm() -> RunConfig:
    return load_config("minilm")


def _refused(space: dict, cfg: RunConfig, sampler: str = "tpe") -> str:
    with pytest.raises(DistilError) as info:
        parse_space(space, cfg, sampler)
    message = str(info.value)
    assert "\n" not in message, message  # one line
    return message


def test_unknown_key_is_refused_with_a_suggestion(cfg):
    message = _refused({"loss.alpah": {"low": 0.0, "high": 1.0}}, cfg)
    assert "'loss.alpah' is not a config field" in message and "did you mean loss.alpha" in message


@pytest.mark.parametrize("key", ["data.max_length", "teacher.model", "seed", "task", "tune.trials"])
def test_fixed_keys_are_refused(cfg, key):
    assert f"'{key}' is fixed for a study" in _refused({key: {"choices": [1, 2]}}, cfg)


def test_ranges_are_checked(cfg):
    assert "low 0.9 > high 0.1" in _refused({"loss.alpha": {"low": 0.9, "high": 0.1}}, cfg)
    zero_low = {"distill.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}
    assert "log range needs low > 0" in _refused(zero_low, cfg)
    assert "log range needs low > 0" in _refused({"loss.kd_temperature": {"low": -1, "high": 4, "log": True}}, cfg)
    assert "needs low and high" in _refused({"loss.alpha": {"low": 0.1}}, cfg)
    assert "unknown setting ['hgh']" in _refused({"loss.alpha": {"low": 0.1, "hgh": 0.2}}, cfg)
    assert "is not a number" in _refused({"loss.alpha": {"low": "x", "high": 0.2}}, cfg)


def test_a_value_the_config_refuses_is_named(cfg):
    message = _refused({"loss.alpha": {"choices": [0.5, 1.5]}}, cfg)
    assert "loss.alpha=1.5 is not a valid configuration" in message and "0.5 is not" not in message
    # both ends of a range are checked too
    assert "loss.alpha=2.0 is not a valid configuration" in _refused({"loss.alpha": {"low": 0.0, "high": 2.0}}, cfg)


def test_grid_sampler_needs_lists(cfg):
    assert "grid sampler needs a list" in _refused({"loss.alpha": {"low": 0.0, "high": 1.0}}, cfg, sampler="grid")
    grid = {"loss.alpha": {"grid": [0.0, 1.0]}, "loss.kd_temperature": {"grid": [1.0, 4.0]}}
    params = parse_space(grid, cfg, "grid")
    assert [(p.key, p.kind, p.choices) for p in params] == [
        ("loss.alpha", "choice", [0.0, 1.0]),
        ("loss.kd_temperature", "choice", [1.0, 4.0]),
    ]


def test_int_fields_get_int_params_and_float_fields_float(cfg):
    params = parse_space(
        {"student.num_layers": {"low": 1, "high": 3}, "loss.kd_temperature": {"low": 1, "high": 8, "log": True}},
        cfg,
        "tpe",
    )
    layers, temperature = params
    assert (layers.kind, layers.low, layers.high) == ("int", 1, 3)
    assert (temperature.kind, temperature.log) == ("float", True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    value = layers.suggest(trial)
    assert isinstance(value, int) and 1 <= value <= 3
    assert isinstance(temperature.suggest(trial), float)
    assert "int bounds" in _refused({"student.num_layers": {"low": 1.5, "high": 3}}, cfg)


def test_list_choices_round_trip_through_labels(cfg):
    (param,) = parse_space({"student.layers": {"choices": ["[0, 2]", "[1, 3]"]}}, cfg, "tpe")
    assert param.choices == [[0, 2], [1, 3]] and param.labels == ["[0, 2]", "[1, 3]"]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert param.suggest(trial) in ([0, 2], [1, 3])
    assert isinstance(trial.params["student.layers"], str)  # what Optuna stores is the label
    assert "listed twice" in _refused({"student.layers": {"choices": ["[0, 2]", "[0, 2]"]}}, cfg)


def test_stage_keys(minilm):
    stages = [s.name for s in minilm.stages]
    assert stages, "the minilm recipe has stages"
    key = f"stages.{stages[-1]}.loss.alpha"
    (param,) = parse_space({key: {"low": 0.0, "high": 1.0}}, minilm, "tpe")
    assert isinstance(param, Param) and param.kind == "float"
    message = _refused({"stages.nosuch.loss.alpha": {"low": 0.0, "high": 1.0}}, minilm)
    assert "'stages.nosuch.loss.alpha' is not a config field" in message and stages[0] in message
    # a stage's value the config refuses is refused too
    assert "is not a valid configuration" in _refused({key: {"choices": [0.5, 3.0]}}, minilm)


def test_apply_values_sets_nested_and_stage_keys_without_mutating_the_base(minilm):
    base = to_dict(minilm)
    before = copy.deepcopy(base)
    last = base["stages"][-1]["name"]
    old = base["stages"][-1]["loss"]["alpha"]
    new_alpha = 0.25 if old != 0.25 else 0.75
    values = {f"stages.{last}.loss.alpha": new_alpha, "loss.kd_temperature": 3.5, "student.num_layers": 2}
    out = apply_values(base, values)
    assert base == before
    assert out["stages"][-1]["loss"]["alpha"] == new_alpha
    assert [s["loss"]["alpha"] for s in out["stages"][:-1]] == [s["loss"]["alpha"] for s in base["stages"][:-1]]
    assert out["loss"]["kd_temperature"] == 3.5 and out["student"]["num_layers"] == 2
    cfg = config_of(base, {f"stages.{last}.loss.alpha": new_alpha})
    assert next(s for s in cfg.stages if s.name == last).loss.alpha == new_alpha
    assert to_dict(load_config("minilm")) == before


def test_objectives_are_checked_against_the_task(cfg):
    task = task_of(cfg)

    def tuned(**tune) -> RunConfig:
        return load_config(None, {"tune": tune})

    assert objective_names(cfg, task) == ([f"validation.{task.best_metric}"], ["maximize"])
    names, directions = objective_names(tuned(objectives=["validation.accuracy", "latency_ms.b1"]), task)
    assert names == ["validation.accuracy", "latency_ms.b1"] and directions == ["maximize", "minimize"]
    assert objective_names(tuned(objectives=["validation.macro_f1", "params"]), task)[1] == ["maximize", "minimize"]
    for bad in ("validation.f1", "validation.loss", "latency_ms.b0", "latency_ms.fast", "speed"):
        with pytest.raises(DistilError, match=f"'{bad}' is not produced by a classification run"):
            objective_names(tuned(objectives=[bad]), task)
    with pytest.raises(DistilError, match="first objective must be a validation metric"):
        objective_names(tuned(objectives=["latency_ms.b1", "validation.accuracy"]), task)
    with pytest.raises(DistilError, match="grid: one objective only"):
        objective_names(tuned(sampler="grid", objectives=["validation.accuracy", "params"]), task)
    # preset auto adds the budget's figure as the second objective
    assert objective_names(tuned(preset="auto", max_params=10**6), task)[0][1] == "params"
    assert objective_names(tuned(preset="auto", max_latency_ms=5.0), task)[0][1] == "latency_ms.b1"
