"""Which tasks there are, and a model's tasks bound to its outputs (Heads).

A task is named by an installed entry point (group `torchrest.tasks`: the built-ins are registered so, in
pyproject.toml, as any package's are) or by its import path, `package.module:Class` (imported in the engine
and, carried inside the model's heads, in every front-end process). A name that finds nothing, a module
that fails to import or an object that is not a Task is one line (UnknownTask: exit 2 at start-up).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from torchrest.errors import ModelLoadError, TaskFailed
from torchrest.tasks.base import Answer, Decoded, Geometry, Head, Output, OutputShape, Task

log = logging.getLogger("torchrest.tasks")

GROUP = "torchrest.tasks"
DEFAULT_TASK = "classify"  # a model file's when none is named: the seed's
NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
# the server's own first path segments: a task's route cannot take them
RESERVED = frozenset({"health", "metrics", "v2", "openapi.json", "web", "static", "docs", "index.html"})


class UnknownTask(ModelLoadError, ValueError):
    """A task that cannot be had: no such name, a module that fails to import, not a Task (one line)."""


@cache
def installed() -> dict[str, EntryPoint]:
    """The installed packages' tasks by name (the built-ins among them)."""
    return {point.name: point for point in entry_points(group=GROUP)}


_loaded: dict[str, Task] = {}  # name or import path -> the task


def task_named(spec: str) -> Task:
    """'detect' (an entry point) or 'package.module:Class' -> the task, loaded once."""
    spec = spec.strip()
    task = _loaded.get(spec)
    if task is None:
        task = _load(spec)
        _loaded[spec] = task
    return task


def tasks_named(text: str) -> tuple[Task, ...]:
    """'detect', 'classify,embed' or 'package.module:Class' -> the tasks, each loaded and checked."""
    specs = [part.strip() for part in (text or DEFAULT_TASK).split(",") if part.strip()]
    if not specs:
        raise UnknownTask(f"a model needs a task: {', '.join(installed())}, or package.module:Class")
    tasks = tuple(task_named(spec) for spec in specs)
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise UnknownTask(f"a task is named twice in {text!r}")
    return tasks


def first_task(text: str) -> Task:
    """The task that decides a model's default fitting and normalisation: its first."""
    return tasks_named(text)[0]


def installed_tasks() -> list[Task]:
    """Every installed task that loads (one that does not is logged and left out)."""
    tasks = []
    for name in installed():
        try:
            tasks.append(task_named(name))
        except UnknownTask as exc:
            log.warning("installed task %s left out: %s", name, exc)
    return tasks


def _load(spec: str) -> Task:
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        found: Any = _import(spec, module_name)
        for part in attribute.split("."):
            found = getattr(found, part, None)
            if found is None:
                raise UnknownTask(f"task {spec}: module {module_name} has no {attribute}")
    else:
        point = installed().get(spec)
        if point is None:
            known = ", ".join(installed()) or "none installed"
            raise UnknownTask(f"unknown task {spec!r}: choose {known}, or name one as package.module:Class")
        try:
            found = point.load()
        except Exception as exc:  # noqa: BLE001 - whatever the package's import raises, said in one line
            raise UnknownTask(f"task {spec} ({point.value}) fails to import: {type(exc).__name__}: {exc}") from None
    try:
        task = found() if isinstance(found, type) else found
    except Exception as exc:  # noqa: BLE001 - a class that cannot be made without arguments is not a task
        raise UnknownTask(f"task {spec} is not a torchrest.tasks.Task ({type(exc).__name__}: {exc})") from None
    if not isinstance(task, Task):
        raise UnknownTask(f"task {spec} is a {type(task).__name__}, not a torchrest.tasks.Task")
    if not NAME.fullmatch(task.name or "") or task.name in RESERVED:
        raise UnknownTask(
            f"task {spec} is named {task.name!r}: a name is lower-case letters, digits, - and _ (its route is "
            f"POST /<name>), and not one of the server's own ({', '.join(sorted(RESERVED))})"
        )
    return task


def _import(spec: str, module_name: str) -> Any:
    """The module, looked for on the path and then in the working folder (as `uvicorn app:app` does)."""
    try:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.split(".")[0] or "" in sys.path:
                raise
            sys.path.insert(0, "")
            return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises, said in one line
        raise UnknownTask(f"task {spec} fails to import: {type(exc).__name__}: {exc}") from None


def spec_of(task: Task) -> str:
    """How `task` is named again: its entry point's name, else its import path."""
    point = installed().get(task.name)
    path = f"{type(task).__module__}:{type(task).__qualname__}"
    return task.name if point is not None and point.value == path else path


@dataclass(frozen=True)
class Heads:
    """A model's tasks, each bound to the outputs it reads. The first is the model's own: what a request
    that names no task asks of it. Pickled into the front-end processes, the tasks come along (their
    modules imported there)."""

    by_task: dict[str, Any] = field(default_factory=dict)
    read: int = 0  # how many of the model's outputs its tasks read (the first ones)
    tasks_by_name: dict[str, Task] = field(default_factory=dict)
    spans: dict[str, range] = field(default_factory=dict)  # which of the model's outputs each task reads

    @classmethod
    def bind(cls, tasks: Sequence[Task | str], outputs: Sequence[OutputShape], input_size: tuple[int, int]) -> Heads:
        """Each task (or task named) bound to the outputs it reads, in order."""
        heads: dict[str, Any] = {}
        spans: dict[str, range] = {}
        first = 0
        for named in tasks:
            task = named if isinstance(named, Task) else task_named(named)
            head, used = task.bind(outputs, first, input_size)
            heads[task.name] = head
            spans[task.name] = range(first, first + used)
            first += used
        found = [named if isinstance(named, Task) else task_named(named) for named in tasks]
        return cls(heads, first, {task.name: task for task in found}, spans)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.by_task)

    def task(self, name: str) -> Task:
        return self.tasks_by_name[name]

    def decode(self, outputs: Sequence[np.ndarray], tasks: Sequence[str], options: Sequence[Any]) -> list[Decoded]:
        """Each image's answer (or error) from a batch's outputs, image `i` asking for `tasks[i]`. A task's
        step that raises fails its own images (500 task_failed), never the others' or the server."""
        first = tasks[0]
        if all(task == first for task in tasks):
            return self._decode(first, outputs, slice(0, len(tasks)), options)
        answers: dict[int, Decoded] = {}
        for name in dict.fromkeys(tasks):
            rows = np.array([row for row, task in enumerate(tasks) if task == name])
            answers.update(
                zip(rows.tolist(), self._decode(name, outputs, rows, [options[r] for r in rows]), strict=True)
            )
        return [answers[row] for row in range(len(tasks))]

    def _decode(self, name: str, outputs: Sequence[np.ndarray], rows: Any, options: Sequence[Any]) -> list[Decoded]:
        try:
            return list(self.by_task[name].decode(outputs, rows, options))
        except Exception as exc:  # noqa: BLE001 - the task's own code: its images fail, the rest stand
            log.exception("task %s failed on a batch", name)
            count = len(options)
            return [TaskFailed(f"task {name} failed on this image's batch: {type(exc).__name__}: {exc}")] * count

    def describe(self) -> dict[str, object]:
        return {name: head.describe() for name, head in self.by_task.items()}


def output_shapes(outputs: Sequence[np.ndarray]) -> tuple[OutputShape, ...]:
    """A batch's outputs -> each one's shape for one image."""
    return tuple(tuple(int(d) for d in output.shape[1:]) for output in outputs)


__all__ = [
    "DEFAULT_TASK",
    "Answer",
    "Decoded",
    "Geometry",
    "Head",
    "Heads",
    "Output",
    "OutputShape",
    "Task",
    "UnknownTask",
    "first_task",
    "installed_tasks",
    "output_shapes",
    "spec_of",
    "task_named",
    "tasks_named",
]
