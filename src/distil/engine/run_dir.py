"""The run folder: which stages are done, their saved models and histories, config.yaml, and the checks that
guard a folder before a stage writes into it.

Layout of ``output_dir``:
    config.yaml                 the resolved configuration (written once the checks passed)
    teacher/ student/ baseline/ saved models (HF format, safetensors) + training_history.json
    soft_labels.json            which cache entry the student used (fingerprint, status, seconds)
    work/<stage>/               Trainer checkpoints (for --resume) and TensorBoard logs
    report.json report.md plots/  the comparison (written last: its presence marks a finished run)
A stage's directory appears only when the stage completed (written under a temporary name, then renamed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from distil.config import RunConfig, dump_yaml, load_config
from distil.engine import processes
from distil.engine.preflight import check_same_run, check_writable
from distil.errors import DistilError
from distil.io import atomic_dir, read_json, write_json, write_text
from distil.models.loading import load_classifier

MODEL_STAGES = ("teacher", "student", "baseline")

Context = Any  # distil.engine.stages.Context (which imports this module): out, cfg, resume, task, done(), ...


def run_started(out: Path) -> bool:
    """A run folder holds a run once any stage started: anything beside config.yaml (written before the first
    stage, so a failure before it leaves a folder that is not a run)."""
    return out.is_dir() and any(p.name != "config.yaml" for p in out.iterdir())


def check_output_dir(cfg: RunConfig, resume: bool, stage: str | None = None) -> None:
    """Refuse to overwrite a finished run (or stage) unless --overwrite; refuse to mix runs unless --resume."""
    out = cfg.output_path
    if cfg.overwrite and out.exists() and stage is None:
        shutil.rmtree(out)
        return
    if stage is not None:
        if (out / stage / "config.json").is_file() and not cfg.overwrite and not resume:
            raise DistilError(f"output_dir '{out}' already holds a finished {stage}; pass --overwrite to replace it")
        return
    if (out / "report.json").is_file() and not resume:
        raise DistilError(
            f"output_dir '{out}' already holds a finished run; pass --overwrite to replace it "
            f"or choose another --output_dir"
        )
    if run_started(out) and not resume:
        raise DistilError(
            f"output_dir '{out}' holds an unfinished run; pass --resume to continue it or --overwrite to start over"
        )


def open_run_dir(ctx: Context, stage: str | None = None) -> None:
    """Every check that needs no data or model: a finished run or stage is not overwritten by accident, cache_dir
    and output_dir are writable, and a run folder that already started is continued only with its own settings
    (`distil.engine.preflight.check_same_run`). ``stage``: the stage command (None: `distil run`). Writes nothing: the
    caller writes config.yaml once the data and the model pair passed their checks too."""
    cfg = ctx.cfg
    if stage in (None, "teacher", "student"):
        check_output_dir(cfg, ctx.resume, stage=stage)
    check_writable(cfg.cache_path, "cache_dir")
    check_writable(cfg.output_path, "output_dir")
    saved = ctx.out / "config.yaml"
    if saved.is_file() and run_started(ctx.out) and (ctx.resume or stage not in (None, "teacher")):
        check_same_run(load_config(str(saved)), cfg, ctx.out, resume=ctx.resume)


def write_config(ctx: Context) -> None:
    write_text(ctx.out / "config.yaml", dump_yaml(ctx.cfg))


def save_stage_model(ctx: Context, stage: str, model, history: dict) -> Path:
    settings = getattr(ctx.task, "model_settings", None)  # what serving must repeat (QA's windows)
    if settings is not None and hasattr(model, "config"):
        model.config.update(settings())
    if processes.is_main():  # under several processes the others wait, then read it
        with atomic_dir(ctx.stage_dir(stage), overwrite=True) as tmp:
            model.save_pretrained(tmp)
            ctx.tokenizer_of(stage).save_pretrained(tmp)  # every saved model (the LSTM too) carries its tokenizer
            write_json(tmp / "training_history.json", history)
    processes.barrier()
    return ctx.stage_dir(stage)


def load_stage_model(ctx: Context, stage: str):
    if not ctx.done(stage):
        raise DistilError(
            f"stage '{stage}' has not run in output_dir '{ctx.out}'; run `distil {stage}` (or `distil run`) first"
        )
    return load_classifier(str(ctx.stage_dir(stage)), auto_class=ctx.task.auto_model_class).eval()


def previous_history(ctx: Context, stage: str) -> dict:
    path = ctx.stage_dir(stage) / "training_history.json"
    return read_json(path) if path.is_file() else {}


def last_checkpoint(work: Path, needs: list[str]) -> str | None:
    """The newest Trainer checkpoint of ``work`` that was written whole: its trainer state (saved last), every
    process's random state and ``needs``; a checkpoint cut short by a kill is passed over. Several processes must
    resume as many as wrote it (their random states and data shards depend on it)."""
    launch = work / "launch.json"
    if launch.is_file() and read_json(launch)["processes"] != processes.world():
        raise DistilError(
            f"--resume: {work} was trained by {read_json(launch)['processes']} processes, this launch has "
            f"{processes.world()}; launch with that many (torchrun --nproc_per_node N) or start over with --overwrite"
        )
    rng = [f"rng_state_{r}.pth" for r in range(processes.world())] if processes.world() > 1 else []
    found = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if work.exists() else []
    whole = [p for p in found if all((p / f).is_file() for f in ["trainer_state.json", *rng, *needs])]
    return str(whole[-1]) if whole else None


def open_work_dir(work: Path, resume: bool, needs: list[str]) -> str | None:
    """A stage's Trainer folder: emptied unless resuming, with launch.json (how many processes write its
    checkpoints); returns the checkpoint to resume from (`last_checkpoint`, the main process's pick) or None."""
    if not resume and work.exists() and processes.is_main():
        shutil.rmtree(work)
    if processes.is_main() and not (work / "launch.json").is_file():  # a new stage, or one of an older distil
        write_json(work / "launch.json", {"processes": _writers(work) or processes.world()})
    processes.barrier()
    return processes.broadcast(last_checkpoint(work, needs) if resume else None)


def _writers(work: Path) -> int | None:
    """How many processes wrote the checkpoints in ``work``, read from their random states (None: no checkpoint)."""
    states = [p.name for p in work.glob("checkpoint-*/rng_state*.pth")]
    if not states:
        return None
    return 1 if "rng_state.pth" in states else len(set(states))
