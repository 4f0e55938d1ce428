"""Every Prometheus collector the server exports, in one registry, in one place.

Stages are timed where they happen: `preprocess` and `total` in the API handler, `queue_wait` and
`inference` in the runtime thread (inference once per batch).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        )
        self.in_flight = Gauge(
            "torchrest_in_flight",
            "Admitted requests not yet answered (decoding, queued, running)",
            ["model"],
            registry=r,
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

        self.instance_restarts = Counter(
            "torchrest_instance_restarts",
            "Model instances that died (unusable backend, or a fault in their thread) and were re-opened",
            ["model"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
