"""`distil tune`: an Optuna study over a run's own settings.

Layout of ``output_dir``:
    config.yaml              the study's base configuration (tune section included)
    teacher/                 trained once; every trial reads it (and its cached outputs: the soft-label cache)
    default/                 the configuration as written, trained once (tune.compare_default)
    trials/NNNN/             one run folder per trial: config.yaml, training_history; student/ kept for the best
    tune/study.db            the Optuna storage (SQLite) unless --storage names another
    tune/trials.csv tune/best.yaml tune/plots/*.png
    report.json report.md    the pick against the untuned default on test (the only test evaluation)

Trials are ranked on validation only. Several processes may work on one study (the same --storage); each
finished trial is counted once, and a trial whose process died is marked failed (its host and pid, or Optuna's
heartbeat for another machine) before the study goes on.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import math
import os
import shutil
import socket
import time
import warnings
import zlib
from pathlib import Path

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from distil.config import RunConfig, load_config, to_dict
from distil.engine import stages as pipeline
from distil.engine.preflight import check_writable, config_differences
from distil.errors import DistilError
from distil.io import read_json, write_json
from distil.models.loading import count_parameters
from distil.report.evaluate import latency_table
from distil.tune.auto import AutoSpace, auto_space
from distil.tune.output import best_trials, finish_study
from distil.tune.space import Param, config_of, grid_of, parse_space

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


MAX_FAILURES = 5
"""Failed trials in a row after which a study stops (a space whose points cannot train)."""
LOWER_IS_BETTER = {"perplexity", "nll", "loss"}
CONTINUE_SAFE = ("tune.trials", "tune.storage", "tune.keep_best", "overwrite", "cache_dir")
"""What may change when a study is continued: how many trials, where it is stored, what is kept."""


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial's parameters again (a trial of a dead process: on this host, or by Optuna's heartbeat);
    a grid point keeps its grid id; the dead trial's user attributes (error, pid, steps) stay with it."""
    system = {**trial.system_attrs, "failed_trial": trial.number}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, system_attrs=system))  # fmt: skip


class _Surplus(Exception):
    """A trial asked for after the study already had its trials (two workers at the last slot)."""


class _Reporter(TrainerCallback):
    """Reports the validation metric of each evaluation to the trial; stops the Trainer when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.offset, self.last = 0, -1  # steps of earlier stages (a multi-stage recipe), last step reported

    def on_train_begin(self, args, state, control, **kwargs):
        self.training, self.stage_steps = True, state.max_steps
        self.trial.set_user_attr("max_steps", self.offset + state.max_steps)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        step = self.offset + state.global_step
        if not getattr(self, "training", False) or value is None or step <= self.last:
            return  # the best checkpoint's evaluation after training: not a step of the curve
        self.last = step
        self.trial.set_user_attr("steps", step)
        if not self.prune:
            return
        self.trial.report(float(value), step)
        # a stage is not judged in its first quarter (a low learning rate starts slow), nor at its last step (the
        # training is paid for: stopping then saves nothing)
        judged = 0.25 * self.stage_steps <= state.global_step < self.stage_steps
        if judged and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation {self.metric} {value:.4f} at step {step}")

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        self.offset += state.global_step


def objective_names(cfg: RunConfig, task) -> tuple[list[str], list[str]]:
    """The study's objectives and their directions; an objective the task does not produce is refused."""
    if not getattr(task, "validates", True):
        raise DistilError(
            f"tune: a {task.name} run has no validation pass to rank trials on (it keeps the last weights); "
            "tune a task that validates (classification, token-classification, question-answering)"
        )
    names = list(cfg.tune.objectives) or [f"validation.{task.best_metric}"]
    if cfg.tune.preset == "auto" and len(names) == 1:
        names.append("latency_ms.b1" if cfg.tune.max_latency_ms or not cfg.tune.max_params else "params")
    metrics = [m for m, _ in task.report_metrics]
    directions = []
    for name in names:
        kind, _, what = name.partition(".")
        ok = (kind == "validation" and what in metrics) or name == "params"
        ok = ok or (kind == "latency_ms" and what.startswith("b") and what[1:].isdigit() and int(what[1:]) >= 1)
        if not ok:
            valid = ", ".join([f"validation.{m}" for m in metrics] + ["latency_ms.b1", "params"])
            raise DistilError(f"tune.objectives: '{name}' is not produced by a {task.name} run; use {valid}")
        lower = kind != "validation" or what in LOWER_IS_BETTER or (what == task.best_metric and task_lower(task))
        directions.append("minimize" if lower else "maximize")
    if len(names) > 1 and cfg.tune.sampler == "grid":
        raise DistilError("tune.sampler grid: one objective only (use nsga2 or tpe for a Pareto front)")
    if cfg.tune.preset == "auto" and names[1:] not in (["latency_ms.b1"], ["params"]):
        raise DistilError(f"--preset auto: the second objective is latency_ms.b1 or params, got {names[1:]}")
    if not names[0].startswith("validation."):
        raise DistilError(f"tune.objectives: the first objective must be a validation metric, got '{names[0]}'")
    return names, directions


def task_lower(task) -> bool:
    return bool(getattr(task, "lower_is_better", False))


def _sampler(cfg: RunConfig, params: list[Param], worker: int = 0):
    """Optuna's sampler; each process of a study draws from its own seed (the first process: the run's seed), so
    workers started together do not propose the same first points."""
    seed = cfg.seed + 1000 * worker + (zlib.crc32(socket.gethostname().encode()) % 1000 if cfg.tune.storage else 0)
    if cfg.tune.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(params), seed=seed)
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, (cfg.tune.trials or 20) // 4)))
    startup = max(2, min(10, (cfg.tune.trials or 20) // 3))  # a short study leaves TPE room to model
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
    )


def _pruner(cfg: RunConfig, objectives: list[str]):
    if cfg.tune.pruner == "none" or len(objectives) > 1:
        return optuna.pruners.NopPruner()
    if cfg.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def storage_url(cfg: RunConfig) -> str:
    if cfg.tune.storage:
        return cfg.tune.storage
    return f"sqlite:///{(cfg.output_path / 'tune' / 'study.db').resolve()}"


@contextlib.contextmanager
def _study_lock(out: Path):
    """One process of this machine at a time builds the shared teacher and default (workers wait, then reuse)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".tune.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Study:
    """One `distil tune` process: shared teacher and data, the Optuna study, the trials, the pick."""

    def __init__(self, cfg: RunConfig, resume: bool = False):
        self.cfg, self.out = cfg, cfg.output_path
        self.base = to_dict(cfg)
        self.ctx = pipeline.Context(cfg, resume=resume)
        self.task = self.ctx.task
        self.objectives, self.directions = objective_names(cfg, self.task)
        self.metric = self.objectives[0].split(".", 1)[1]
        self.params: list[Param] = []
        self.worker = 0  # this process's index among the study's processes
        self.auto: AutoSpace | None = None  # preset auto: shapes within the budget, recipe bases
        if cfg.tune.preset != "auto":
            if not cfg.tune.space:
                raise DistilError(
                    "tune.space: empty; add the keys to search under tune.space in the config (README: Tuning) "
                    "or use --preset auto"
                )
            self.params = parse_space(cfg.tune.space, cfg, cfg.tune.sampler)
        elif not (cfg.tune.max_latency_ms or cfg.tune.max_params):
            raise DistilError("--preset auto: give the budget with --max-latency-ms X and/or --max-params N")
        self.grid_size = math.prod(len(p.choices) for p in self.params) if cfg.tune.sampler == "grid" else None
        self.n_trials = cfg.tune.trials if cfg.tune.trials is not None else (self.grid_size or 20)
        if self.grid_size is not None:
            self.n_trials = min(self.n_trials, self.grid_size)

    # -- the shared part: folder, data, teacher, default -----------------------------------------------------

    def prepare(self) -> None:
        """Check the folder, read the data, train the teacher once and the untuned default once."""
        cfg, out = self.cfg, self.out
        if cfg.overwrite and cfg.tune.storage:
            raise DistilError(
                "--overwrite with --storage: the study lives in that storage; delete it there (`optuna delete-study`) "
                "or use another --study-name"
            )
        if cfg.overwrite and out.exists():
            shutil.rmtree(out)
        cfg.overwrite = False  # the saved config continues the study; it never wipes it again
        saved = out / "config.yaml"
        if saved.is_file():  # the same study again continues it; another one in its folder is refused
            diffs = config_differences(load_config(str(saved)), cfg)
            diffs = {k: v for k, v in diffs.items() if not k.startswith(CONTINUE_SAFE)}
            if diffs:
                shown = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(diffs.items())[:4])
                raise DistilError(
                    f"output_dir '{out}' holds a study with other settings: {shown}; continue it with its own "
                    "config.yaml (`distil tune OUTPUT_DIR/config.yaml`), or use another --output_dir (or --overwrite)"
                )
        check_writable(cfg.cache_path, "cache_dir")
        check_writable(out, "output_dir")
        self.ctx.load_data()
        if not self.ctx.done("teacher"):
            self.check_points()
        auto_file = out / "tune" / "auto.json"  # the shapes every process of the study searches
        if cfg.tune.preset == "auto":  # timed on the teacher's architecture before anything trains
            if auto_file.is_file():
                self.auto = auto_space(self, None, read_json(auto_file))
            else:
                done = self.ctx.done("teacher")
                teacher = pipeline.load_stage_model(self.ctx, "teacher") if done else None
                teacher = teacher if teacher is not None else pipeline._general_teacher(self.ctx)
                self.auto = auto_space(self, teacher)
        with _study_lock(out):
            if self.auto is not None:  # the first process's figures win (timing noise near the budget)
                if auto_file.is_file():
                    self.auto = auto_space(self, None, read_json(auto_file))
                else:
                    write_json(auto_file, self.auto.stored())
            pipeline.write_config(self.ctx)
            workers = out / "tune" / "workers.txt"  # this process's index among the study's processes (its seed)
            workers.parent.mkdir(parents=True, exist_ok=True)
            self.worker = len(workers.read_text().splitlines()) if workers.is_file() else 0
            with open(workers, "a", encoding="utf-8") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            if not self.ctx.done("teacher"):
                pipeline.run_teacher(self.ctx)
            else:
                print(f"teacher: done ({self.ctx.stage_dir('teacher')})")
            if cfg.tune.compare_default and not (out / "default" / "student" / "config.json").is_file():
                print("default: the configuration as written, trained once for the comparison")
                default = self.trial_context(cfg, out / "default")
                pipeline.run_student(default)
                shutil.rmtree(out / "default" / "work", ignore_errors=True)

    def check_points(self) -> None:
        """The base config, then each choice and both ends of each range of a student, loss or stage key, against
        the teacher (layer lists against its depth, loss terms against the pair): a bad point costs one line
        before the teacher trains, not a failed trial later."""
        pipeline.check_models(self.ctx)
        for param in self.params:
            if not param.key.startswith(("student.", "loss.", "stages.")):
                continue
            for value in param.choices if param.kind == "choice" else [param.low, param.high]:
                value = int(value) if param.kind == "int" else value
                try:
                    pipeline.check_models(self.context(config_of(self.base, {param.key: value})))
                except DistilError as e:
                    raise DistilError(f"tune.space.{param.key}: {_short(value)}: {e}") from None

    def trial_context(self, cfg: RunConfig, folder: Path, callbacks: list | None = None) -> pipeline.Context:
        """A run context in ``folder`` (its config.yaml written) that trains one student from the study's teacher."""
        cfg = copy.deepcopy(cfg)
        cfg.output_dir, cfg.baseline, cfg.overwrite = str(folder), False, True
        ctx = self.context(cfg, callbacks=callbacks or [], stage_dirs={"teacher": self.out / "teacher"})
        pipeline.write_config(ctx)
        return ctx

    def context(self, cfg: RunConfig, **fields) -> pipeline.Context:
        """A context of ``cfg`` that reads the study's tokenised data when its data and student tokenizer are the
        study's (else it reads its own)."""
        ctx = pipeline.Context(cfg, **fields)
        base = self.cfg.student
        same_tokens = (cfg.student.init, cfg.student.pretrained) == (base.init, base.pretrained) or (
            "pretrained" not in (cfg.student.init, base.init)
        )
        if to_dict(cfg.data) == to_dict(self.cfg.data) and same_tokens:
            ctx.share_data(self.ctx)
        else:
            ctx.load_data()
        return ctx

    # -- the study ------------------------------------------------------------------------------------------

    def open_study(self) -> optuna.Study:
        with _study_lock(self.out):  # workers creating one new SQLite storage together would collide
            return self._open_study()

    def _open_study(self) -> optuna.Study:
        url = storage_url(self.cfg)
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        try:
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=30, grace_period=120, heartbeat_stale_trial_callback=requeue
            )
        except Exception as e:  # a bad URL or an unreachable database
            raise DistilError(
                f"--storage '{url}': cannot open it ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        folder = str(self.out.resolve())  # the default name: the folder's, made unique by its full path
        name = self.cfg.tune.study_name or f"distil-{self.out.resolve().name}-{zlib.crc32(folder.encode()):08x}"
        params = self.params if self.cfg.tune.preset != "auto" else []
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=_sampler(self.cfg, params, self.worker),
            pruner=_pruner(self.cfg, self.objectives),
            directions=self.directions,
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != self.directions:
            raise DistilError(f"--storage: study '{name}' exists with other objectives; use another tune.study_name")
        if study.user_attrs.get("objectives") not in (None, self.objectives):
            raise DistilError(
                f"--storage: study '{name}' optimises {study.user_attrs['objectives']}, not {self.objectives}; "
                "use another tune.study_name"
            )
        study.set_user_attr("objectives", self.objectives)
        self._fail_dead_trials(study)
        return study

    def _fail_dead_trials(self, study: optuna.Study) -> None:
        """A trial left running by a process of this host that is gone (kill -9) is failed, never finished."""
        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = trial.user_attrs.get("pid")
            if trial.user_attrs.get("host") != host or pid is None or _alive(pid):
                continue
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "error", f"its process ({pid}) died")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process of the study failed it first
            shutil.rmtree(self.out / "trials" / f"{trial.number:04d}" / "work", ignore_errors=True)
            print(f"trial {trial.number}: its process ({pid}) is gone; marked failed, its point queued again")
            requeue(study, study._storage.get_trial(trial._trial_id))  # the same parameters (a grid point) again

    def counts(self, study: optuna.Study, before=None) -> tuple[int, int]:
        """(finished, running) trials; with ``before`` (a trial), those that started before it (a re-queued point
        keeps its older number but starts when it is taken)."""
        finished = running = 0
        mine = (before.datetime_start, before.number) if before is not None else None
        for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
            if mine is not None and (t.number == mine[1] or (t.datetime_start, t.number) >= mine):
                continue
            if t.state == TrialState.RUNNING:
                running += 1
            else:
                finished += 1
        return finished, running

    def optimize(self, study: optuna.Study) -> None:
        done, _ = self.counts(study)
        if done:
            print(f"study: {done} of {self.n_trials} trials already finished; continuing")
        failures = 0
        while True:
            optuna.storages.fail_stale_trials(study)  # another host's trial whose heartbeat stopped
            self._fail_dead_trials(study)
            finished, running = self.counts(study)
            if finished + running >= self.n_trials:
                break
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # a dead trial's point
            grid = isinstance(study.sampler, optuna.samplers.GridSampler)
            if grid and not waiting and study.sampler.is_exhausted(study):  # (the grid counts it as visited)
                break
            self._last = None
            study.optimize(self.objective, n_trials=1, catch=(_Surplus, DistilError, RuntimeError),
                           callbacks=[self._progress])  # fmt: skip
            last = self._last  # this process's trial (the study's newest may be another worker's)
            if last is None:
                continue
            failures = failures + 1 if last.state == TrialState.FAIL and not last.user_attrs.get("surplus") else 0
            if failures >= MAX_FAILURES:
                raise DistilError(
                    f"tune: {failures} trials in a row failed (last: {last.user_attrs.get('error', 'see above')}); "
                    "fix the space or the config, then run the same command to continue the study"
                )

    def objective(self, trial: optuna.Trial):
        for key in ("error", "steps", "max_steps", "seconds"):  # a re-queued point's copy of the dead trial's
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        finished, running = self.counts(trial.study, before=trial.study._storage.get_trial(trial._trial_id))
        if finished + running >= self.n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus("the study already has its trials")
        if self.auto is not None:
            recipe, values = self.auto.suggest(trial)
            trial.set_user_attr("recipe", recipe)
            cfg = config_of(self.auto.bases[recipe], values, what="tune preset auto")
        else:
            values = {p.key: p.suggest(trial) for p in self.params}
            cfg = config_of(self.base, values)
        folder = self.out / "trials" / f"{trial.number:04d}"
        reporter = _Reporter(trial, self.metric, prune=len(self.objectives) == 1)
        start = time.perf_counter()
        try:
            ctx = self.trial_context(cfg, folder, callbacks=[reporter])
            pipeline.run_student(ctx)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            shutil.rmtree(folder / "work", ignore_errors=True)
            raise
        except (DistilError, RuntimeError) as e:  # RuntimeError: out of memory, a shape the pair cannot train
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            shutil.rmtree(folder / "work", ignore_errors=True)
            raise
        history = read_json(folder / "student" / "training_history.json")
        validation = {k.replace("eval_", ""): v for k, v in (history.get("best_validation") or {}).items()}
        reported = {m for m, _ in self.task.report_metrics} | {"loss"}
        trial.set_user_attr("validation", {k: v for k, v in validation.items() if k in reported})
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        results = []
        for name in self.objectives:
            kind, _, what = name.partition(".")
            if kind != "validation" and self.auto is not None:  # the shape's own figure, timed once
                results.append(float(trial.user_attrs[name]))
            elif kind == "validation":
                if what not in validation:
                    raise DistilError(f"trial {trial.number}: no validation {what} (the stage ran no evaluation)")
                results.append(float(validation[what]))
            else:
                results.append(self.measure(ctx, name))
        shutil.rmtree(folder / "work", ignore_errors=True)
        return results[0] if len(results) == 1 else results

    def measure(self, ctx: pipeline.Context, name: str) -> float:
        """latency_ms.bN (median, the run's latency protocol) or params of a trial's saved student."""
        model = pipeline.load_stage_model(ctx, "student")
        if name == "params":
            return float(count_parameters(model))
        batch = int(name.split(".b")[1])
        e = self.cfg.eval
        return float(latency_table({"s": model}, [batch], e.latency_seq_length, e.latency_repeats)["s"][batch])

    def _progress(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._last = trial
        if trial.user_attrs.get("surplus"):
            return
        finished, _ = self.counts(study)
        where = f"trial {trial.number} ({finished}/{self.n_trials})"
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        seconds = trial.user_attrs.get("seconds", 0)
        if trial.state == TrialState.PRUNED:
            print(f"{where}: pruned at step {trial.last_step} of {trial.user_attrs.get('max_steps')} "
                  f"({params}) after {seconds:.0f} s")  # fmt: skip
        elif trial.state == TrialState.FAIL:
            print(f"{where}: failed: {trial.user_attrs.get('error', 'see the log above')}")
        else:
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.objectives, trial.values))
            best = _best_line(study, self.objectives)
            print(f"{where}: {values} ({params}) in {seconds:.0f} s; {best}")
        self.keep_best(study)

    def keep_best(self, study: optuna.Study) -> None:
        """Delete the student folders of finished trials outside the best `tune.keep_best` (or the Pareto front)."""
        kept = {t.number for t in best_trials(study, self.cfg.tune.keep_best)}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            folder = self.out / "trials" / f"{trial.number:04d}" / "student"
            if trial.number not in kept and folder.is_dir():
                shutil.rmtree(folder)

    def run(self) -> dict | None:
        self.prepare()
        study = self.open_study()
        self.optimize(study)
        finished, running = self.counts(study)
        if running:
            print(
                f"study: {running} trial(s) still running in other processes; the last one writes the report (a "
                "process that died on another machine is noticed ~2 min later: then run the same command again)"
            )
            return None
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise DistilError("tune: no trial finished (every one failed or was pruned); see the lines above")
        return finish_study(self, study)


def _best_line(study: optuna.Study, objectives: list[str]) -> str:
    if len(objectives) > 1:
        return f"Pareto front: {len(study.best_trials)} trial(s)"
    best = best_trials(study, 1)[0]
    return f"best so far {best.value:.4g} (trial {best.number})"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tune_main(cfg: RunConfig, resume: bool = False) -> dict | None:
    """`distil tune`: run (or continue) the study of ``cfg.tune``; returns the final report, or None when other
    processes still run trials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # distil prints one line per trial itself
        return Study(cfg, resume=resume).run()
