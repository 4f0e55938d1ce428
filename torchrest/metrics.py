"""Every Prometheus collector the server exports, in one registry, in one place; and each model's
statistics as Triton's statistics extension reports them (`GET /v2/models/{name}/stats`).

Stages are timed where they happen: `queue_wait`, `preprocess` (the batch's decode, on its inference
thread) and `inference` (once per batch) in the runtime, `total` when the front-end has its answer.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from torchrest.engine.manager import ModelManager
    from torchrest.engine.runtime import ModelRuntime

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """`shared_dir`: with several processes (--workers), each writes its figures there (prometheus_client's
    multiprocess mode, which the supervisor turns on before it starts them) and any front-end renders them
    all: counters and histograms summed over the processes, the engine's gauges as it last set them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, shared_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = shared_dir
        r = self.registry
        self.requests = Counter(
            "torchrest_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "torchrest_request_duration_seconds",
            "Time from request start to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_latency = Histogram(
            "torchrest_stage_duration_seconds",
            "Time spent per stage: preprocess, queue_wait, inference (per batch), total",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "torchrest_batch_size",
            "Requests per batch run by the model",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "torchrest_queue_depth",
            "Decoded requests waiting for a model instance",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "torchrest_in_flight",
            "Admitted requests not yet answered (decoding, queued, running)",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.dropped = Counter(
            "torchrest_dropped_requests",
            "Requests not run by the model: shed (queue full), expired (deadline), cancelled",
            ["model", "reason"],
            registry=r,
        )
        self.model_errors = Counter(
            "torchrest_model_errors",
            "Batches on which the model raised",
            ["model"],
            registry=r,
        )

        self.batches = Counter(
            "torchrest_batches",
            "Batches run, by the cores they had: all_cores (a lone batch lent the model's whole thread budget, "
            "or a one-instance layout) or own_threads (an instance's share, beside the others)",
            ["model", "cores"],
            registry=r,
        )
        self.instance_restarts = Counter(
            "torchrest_instance_restarts",
            "Model instances that died (unusable backend, or a fault in their thread) and were re-opened",
            ["model"],
            registry=r,
        )

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.shared_dir)
        return generate_latest(registry)

    def sample(self, models: ModelManager) -> None:
        """Shared mode: write each model's queue gauges (a gauge read through a function is seen only by
        the process that holds it). The engine calls this ten times a second."""
        for entry in models.entries.values():
            if entry.runtime is not None:
                self.sample_runtime(entry.runtime)

    def sample_runtime(self, runtime: ModelRuntime) -> None:
        """Shared mode: one model's queue gauges now."""
        if self.shared_dir is not None:
            self.queue_depth.labels(runtime.name).set(len(runtime.queue))
            self.in_flight.labels(runtime.name).set(runtime.admission.in_flight)


class RecentActivity:
    """The last requests' latencies and the last batches' sizes of one model, for the web page's charts:
    two bounded deques, appended to as requests finish (deque appends are atomic), read only when a page
    asks (GET /web/stats), so no page open costs nothing but the appends."""

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
