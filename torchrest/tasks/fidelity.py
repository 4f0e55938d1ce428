"""How `torchrest optimize` judges a task's answers: a candidate's against the fp32 reference's on the same
held-out inputs. Each task declares its gate (`Task.fidelity`); a task that declares none gets `Closeness`.

    outputs of a chunk -> Fidelity.answers (per input) -> joined over the held-out set
    reference and candidate answers -> Fidelity.judge -> Verdict (measure, value, bound, passed, why not)

A gate's bounds are options of `torchrest optimize` (`Bound`: its flag, its default, how it reads), so a
task of one's own brings its own flag (`--depth-min-closeness`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BoundValues = Mapping[str, float | None]  # bound name -> its value (None: an optional bound left unset)


@dataclass(frozen=True, slots=True)
class Bound:
    """One bound of a task's gate: an option of `torchrest optimize` (flag --<name with dashes>, variable
    TORCHREST_<NAME>). A share reads 1% or 0.01; a number reads as one, from `low` to `high`. An optional
    bound ("" by default) changes how the gate judges when it is given."""

    name: str
    default: str
    help: str
    share: bool = True
    low: float = 0.0
    high: float = 1.0
    optional: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> float | None:
        """The bound's value (ValueError naming the flag when it does not read)."""
        text = str(text).strip()
        if not text and self.optional:
            return None
        try:
            value = float(text[:-1]) / 100 if self.share and text.endswith("%") else float(text)
        except ValueError:
            shape = "1% or 0.01" if self.share else "a number"
            raise ValueError(f"{self.flag} must look like {shape}, got {text!r}") from None
        if not self.low <= value <= self.high:
            if self.share:
                raise ValueError(f"{self.flag} must be between {self.low:.0%} and {self.high:.0%}, got {text!r}")
            raise ValueError(f"{self.flag} must be from {self.low:g} to {self.high:g}, got {text!r}")
        return value


@dataclass(frozen=True, slots=True)
class Verdict:
    """One task's measure for one candidate: what the report and config.json record."""

    task: str
    measure: str
    value: float
    bound: float
    passed: bool
    reason: str = ""  # why it failed, in a line (empty when it passed)
    details: dict[str, float] = field(default_factory=dict)  # the task's other figures
    figures: dict[str, str] = field(default_factory=dict)  # the report's columns: heading -> the value as shown
    gate: str = ""  # what the gate asks, in words (the report's opening)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def shown(self) -> str:
        """The value as the report prints it: a share as a percentage, anything else as a number."""
        return shown(self.measure, self.value)

    def summary(self) -> dict[str, Any]:
        """config.json's record: the measure, its value and its bound."""
        return {"task": self.task, "measure": self.measure, "value": round(self.value, 6), "bound": self.bound}


SHARES = ("agreement", "accuracy", "match", "kept")  # measures that are shares of the inputs, shown as %


def shown(measure: str, value: float) -> str:
    return f"{value:.1%}" if any(word in measure for word in SHARES) else f"{value:.4f}"


class Fidelity:
    """A task's gate. `answers` reads one chunk's outputs into per-input answers (an array with the inputs
    first, or a list); `valid` says which inputs the reference answered; `judge` compares; `harm` ranks
    how far raw outputs moved (the INT8 search's ordering of layers). `read` is the span of the model's
    outputs this task reads."""

    measure = ""
    bounds: tuple[Bound, ...] = ()

    def answers(self, task: str, head: Any, outputs: Sequence[np.ndarray], read: range) -> Any:
        raise NotImplementedError

    def valid(self, reference: Any) -> np.ndarray:
        """Which inputs fp32 gave an answer for (default: the rows of finite values)."""
        return np.isfinite(np.asarray(reference)).reshape(len(reference), -1).all(axis=1)

    def judge(self, task: str, reference: Any, candidate: Any, bounds: BoundValues, labels: Any) -> Verdict:
        raise NotImplementedError

    def harm(self, head: Any, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], read: range) -> float:
        """Default: the relative L2 distance of the outputs the task reads."""
        return relative_l2([reference[i] for i in read], [candidate[i] for i in read])

    def criterion(self, bounds: BoundValues, labels: Any) -> str:
        """What the INT8 search reports per step when this task is the model's own."""
        return self.measure

    def check(self, bounds: BoundValues, labelled: bool) -> str:
        """Why these bounds cannot be used on these inputs ("" when they can)."""
        return ""

    def notes(self, reference: Any) -> list[str]:
        """What makes this gate's figures weaker than they look, from the reference's answers."""
        return []


class Closeness(Fidelity):
    """The default gate: each input's outputs (those the task reads, flattened) as close to fp32's as
    1 - ||candidate - reference|| / ||reference||, the worst input at least the bound (--<task>-min-closeness)."""

    measure = "min closeness"

    def __init__(self, task: str, default: str = "0.99") -> None:
        self.bound = Bound(
            f"{task.replace('-', '_')}_min_closeness",
            default,
            f"{task}: the least closeness of any input's outputs to fp32's (1 - relative L2 distance)",
            share=False,
            low=-1e9,
        )
        self.bounds = (self.bound,)

    def answers(self, task: str, head: Any, outputs: Sequence[np.ndarray], read: range) -> np.ndarray:
        count = len(outputs[0])
        return np.concatenate([np.asarray(outputs[i], np.float32).reshape(count, -1) for i in read], axis=1)

    def judge(self, task: str, reference: Any, candidate: Any, bounds: BoundValues, labels: Any) -> Verdict:
        least = bounds[self.bound.name]
        assert least is not None
        moved = np.linalg.norm(np.nan_to_num(candidate - reference, nan=np.inf), axis=1)
        size = np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
        closeness = 1.0 - moved / size
        value = float(closeness.min()) if len(closeness) else 1.0
        reason = f"min closeness {value:.4f} < {least:.4f}" if value < least - 1e-9 else ""
        return Verdict(
            task,
            self.measure,
            value,
            least,
            not reason,
            reason,
            {"mean_closeness": float(closeness.mean()) if len(closeness) else 1.0},
            {self.measure: f"{value:.4f}"},
            f"each input's outputs at least {least:g} close to fp32's (1 - relative L2 distance)",
        )


def relative_l2(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """||candidate - reference|| / ||reference|| over all the given outputs (NaN: infinitely far)."""
    moved = sum(_squares(np.subtract(c, r, dtype=np.float32)) for r, c in zip(reference, candidate, strict=True))
    size = sum(_squares(np.asarray(r, np.float32)) for r in reference)
    value = (moved / max(size, 1e-12)) ** 0.5
    return value if np.isfinite(value) else float("inf")


def _squares(values: np.ndarray) -> float:
    """The sum of squares, in float64 (a float32 dot product of the flat array: no temporary copy)."""
    flat = values.reshape(-1)
    return float(np.dot(flat, flat).astype(np.float64))
