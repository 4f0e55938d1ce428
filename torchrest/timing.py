"""How long one call of a model takes: the one timer `optimize` (every batch size of every candidate) and
the server's start-up batch tuning share, so that the two agree on which batch size is fastest.

One warm-up call first (kernel selection, allocations), then calls for a fixed time, at least
`min_calls`; the median call is the figure, so one slow call on a shared machine moves it little.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
