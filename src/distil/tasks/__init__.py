"""Task units: each task family is one file declaring its data, model, teacher signal, KD term, metric and serving.

`TASKS` is the one registry, filled here explicitly (no registration by import side effect).
"""

from __future__ import annotations

from distil.errors import DistilError
from distil.tasks.base import Task
from distil.tasks.classification import ClassificationTask

TASKS: dict[str, type] = {
    ClassificationTask.name: ClassificationTask,
}


def get_task(name: str) -> Task:
    """The task registered as ``name``.

    Raises:
        DistilError: no task has that name.
    """
    if name not in TASKS:
        raise DistilError(f"config key 'task': got {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "ClassificationTask", "Task", "get_task"]
