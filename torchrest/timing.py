"""How long one call of a model takes: the one timer `optimize` (every batch size of every candidate) and
the server's start-up batch tuning share, so that the two agree on which batch size is fastest.

One warm-up call first (kernel selection, allocations), then calls for a fixed time, at least
`min_calls`; the median call is the figure, so one slow call on a shared machine moves it little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_CALLS = 3

Run = Callable[[np.ndarray], np.ndarray]


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
    and the decode and model run of the batches they were in (seconds)."""

    queue_s: float = 0.0
    decode_s: float = 0.0
    inference_s: float = 0.0

    def note(self, queue_s: float, decode_s: float, inference_s: float) -> None:
        self.queue_s = max(self.queue_s, queue_s)
        self.decode_s = max(self.decode_s, decode_s)
        self.inference_s = max(self.inference_s, inference_s)

    def header(self, total_s: float) -> str:
        stages = (("queue", self.queue_s), ("decode", self.decode_s), ("inference", self.inference_s))
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in (*stages, ("total", total_s)))
