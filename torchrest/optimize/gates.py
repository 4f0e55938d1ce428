"""optimize's fidelity gate: a candidate's answers against the fp32 reference's on the same held-out inputs,
each task judged by its own gate (`Task.fidelity`: torchrest.tasks.fidelity; the built-ins' in their
modules). A candidate passes when every task its model serves passes.

Answers are read by the model's own heads, as the server reads them, a chunk at a time: a detector's raw
outputs for hundreds of 640 x 640 inputs would not fit in memory, its boxes do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from torchrest.tasks.fidelity import BoundValues, Verdict, shown
from torchrest.tasks.registry import Heads

Outputs = Sequence[np.ndarray]  # a model's outputs for a batch, in order
TaskAnswers = dict[str, Any]  # task -> its answers for the inputs, in order (an array, or a list)
CHUNK = 16  # inputs run at a time

__all__ = ["CHUNK", "Gate", "Outputs", "TaskAnswers", "Verdict", "default_bounds", "shown"]


def default_bounds(heads: Heads) -> dict[str, float | None]:
    """Every bound of the model's tasks at its default."""
    tasks = heads.tasks_by_name.values()
    return {bound.name: bound.parse(bound.default) for task in tasks for bound in task.fidelity.bounds}


class Gate:
    """A model's tasks (its bound heads) and their bounds: answers read from outputs, judged against the
    reference's."""

    def __init__(self, heads: Heads, bounds: Mapping[str, float | None] | None = None, labels: Any = None) -> None:
        self.heads = heads
        self.bounds: BoundValues = default_bounds(heads) | dict(bounds or {})
        self.labels = labels  # the held-out inputs' classes (-1: unlabelled), for a gate that reads them
        self.tasks = heads.tasks
        self.gates = {name: heads.task(name).fidelity for name in self.tasks}

    @property
    def criterion(self) -> str:
        """What the INT8 search reports per step: the first task's measure."""
        return self.gates[self.tasks[0]].criterion(self.bounds, self.labels)

    def answers(self, outputs: Outputs) -> TaskAnswers:
        """Each task's answers for a batch's outputs (an image whose answer is an error agrees with nothing;
        where it is the reference's, the image is left out of the comparison)."""
        return {
            name: self.gates[name].answers(name, head, outputs, self.heads.spans[name])
            for name, head in self.heads.by_task.items()
        }

    def run(self, run: Callable[[np.ndarray], Outputs], inputs: np.ndarray) -> TaskAnswers:
        """`run` over `inputs` a chunk at a time -> each task's answers for all of them."""
        parts = [self.answers(run(inputs[at : at + CHUNK])) for at in range(0, len(inputs), CHUNK)]
        return {task: _joined([part[task] for part in parts]) for task in self.tasks}

    def judge(self, reference: TaskAnswers, candidate: TaskAnswers) -> list[Verdict]:
        verdicts = []
        for task in self.tasks:
            gate = self.gates[task]
            valid = gate.valid(reference[task])
            left_out = len(valid) - int(valid.sum())
            ref, cand = _kept(reference[task], valid), _kept(candidate[task], valid)
            labels = None if self.labels is None else self.labels[valid]
            verdict = gate.judge(task, ref, cand, self.bounds, labels)
            if left_out:
                verdict.details["left_out"] = left_out  # inputs fp32 itself gave no answer for
            verdicts.append(verdict)
        return verdicts

    def harm(self, reference: Outputs, candidate: Outputs) -> float:
        """How far raw outputs moved, summed over the tasks (the INT8 search's ranking of layers)."""
        return sum(
            self.gates[name].harm(head, reference, candidate, self.heads.spans[name])
            for name, head in self.heads.by_task.items()
        )

    def notes(self, reference: TaskAnswers) -> list[str]:
        """What makes the gates' figures weaker than they look."""
        return [note for task in self.tasks for note in self.gates[task].notes(reference[task])]


def _kept(answers: Any, valid: np.ndarray) -> Any:
    if isinstance(answers, list):
        return [answer for answer, keep in zip(answers, valid, strict=True) if keep]
    return answers[valid]


def _joined(parts: list[Any]) -> Any:
    if parts and isinstance(parts[0], list):
        return [item for part in parts for item in part]
    return np.concatenate(parts)
