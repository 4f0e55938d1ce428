"""The tasks' registry: each task module's TASK by name, and a model's tasks bound to its outputs (Heads).
What the engine and the handlers ask; torchrest.tasks itself (the names, the default fitting) is what the
configuration reads, without torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from torchrest.errors import ModelError, ModelLoadError
from torchrest.tasks import classify, detect, embed, segment
from torchrest.tasks.base import Answer, Decoded, Geometry, Head, Output, OutputShape


class Task(Protocol):
    name: str
    route: str  # its HTTP endpoint
    outputs: tuple[str, ...]  # the Open Inference Protocol outputs it can give
    default_outputs: tuple[str, ...]  # those given when a request names none

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[Any, int]:
        """The head that reads the model's outputs from `first` on, and how many it reads; ModelLoadError
        (one line, naming what was expected and what was found) when they do not fit."""
        ...

    def http_options(self, query: Mapping[str, str]) -> Any:
        """The request's options from its query string (400 when they are not valid)."""
        ...

    def encodes_off_loop(self, answer: Answer) -> bool:
        """Whether writing this answer is long enough to leave the event loop for."""
        ...

    def http_body(
        self, answer: Answer, options: Any, head: Any, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        """The HTTP answer: its body and content type."""
        ...

    def v2_options(self, parameters: Mapping[str, object], head: Any) -> Any: ...
    def v2_metadata(self, head: Any) -> list[dict[str, Any]]: ...
    def v2_outputs(
        self, answers: list[Answer], options: Any, head: Any, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]: ...


TASKS: dict[str, Task] = {task.name: task for task in (classify.TASK, embed.TASK, detect.TASK, segment.TASK)}


def task_named(name: str) -> Task:
    task = TASKS.get(name)
    if task is None:
        raise ModelLoadError(f"unknown task {name!r}: choose {', '.join(TASKS)}")
    return task


@dataclass(frozen=True)
class Heads:
    """A model's tasks, each bound to the outputs it reads. The first is the model's own: what a request
    that names no task asks of it."""

    by_task: dict[str, Any] = field(default_factory=dict)
    read: int = 0  # how many of the model's outputs its tasks read (the first ones)

    @classmethod
    def bind(cls, tasks: Sequence[str], outputs: Sequence[OutputShape], input_size: tuple[int, int]) -> Heads:
        heads: dict[str, Any] = {}
        first = 0
        for name in tasks:
            head, used = task_named(name).bind(outputs, first, input_size)
            heads[name] = head
            first += used
        return cls(heads, first)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.by_task)

    def decode(self, outputs: Sequence[np.ndarray], tasks: Sequence[str], options: Sequence[Any]) -> list[Decoded]:
        """Each image's answer (or error) from a batch's outputs, image `i` asking for `tasks[i]`. In a batch of
        several tasks, one task's failure fails its own images only."""
        first = tasks[0]
        if all(task == first for task in tasks):
            return list(self.by_task[first].decode(outputs, slice(0, len(tasks)), options))
        answers: dict[int, Decoded] = {}
        for name in dict.fromkeys(tasks):
            rows = np.array([row for row, task in enumerate(tasks) if task == name])
            try:
                decoded = self.by_task[name].decode(outputs, rows, [options[row] for row in rows])
            except Exception as exc:  # noqa: BLE001 - the others' answers stand
                decoded = [ModelError(f"the model's {name} answers failed: {type(exc).__name__}")] * len(rows)
            answers.update(zip(rows.tolist(), decoded, strict=True))
        return [answers[row] for row in range(len(tasks))]

    def describe(self) -> dict[str, object]:
        return {name: head.describe() for name, head in self.by_task.items()}


def output_shapes(outputs: Sequence[np.ndarray]) -> tuple[OutputShape, ...]:
    """A batch's outputs -> each one's shape for one image."""
    return tuple(tuple(int(d) for d in output.shape[1:]) for output in outputs)


__all__ = [
    "TASKS",
    "Answer",
    "Decoded",
    "Geometry",
    "Head",
    "Heads",
    "Output",
    "OutputShape",
    "Task",
    "output_shapes",
    "task_named",
]
