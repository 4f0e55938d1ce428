"""How long one call of a model takes: the one timer `optimize` (every batch size of every candidate) and
the server's start-up batch tuning share, so that the two agree on which batch size is fastest.

One warm-up call first (kernel selection, allocations), then calls for a fixed time, at least
`min_calls`; the median call is the figure, so one slow call on a shared machine moves it little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_CALLS = 3

Run = Callable[[np.ndarray], object]  # a model's call: a batch in, whatever it gives


def median_call_s(run: Run, batch: np.ndarray, seconds: float, min_calls: int = MIN_CALLS) -> float:
    run(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < seconds:
        call_started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - call_started)
    return float(np.median(times))


@dataclass(slots=True)
class StageTimes:
    """Where one request's time went, for its Server-Timing header: the longest of its images' waits,
    and the decode and model run of the batches they were in (seconds). With tracing on, also `marks`,
    each stage's start and end on the monotonic clock (which every process of the machine shares), for
    the request span's children; `link`, the request span's identity, for the batch spans to link to;
    and the model that answered, and for which task."""

    queue_s: float = 0.0
    decode_s: float = 0.0
    inference_s: float = 0.0
    ran_s: float = 0.0  # when the last of its batches ended
    marks: list[tuple[str, float, float]] | None = None
    link: Any = None  # torchrest.tracing.Carried
    model: str = ""
    version: str = ""
    task: str = ""

    def note(self, enqueued_s: float, started_s: float, decoded_s: float, ran_s: float, before_s: float = 0.0) -> None:
        """One image's batch: when the image was queued, its batch taken, decoded and run (monotonic);
        `before_s`: decoding done before it was queued (by a front-end process)."""
        self.queue_s = max(self.queue_s, started_s - enqueued_s)
        self.decode_s = max(self.decode_s, before_s + decoded_s - started_s)
        self.inference_s = max(self.inference_s, ran_s - decoded_s)
        self.ran_s = max(self.ran_s, ran_s)
        if self.marks is not None:
            stages = (("queue wait", enqueued_s, started_s), ("decode", started_s, decoded_s))
            self.marks += (*stages, ("inference", decoded_s, ran_s))

    def mark(self, stage: str, start_s: float, end_s: float) -> None:
        if self.marks is not None:
            self.marks.append((stage, start_s, end_s))

    def header(self, total_s: float) -> str:
        stages = (("queue", self.queue_s), ("decode", self.decode_s), ("inference", self.inference_s))
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in (*stages, ("total", total_s)))
