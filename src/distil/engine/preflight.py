"""What can be checked before anything trains: writable folders, a resumed run's configuration, the model pair.

Each check raises `DistilError` with one line naming the input, the value and the fix, so a bad run stops in
seconds instead of after the teacher's fine-tuning.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from torch import nn

from distil.config import RunConfig, StageConfig, to_dict
from distil.engine.compatibility import term_problems
from distil.errors import DistilError

RESUME_SAFE_KEYS = ("overwrite", "cache_dir", "eval.", "teacher.soft_label_batch_size", "tune.")
"""Keys (dotted prefixes) that may differ from the run folder's config.yaml on --resume: they change where the
cache lives or what the report measures, never a trained model."""
RESUME_SAFE_SUFFIXES = (".eval_batch_size", ".logging_steps")
"""Leaf names that may differ on --resume anywhere (evaluation batch size, logging frequency)."""
TEACHER_KEYS = ("seed", "data.", "teacher.")
"""Keys a finished teacher depends on: a stage command on an existing run may not change them."""


def check_writable(path: Path, key: str) -> None:
    """Check that ``path`` can be created and written: create it, write (then delete) a file in it, and remove
    the folders this check created, so a failed run leaves nothing behind.

    Raises:
        DistilError: the path cannot be created or written (a file on the way, no permission, a read-only or
            immutable directory, /proc, ...).
    """
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        if created is not None:
            shutil.rmtree(created)
    except OSError as error:
        why = error.strerror or type(error).__name__
        raise DistilError(
            f"config key '{key}': '{path}' is not a writable directory ({why}); choose a directory you can write "
            f"(--{key} PATH)"
        ) from None


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists (stages) stay whole values."""
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_differences(saved: RunConfig, wanted: RunConfig) -> dict[str, tuple[object, object]]:
    """{dotted key: (saved value, wanted value)} for every leaf that differs."""
    old, new = flatten(to_dict(saved)), flatten(to_dict(wanted))
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def _resume_safe(key: str) -> bool:
    return key.startswith(RESUME_SAFE_KEYS) or key.endswith(RESUME_SAFE_SUFFIXES)


def _describe(diffs: dict[str, tuple[object, object]], limit: int = 4) -> str:
    shown = [f"{k} {old!r} -> {new!r}" for k, (old, new) in list(diffs.items())[:limit]]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(shown) + more


def check_same_run(saved: RunConfig, wanted: RunConfig, out: Path, resume: bool) -> None:
    """Refuse to continue a run folder with settings that would mix two runs.

    With ``resume``, only `RESUME_SAFE_KEYS` / `RESUME_SAFE_SUFFIXES` may differ. Without it (a stage command on
    a run whose teacher exists), the teacher's data, seed and teacher settings (`TEACHER_KEYS`) may not.

    Raises:
        DistilError: naming the keys that differ, their old and new values, and the fix.
    """
    diffs = config_differences(saved, wanted)
    if resume:
        bad = {k: v for k, v in diffs.items() if not _resume_safe(k)}
        fix = "resume with the run's own settings (drop those flags; `--resume` alone reads its config.yaml)"
    else:
        bad = {k: v for k, v in diffs.items() if k.startswith(TEACHER_KEYS)}
        fix = "its teacher was trained with the saved ones; use another --output_dir"
    if bad:
        raise DistilError(
            f"output_dir '{out}' was run with other settings than these: {_describe(bad)} (config.yaml vs now); {fix}"
        )


def check_model_pair(stages: list[StageConfig], teacher: nn.Module, student: nn.Module) -> None:
    """Every stage's loss terms against the teacher/student pair, as `distil inspect` reports them.

    Raises:
        DistilError: naming the stage, the term and why it cannot run.
    """
    for stage in stages:
        problems = term_problems(stage.loss, teacher, student)
        if problems:
            name, reason = next(iter(problems.items()))
            raise DistilError(
                f"stage '{stage.name}': loss.{name} cannot run on this teacher/student pair: {reason}"
                + (f" ({len(problems) - 1} more terms refused; see `distil inspect`)" if len(problems) > 1 else "")
            )
