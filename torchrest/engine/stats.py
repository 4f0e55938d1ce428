"""What the engine keeps about each model it runs, beside Prometheus: Triton's statistics (`GET
/v2/models/{name}/stats`, gRPC ModelStatistics), the recent figures the web page charts (`GET /web/stats`),
the model's Prometheus children bound to its name once, and the queue gauges the engine writes itself.

    runtime (inference thread) -> ModelStats.record_batch, RecentActivity, RuntimeMetrics
    runtime (event loop)       -> ModelStats.record_request, RecentActivity.latencies_s
    engine pulse               -> write_queue_gauges (with several processes: each reads only its own)
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torchrest.metrics import Metrics


@dataclass(slots=True)
class RuntimeMetrics:
    """One model's Prometheus children, looked up once (a label look-up per request costs the loop)."""

    batch_size: Any
    queue_wait: Any
    inference: Any
    preprocess: Any
    total: Any
    errors: Any
    expired: Any
    cancelled: Any
    shed: Any
    restarts: Any
    on_all_cores: Any
    on_own_threads: Any
    answers: dict[str, Any]  # by task

    @classmethod
    def bound(cls, metrics: Metrics, name: str, tasks: Iterable[str]) -> RuntimeMetrics:
        stage = metrics.stage_latency
        return cls(
            batch_size=metrics.batch_size.labels(name),
            queue_wait=stage.labels(name, "queue_wait"),
            inference=stage.labels(name, "inference"),
            preprocess=stage.labels(name, "preprocess"),
            total=stage.labels(name, "total"),
            errors=metrics.model_errors.labels(name),
            expired=metrics.dropped.labels(name, "expired"),
            cancelled=metrics.dropped.labels(name, "cancelled"),
            shed=metrics.dropped.labels(name, "shed"),
            restarts=metrics.instance_restarts.labels(name),
            on_all_cores=metrics.batches.labels(name, "all_cores"),
            on_own_threads=metrics.batches.labels(name, "own_threads"),
            answers={task: metrics.answers.labels(name, task) for task in tasks},
        )


def watch_queue(metrics: Metrics, name: str, depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
    """One process: the queue gauges read the runtime when scraped."""
    metrics.queue_depth.labels(name).set_function(depth)
    metrics.in_flight.labels(name).set_function(in_flight)


def write_queue_gauges(metrics: Metrics, queues: Iterable[tuple[str, int, int]]) -> None:
    """Several processes: each model's (name, queue depth, in flight) written now (a gauge read through a
    function is seen only by the process that holds it). The engine does this ten times a second."""
    for name, depth, in_flight in queues:
        metrics.queue_depth.labels(name).set(depth)
        metrics.in_flight.labels(name).set(in_flight)


class RecentActivity:
    """The last requests' latencies and the last batches' sizes of one model, for the web page's charts:
    two bounded deques, appended to as requests finish (deque appends are atomic), read only when a page
    asks (GET /web/stats): with no page open, they cost only the appends."""

    LATENCIES = 1024
    BATCHES = 256

    def __init__(self) -> None:
        self.latencies_s: deque[float] = deque(maxlen=self.LATENCIES)
        self.batch_sizes: deque[int] = deque(maxlen=self.BATCHES)

    def latency_percentiles_ms(self) -> dict[str, float | None]:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return {"p50": None, "p90": None, "p99": None}
        pick = {name: ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 for name, q in QUANTILES}
        return {name: round(value, 2) for name, value in pick.items()}

    def mean_batch_size(self) -> float | None:
        sizes = list(self.batch_sizes)[-32:]
        return round(sum(sizes) / len(sizes), 2) if sizes else None


QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


class ModelStats:
    """Cumulative counts and durations per stage, in Triton's shape. The inference thread records a
    batch once; like Triton, each request in a batch is charged the batch's compute durations."""

    STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inference_count = 0  # images run by the model
        self.execution_count = 0  # batches
        self.last_inference_ms = 0
        self._stage: dict[str, list[int]] = {stage: [0, 0] for stage in self.STAGES}
        self._batch: dict[int, dict[str, list[int]]] = defaultdict(
            lambda: {stage: [0, 0] for stage in ("compute_input", "compute_infer", "compute_output")}
        )

    def record_batch(self, size: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """`queue_ns`: the batch's requests' queue waits added up; the rest: the batch's durations."""
        with self._lock:
            self.inference_count += size
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            for stage, ns in (
                ("queue", queue_ns),
                ("compute_input", input_ns * size),
                ("compute_infer", infer_ns * size),
                ("compute_output", output_ns * size),
            ):
                self._stage[stage][0] += size
                self._stage[stage][1] += ns
            per_size = self._batch[size]
            for stage, ns in (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
                per_size[stage][0] += 1
                per_size[stage][1] += ns

    def record_request(self, ok: bool, ns: int) -> None:
        with self._lock:
            entry = self._stage["success" if ok else "fail"]
            entry[0] += 1
            entry[1] += ns

    def request_counts(self) -> tuple[int, int]:
        """Requests answered so far: (succeeded, failed)."""
        with self._lock:
            return self._stage["success"][0], self._stage["fail"][0]

    def as_triton(self, name: str, version: str) -> dict[str, object]:
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    **{stage: {"count": c, "ns": ns} for stage, (c, ns) in self._stage.items()},
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {"batch_size": size, **{stage: {"count": c, "ns": ns} for stage, (c, ns) in stages.items()}}
                    for size, stages in sorted(self._batch.items())
                ],
            }
