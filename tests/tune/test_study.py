"""`distil tune` end to end on a tiny teacher and a few dozen real Rotten Tomatoes rows: the grid, the teacher and
its outputs shared by every trial, pruning, kill -9 and continuing, two workers on one storage, the pick tested
once, and bad inputs refused in one line. The study's bookkeeping is also driven with a stand-in trainer (no
training) where a case needs a process that died mid-trial."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from distil.cli import main
from distil.config import load_config
from distil.engine import stages, teacher_cache
from distil.errors import DistilError
from distil.io import write_json
from distil.tune.output import trial_rows
from distil.tune.study import FINISHED, Study, _Reporter

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="session")
def teacher_dir(tiny_teacher_dir) -> str:
    return tiny_teacher_dir  # conftest's tiny BERT teacher folder


def _config(folder: Path, teacher: str, tune: dict, fine_tune: bool = False) -> Path:
    """A tiny study's YAML: 64 training rows (4 steps of 16), an evaluation every 2 steps, no default run."""
    data = {
        "output_dir": str(folder / "study"),
        "cache_dir": str(folder / "cache"),
        "teacher": {"model": teacher, "fine_tune": fine_tune,
                    "train": {"epochs": 1, "bf16": False, "learning_rate": 0.001}},
        "data": {"max_train_samples": 64, "max_eval_samples": 32, "max_length": 16, "extra_test_sets": []},
        "distill": {"epochs": 1, "bf16": False, "learning_rate": 0.001, "save_steps": 2, "batch_size": 16},
        "student": {"layers": [0, 2]},
        "eval": {"latency_repeats": 2, "latency_batch_sizes": [1]},
        "tune": {"compare_default": False, **tune},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


RANGES = {"loss.alpha": {"low": 0.0, "high": 1.0}, "loss.kd_temperature": {"low": 1.0, "high": 8.0, "log": True}}
GRID = {"loss.alpha": {"grid": [0.0, 1.0]}, "loss.kd_temperature": {"grid": [1.0, 4.0]}}


def _storage(out: Path) -> optuna.Study:
    url = f"sqlite:///{out / 'tune' / 'study.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def _counted(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if not t.user_attrs.get("surplus")]


def _csv(out: Path) -> list[dict]:
    with open(out / "tune" / "trials.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@contextlib.contextmanager
def _threads_back(threads: int):
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- one grid study in this process: the teacher and its outputs counted, trial 1 forced to be pruned -----------


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory, teacher_dir):
    folder = tmp_path_factory.mktemp("grid")
    path = _config(folder, teacher_dir, {"sampler": "grid", "trials": None, "space": GRID, "compare_default": True,
                                         "keep_best": 1}, fine_tune=True)  # fmt: skip
    calls = {"teacher": 0, "logits": 0}
    run_teacher, logits_to = stages.run_teacher, teacher_cache.teacher_logits_to

    def counting_teacher(ctx):
        calls["teacher"] += 1
        return run_teacher(ctx)

    def counting_logits(*args, **kwargs):
        calls["logits"] += 1
        return logits_to(*args, **kwargs)

    printed, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and fair to a busy machine
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed), _threads_back(threads):
        mp.setattr(stages, "run_teacher", counting_teacher)
        mp.setattr(teacher_cache, "teacher_logits_to", counting_logits)
        mp.setattr(optuna.pruners.MedianPruner, "prune", lambda self, study, trial: trial.number == 1)
        code = main(["tune", str(path)])
    assert code == 0, printed.getvalue()[-3000:]
    return {"out": folder / "study", "calls": calls, "log": printed.getvalue()}


def test_grid_runs_each_combination_exactly_once(grid_study):
    out = grid_study["out"]
    trials = _counted(_storage(out))
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    assert [t.state for t in trials].count(TrialState.PRUNED) == 1 and len(trials) == 4
    points = sorted((t.params["loss.alpha"], t.params["loss.kd_temperature"]) for t in trials)
    assert points == [(0.0, 1.0), (0.0, 4.0), (1.0, 1.0), (1.0, 4.0)]
    rows = _csv(out)
    assert sorted(int(r["number"]) for r in rows) == [t.number for t in trials]
    assert sorted((float(r["param:loss.alpha"]), float(r["param:loss.kd_temperature"])) for r in rows) == points
    for t in trials:  # each trial trained with its own point
        saved = load_config(str(out / "trials" / f"{t.number:04d}" / "config.yaml"))
        point = (t.params["loss.alpha"], t.params["loss.kd_temperature"])
        assert (saved.loss.alpha, saved.loss.kd_temperature) == point


def test_teacher_trained_and_its_outputs_computed_once(grid_study):
    out = grid_study["out"]
    assert grid_study["calls"] == {"teacher": 1, "logits": 1}  # 4 trials and the default read them
    folders = [out / "default", *sorted((out / "trials").iterdir())]
    statuses = [json.loads((f / "soft_labels.json").read_text())["status"] for f in folders]
    assert len(statuses) == 5 and statuses.count("built") == 1 and statuses.count("hit") == 4, statuses
    assert not list((out / "trials").glob("*/teacher")), "a trial trained its own teacher"


def test_a_pruned_trial_stops_early_and_is_recorded_pruned(grid_study):
    out = grid_study["out"]
    pruned = next(t for t in _storage(out).get_trials() if t.number == 1)
    assert pruned.state == TrialState.PRUNED
    assert pruned.user_attrs["steps"] < pruned.user_attrs["max_steps"] == 4
    assert list(pruned.intermediate_values) == [2]  # the evaluation at step 2, reported once
    row = next(r for r in _csv(out) if r["number"] == "1")
    assert row["state"] == "pruned" and row["steps"] == "2" and row["max_steps"] == "4"
    assert not (out / "trials" / "0001" / "student").exists()
    assert "trial 1 (2/4): pruned at step 2 of 4" in grid_study["log"]


def test_only_the_pick_and_the_default_are_tested(grid_study):
    out = grid_study["out"]
    study = _storage(out)
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    assert all("test" in report["models"][m] for m in report["models"])
    pick = report["tune"]["pick"]["number"]
    picked = next(t for t in study.get_trials() if t.number == pick)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert picked.state == TrialState.COMPLETE and picked.value == max(t.value for t in complete)
    assert report["tune"]["trials"] == 4 and report["tune"]["states"] == {"complete": 3, "pruned": 1}
    assert not [c for row in _csv(out) for c in row if "test" in c.lower()]
    assert not list((out / "trials").rglob("report.json")) and not list((out / "default").rglob("report.json"))
    # keep_best 1: only the pick's student folder is kept
    assert [p.parent.name for p in (out / "trials").glob("*/student")] == [f"{pick:04d}"]
    best = load_config(str(out / "tune" / "best.yaml"))
    assert best.output_dir.endswith("best") and Path(best.output_dir).parent == out
    assert best.baseline is True and best.tune.space == {}
    assert (best.loss.alpha, best.loss.kd_temperature) == (
        picked.params["loss.alpha"],
        picked.params["loss.kd_temperature"],
    )
    assert (out / "report.md").is_file() and "## Tuning" in (out / "report.md").read_text()


# -- the pruning callback ------------------------------------------------------------------------------------


class _FakeTrial:
    def __init__(self, prune: bool):
        self.user_attrs: dict = {}
        self.reports: list[tuple[float, int]] = []
        self.asked, self.prune = 0, prune

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value

    def report(self, value, step):
        self.reports.append((value, step))

    def should_prune(self):
        self.asked += 1
        return self.prune


class _State:
    def __init__(self, max_steps: int, global_step: int = 0):
        self.max_steps, self.global_step = max_steps, global_step


def _evaluate(reporter: _Reporter, state: _State, step: int, value: float = 0.5) -> None:
    state.global_step = step
    reporter.on_evaluate(None, state, None, metrics={"eval_accuracy": value, "eval_loss": 1.0})


def test_reporter_prunes_only_after_the_first_quarter():
    trial = _FakeTrial(prune=True)
    reporter, state = _Reporter(trial, "accuracy", prune=True), _State(max_steps=8)
    reporter.on_train_begin(None, state, None)
    assert trial.user_attrs["max_steps"] == 8
    _evaluate(reporter, state, 1, 0.4)  # step 1 < 8 / 4: reported, not judged
    assert trial.reports == [(0.4, 1)] and trial.asked == 0
    _evaluate(reporter, state, 1, 0.4)  # the same step again: not a new point of the curve
    assert trial.reports == [(0.4, 1)]
    with pytest.raises(optuna.TrialPruned, match="accuracy 0.6000 at step 2"):
        _evaluate(reporter, state, 2, 0.6)
    assert trial.reports == [(0.4, 1), (0.6, 2)] and trial.asked == 1 and trial.user_attrs["steps"] == 2
    last = _FakeTrial(prune=True)  # the stage's last step: reported, never judged (the training is paid for)
    reporter = _Reporter(last, "accuracy", prune=True)
    reporter.on_train_begin(None, state, None)
    _evaluate(reporter, state, 8, 0.3)
    assert last.reports == [(0.3, 8)] and last.asked == 0


def test_reporter_reports_each_evaluation_once_across_stages():
    trial = _FakeTrial(prune=False)
    reporter, state = _Reporter(trial, "accuracy", prune=True), _State(max_steps=4)
    reporter.on_train_begin(None, state, None)
    for step in (2, 4):
        _evaluate(reporter, state, step)
    reporter.on_train_end(None, state, None)
    _evaluate(reporter, state, 4, 0.9)  # the best checkpoint's evaluation after training
    second = _State(max_steps=6)  # a second stage: its steps follow the first's
    reporter.on_train_begin(None, second, None)
    assert trial.user_attrs["max_steps"] == 10
    _evaluate(reporter, second, 3, 0.7)
    _evaluate(reporter, second, 3, 0.7)
    reporter.on_evaluate(None, second, None, metrics={"eval_loss": 1.0})  # no accuracy: nothing reported
    assert trial.reports == [(0.5, 2), (0.5, 4), (0.7, 7)] and trial.asked == 2  # step 4 ends its stage: not judged
    assert trial.user_attrs["steps"] == 7
    silent = _FakeTrial(prune=True)  # prune=False (two objectives): steps kept, nothing reported or judged
    quiet = _Reporter(silent, "accuracy", prune=False)
    quiet.on_train_begin(None, state, None)
    _evaluate(quiet, state, 4)
    assert silent.reports == [] and silent.asked == 0 and silent.user_attrs["steps"] == 4


# -- processes: kill -9 and continue; two workers ----------------------------------------------------------------


def _cli(log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-m", "distil.cli", *args], env=env, stdout=handle,
                                stderr=subprocess.STDOUT)  # fmt: skip


def test_kill_9_mid_study_then_the_same_command_finishes_it(tmp_path, teacher_dir):
    path = _config(tmp_path, teacher_dir, {"trials": 2, "space": RANGES, "compare_default": True})
    out = tmp_path / "study"
    first = _cli(tmp_path / "first.log", "tune", str(path))
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not (out / "trials" / "0001").exists():
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    before = {t.number: t.state for t in _storage(out).get_trials()}
    assert before == {0: TrialState.COMPLETE, 1: TrialState.RUNNING}, before

    second = _cli(tmp_path / "second.log", "tune", str(path))
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert f"trial 1: its process ({first.pid}) is gone; marked failed" in log
    assert "study: 1 of 2 trials already finished; continuing" in log
    trials = _counted(_storage(out))
    states = {t.number: t.state for t in trials}
    assert states[1] == TrialState.FAIL and TrialState.RUNNING not in states.values()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 2 and len(trials) == 3
    assert trials[-1].params == trials[1].params  # the killed trial's point, queued again and run
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 2, "a point was evaluated twice"
    assert {r["number"]: r["state"] for r in _csv(out)}["1"] == "fail"
    assert (out / "report.md").is_file() and json.loads((out / "report.json").read_text())["tune"]["pick"]


def test_two_workers_on_one_storage_finish_exactly_n_trials(tmp_path, teacher_dir):
    path = _config(tmp_path, teacher_dir, {"trials": 3, "space": RANGES, "compare_default": True})
    out = tmp_path / "study"
    workers = [_cli(tmp_path / f"worker{i}.log", "tune", str(path)) for i in range(2)]
    for i, worker in enumerate(workers):
        log = (tmp_path / f"worker{i}.log").read_text() if worker.wait(timeout=300) else ""
        assert worker.returncode == 0, log[-3000:]
    trials = _counted(_storage(out))
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 3, [(t.number, t.state) for t in trials]
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 3, "both workers drew the same point"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert {t.user_attrs["pid"] for t in trials} <= {w.pid for w in workers}
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert sum("teacher: done" in log for log in logs) == 1  # the second waited for the first's teacher
    assert (out / "report.md").is_file() and len(_csv(out)) == 3


# -- the study's bookkeeping with a stand-in trainer (no data read, no training) -----------------------------------


@pytest.fixture
def stand_in_trainer(monkeypatch):
    """Every trial 'trains' at once: a student folder with a validation accuracy, nothing else."""

    def run_student(ctx, live_teacher=False):
        write_json(ctx.out / "student" / "training_history.json", {"best_validation": {"eval_accuracy": 0.5}})
        return {}

    monkeypatch.setattr(stages, "run_student", run_student)


def _left_running(study_obj: Study, study: optuna.Study, pid: int, host: str | None = None) -> int:
    """A trial a process started and never finished (it was killed): its point drawn, its host and pid stored."""
    trial = study.ask()
    for param in study_obj.params:
        param.suggest(trial)
    trial.set_user_attr("host", host or socket.gethostname())
    trial.set_user_attr("pid", pid)
    return trial.number


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _points(trials) -> list[tuple]:
    return sorted((t.params["loss.alpha"], t.params["loss.kd_temperature"]) for t in trials)


def test_only_trials_of_dead_processes_on_this_host_are_failed(tmp_path, teacher_dir, stand_in_trainer):
    cfg = load_config(str(_config(tmp_path, teacher_dir, {"trials": 3, "space": RANGES})))
    first = Study(cfg)
    study = first.open_study()
    dead = _left_running(first, study, _dead_pid())
    alive = _left_running(first, study, os.getpid())
    elsewhere = _left_running(first, study, _dead_pid(), host="another-host")
    again = Study(cfg)  # the same command again
    study = again.open_study()
    trials = {t.number: t for t in study.get_trials()}
    assert {n: trials[n].state for n in (dead, alive, elsewhere)} == {
        dead: TrialState.FAIL,
        alive: TrialState.RUNNING,
        elsewhere: TrialState.RUNNING,
    }
    queued = [t for t in trials.values() if t.state == TrialState.WAITING]  # the dead trial's point, again
    assert len(trials) == 4 and [t.params for t in queued] == [trials[dead].params]
    again.optimize(study)  # the two running trials count: one more finishes the study, the queued point
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.params for t in complete] == [trials[dead].params]
    assert [t.state for t in trials].count(TrialState.RUNNING) == 2 and len(trials) == 4


def test_a_killed_grid_point_is_run_again(tmp_path, teacher_dir, stand_in_trainer):
    cfg = load_config(str(_config(tmp_path, teacher_dir, {"sampler": "grid", "trials": None, "space": GRID})))
    first = Study(cfg)
    study = first.open_study()
    study.optimize(first.objective, n_trials=1)
    _left_running(first, study, _dead_pid())
    again = Study(cfg)
    study = again.open_study()
    again.optimize(study)
    finished = [t for t in study.get_trials() if t.state in FINISHED]
    assert _points(finished) == [(0.0, 1.0), (0.0, 4.0), (1.0, 1.0), (1.0, 4.0)]


def test_the_last_grid_point_killed_is_run_again(tmp_path, teacher_dir, stand_in_trainer):
    """The grid counts a failed point as visited: the queued copy of the last point must still run."""
    cfg = load_config(str(_config(tmp_path, teacher_dir, {"sampler": "grid", "trials": None, "space": GRID})))
    first = Study(cfg)
    study = first.open_study()
    study.optimize(first.objective, n_trials=3)
    _left_running(first, study, _dead_pid())
    again = Study(cfg)
    study = again.open_study()
    again.optimize(study)
    finished = [t for t in study.get_trials() if t.state in FINISHED]
    assert _points(finished) == [(0.0, 1.0), (0.0, 4.0), (1.0, 1.0), (1.0, 4.0)]
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_a_requeued_point_that_finishes_reports_no_error(tmp_path, teacher_dir, stand_in_trainer):
    cfg = load_config(str(_config(tmp_path, teacher_dir, {"trials": 1, "space": RANGES})))
    first = Study(cfg)
    _left_running(first, first.open_study(), _dead_pid())
    again = Study(cfg)
    study = again.open_study()
    again.optimize(study)
    (row,) = [r for r in trial_rows(study, again.objectives) if r["state"] == "complete"]
    assert row["error"] == "", row


def test_two_workers_failing_the_same_dead_trial(tmp_path, teacher_dir, stand_in_trainer, monkeypatch):
    cfg = load_config(str(_config(tmp_path, teacher_dir, {"trials": 3, "space": RANGES})))
    first = Study(cfg)
    study = first.open_study()
    _left_running(first, study, _dead_pid())
    seen = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # b lists the running trials ...
    a, b = Study(cfg), Study(cfg)
    study_a = a.open_study()  # ... a fails the dead one (and queues its point) ...
    study_b = optuna.load_study(study_name=study_a.study_name, storage=study_a._storage)
    monkeypatch.setattr(study_b, "get_trials", lambda **kwargs: seen)
    b._fail_dead_trials(study_b)  # ... and b finds it failed already: no error, no second copy of the point
    assert [t.state for t in study_a.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def _open_together(workers: list[Study]) -> list[str]:
    """Each worker opens the study's storage at the same moment (one thread each); the errors they meet."""
    barrier, errors = threading.Barrier(len(workers)), []

    def open_study(study_obj: Study) -> None:
        barrier.wait()
        try:
            study_obj.open_study()
        except DistilError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=open_study, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_workers_opening_a_new_storage_together(tmp_path, teacher_dir):
    for attempt in range(5):  # one collision is enough; each attempt opens a new storage with 3 workers at once
        cfg = load_config(str(_config(tmp_path / str(attempt), teacher_dir, {"trials": 3, "space": RANGES})))
        errors = _open_together([Study(cfg) for _ in range(3)])
        assert errors == [], errors[0]


# -- bad input through the CLI: exit status 2, one line ------------------------------------------------------------


def _error(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("distil: error: ") == 1, err
    last = err.splitlines()[-1]  # progress bars may precede it on stderr; the error is one line
    assert last.startswith("distil: error: "), err
    return last


def test_bad_input_is_refused_before_any_work(tmp_path, teacher_dir, capsys):
    def refused(space: dict, *flags: str) -> str:
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        message = _error(capsys, "tune", str(_config(folder, teacher_dir, {"space": space})), *flags)
        assert not (folder / "study").exists() and not (folder / "cache").exists(), message
        return message

    assert "did you mean loss.alpha" in refused({"loss.alpah": {"low": 0.0, "high": 1.0}})
    assert "low 0.9 > high 0.1" in refused({"loss.alpha": {"low": 0.9, "high": 0.1}})
    message = refused(RANGES, "--tune.objectives", "[validation.f1]")
    assert "'validation.f1' is not produced by a classification run" in message and "validation.accuracy" in message
    assert "--max-latency-ms" in refused({}, "--preset", "auto")


def test_preset_auto_with_a_budget_no_shape_meets(tmp_path, teacher_dir, capsys):
    path = _config(tmp_path, teacher_dir, {})
    message = _error(capsys, "tune", str(path), "--preset", "auto", "--max-latency-ms", "0.0001")
    assert "no student shape meets the budget" in message
    fastest = message.split("the fastest, ", 1)[1].split(",", 1)[0]
    assert fastest in {f"layers:{k}" for k in (1, 2, 3)}, message  # the tiny teacher's shapes: 1..3 of its layers
    assert "ms" in message and "raise the budget" in message
    assert not (tmp_path / "study" / "trials").exists() and not (tmp_path / "study" / "tune" / "study.db").exists()


def test_a_study_without_the_default_writes_its_report(tmp_path, teacher_dir):
    path = _config(tmp_path, teacher_dir, {"trials": 1, "space": RANGES, "compare_default": False})
    with _threads_back(torch.get_num_threads()):
        torch.set_num_threads(1)
        assert main(["tune", str(path)]) == 0
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"} and (tmp_path / "study" / "report.md").is_file()
