"""Speed of one candidate: throughput at each batch size and latency at batch 1, on real inputs.

Each point runs for a fixed time after one warm-up call and takes the median call, so one slow call
on a shared machine moves it little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_CALLS = 3

Run = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Speed:
    throughput: dict[int, float]  # images/s by batch size
    latency_bs1_ms: float

    @property
    def best_batch_size(self) -> int:
        return max(self.throughput, key=lambda size: self.throughput[size])

    @property
    def best_throughput(self) -> float:
        return self.throughput[self.best_batch_size]


def measure(
    run: Run,
    inputs: np.ndarray,
    batch_sizes: list[int],
    seconds_per_point: float,
    on_point: Callable[[int], None] = lambda size: None,
) -> Speed:
    throughput: dict[int, float] = {}
    latency_bs1_ms = 0.0
    for size in sorted(set(batch_sizes) | {1}):
        on_point(size)
        batch = np.ascontiguousarray(np.resize(inputs, (size, *inputs.shape[1:])))
        call_s = median_call_s(run, batch, seconds_per_point)
        if size == 1:
            latency_bs1_ms = call_s * 1000
        if size in batch_sizes:
            throughput[size] = size / call_s
    return Speed(throughput=throughput, latency_bs1_ms=latency_bs1_ms)


def median_call_s(run: Run, batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm-up: kernel selection, allocations
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - started < seconds:
        call_started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - call_started)
    return float(np.median(times))
