"""Several processes (torchrun / accelerate launch): who writes, who waits, and a clean end.

distil runs unchanged under the ecosystem's launchers: ``torchrun --nproc_per_node N -m distil.cli run CONFIG`` or
``accelerate launch --multi_gpu --num_processes N -m distil.cli run CONFIG``. The Trainer already trains with DDP
under them; this module adds what distil itself must coordinate:

- the process group is opened once, early (accelerate's `PartialState`, which the Trainer then reuses), so the run
  folder's checks and the teacher cache can wait for each other before any Trainer exists;
- only the main process writes the run folder (models, config, report, plots, soft_labels.json); the others wait at a
  barrier (`main_only`) or run after the main process (`main_first`, for caches the main process fills);
- the run ends with a barrier, the group torn down and `os._exit` (about 1 in 20 gloo runs aborted at exit
  otherwise, ../shared/STACK.md), the main process going on alone to the evaluation, which is measured once.

In one process every function here is a no-op (world 1, rank 0, main).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import PartialState

from distil.errors import DistilError

TIMEOUT_ENV = "DISTIL_DDP_TIMEOUT"
"""Seconds a process waits for the others at a barrier (default 7200: the main process may build a large cache)."""
AUDIT_ENV = "DISTIL_AUDIT_WRITES"
"""A folder: every non-main process logs each file it opens for writing, creates, renames or deletes to
``<folder>/writes-rank<r>.txt`` (a check that it leaves the run folder alone; off by default)."""


def launched() -> bool:
    """True under a launcher that started several processes (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> int:
    """Number of processes in the run (1 without a launcher)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def start() -> None:
    """Open the process group when launched with several processes (gloo on CPU, nccl on GPUs), through accelerate
    so the Trainer later finds it open. A second call does nothing."""
    if not launched() or world() > 1:
        return
    seconds = float(os.environ.get(TIMEOUT_ENV, "7200"))
    PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=seconds))
    if world() <= 1:
        raise DistilError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}: the launcher set several processes but no process group "
            "opened; launch with torchrun --nproc_per_node N or accelerate launch --multi_gpu --num_processes N"
        )
    folder = os.environ.get(AUDIT_ENV)
    if folder and not is_main():
        _audit_writes(Path(folder) / f"writes-rank{rank()}.txt")


def device() -> torch.device:
    """This process's device: its GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def broadcast(value: Any) -> Any:
    """The main process's ``value`` on every process (any picklable object between distil's own processes)."""
    if world() <= 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """Every process's ``value``, in rank order, on every process."""
    if world() <= 1:
        return [value]
    out: list = [None] * world()
    dist.all_gather_object(out, value)
    return out


def _outcome(error: BaseException | None) -> None:
    """Share the main process's outcome of a block; every process raises the main process's error, if any (a user
    error as the same one line, anything else named as the main process's failure)."""
    described = None if error is None else (isinstance(error, DistilError), f"{type(error).__name__}: {error}")
    shared = broadcast(None if error is None else (*described, str(error)))
    if error is not None:
        raise error
    if shared is not None:
        user_error, what, message = shared
        raise DistilError(message if user_error else f"the main process failed ({what})")


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (filling a cache); the others run it after, finding the cache. An error
    on the main process reaches the others (they raise too, none waits for a barrier that never comes)."""
    if world() <= 1:
        yield
        return
    if not is_main():
        _outcome(None)
        yield
        return
    try:
        yield
    except BaseException as error:
        _outcome(error)
    _outcome(None)


def main_only(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the main process only, every process waiting until it is done; an error there
    reaches every process. ``fn`` must not use collectives (barriers, broadcasts)."""
    if world() <= 1:
        return fn(*args, **kwargs)
    result = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            _outcome(error)
    _outcome(None)
    return broadcast(result)


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` in place over the processes (gradients of modules the Trainer's DDP does not wrap)."""
    if world() <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with the main process's values."""
    if world() <= 1:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


def finish(code: int = 0) -> None:
    """End a multi-process run: wait for all, tear the group down; the non-main processes exit here (``code``), the
    main process returns and goes on alone (evaluation, report)."""
    if world() <= 1:
        return
    dist.barrier()
    main = is_main()
    dist.destroy_process_group()
    if not main:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _audit_writes(log: Path) -> None:
    """Log every file this process writes, creates, renames or deletes (Python audit events) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "a", buffering=1)  # noqa: SIM115 - kept open for the life of the process

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writes and os.fspath(args[0]) != os.fspath(log):
                out.write(f"open {os.fsdecode(os.fspath(args[0]))}\n")
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.replace"):
            out.write(f"{event} {' '.join(str(a) for a in args[:2])}\n")

    sys.addaudithook(hook)
