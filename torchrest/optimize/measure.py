"""Speed of one candidate: throughput at each batch size and latency at batch 1, on real inputs.

Each point is timed by `torchrest.timing.median_call_s`, the timer the server's batch tuning uses too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from torchrest.timing import Run, median_call_s


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
