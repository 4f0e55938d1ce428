"""Every Prometheus collector the server exports, in one registry, in one place (Prometheus only: each
model's own statistics, Triton's and the web page's, are the engine's: torchrest.engine.stats).

Stages are timed where they happen: `queue_wait`, `preprocess` (the batch's decode, on its inference
thread) and `inference` (once per batch) in the runtime, `total` when the front-end has its answer.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.answers = Counter(
            "torchrest_answers",
            "Images the model ran on, by task (what the request asked of it), its unusable outputs included",
            ["model", "task"],
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
