"""OpenTelemetry traces of requests and batches: off unless `--tracing`, configured the standard way.

    HTTP or gRPC request, W3C `traceparent` taken from it
      -> span "<METHOD> <route>" (or "<grpc method>"), server kind, its parent the caller's span
         children, from the request's own clock readings once it is answered (nothing is timed twice):
         admission, body read, queue wait, decode, inference, response
    batch, on the inference thread (in the engine process with --workers)
      -> span "inference <model>", linked to the span of every request it served

Only a sampled request gathers its stages and gives its batch a link; one the sampler drops costs the
span the SDK makes for it and no more. The SDK does the rest: the sampler (`OTEL_TRACES_SAMPLER`,
`OTEL_TRACES_SAMPLER_ARG`), the resource (`OTEL_SERVICE_NAME`, default "torchrest";
`OTEL_RESOURCE_ATTRIBUTES`), and OTLP export through its batching
processor, over HTTP/protobuf (the default) or gRPC as `OTEL_EXPORTER_OTLP_PROTOCOL` (or its `_TRACES_`
form) says, to `OTEL_EXPORTER_OTLP_ENDPOINT`. The batching processor exports on its own thread from a
bounded queue: a collector that is down or slow drops spans, never delays or fails a request.

The packages are the optional extra `tracing` (`pip install torchrest[tracing]`); the image has them.
When tracing is off nothing here is imported and each request pays one `is None` test.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from torchrest.timing import StageTimes

log = logging.getLogger("torchrest.tracing")

SERVICE = "torchrest"
_tracing: Tracing | None = None


def current() -> Tracing | None:
    """This process's tracing, or None when it is off."""
    return _tracing


def configure(enabled: bool, process: str) -> Tracing | None:
    """Turn tracing on for this process (the SDK, its exporter) when `enabled`; None when off.
    `process` names the process in the resource (server, engine, front-end 0...)."""
    global _tracing
    if not enabled:
        _tracing = None
        return None
    _tracing = Tracing(process)
    return _tracing


def require() -> None:
    """StartupError (one line) unless the OpenTelemetry packages are installed."""
    from torchrest.backends.kind import missing_package
    from torchrest.errors import StartupError

    if missing := missing_package("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        raise StartupError(f"--tracing needs the OpenTelemetry packages ({missing}): pip install 'torchrest[tracing]'")


def shutdown() -> None:
    """Export what is queued (bounded by the processor's timeout) and stop: at the end of a process."""
    global _tracing
    if _tracing is not None:
        _tracing.provider.shutdown()
        _tracing = None


@dataclass(frozen=True, slots=True)
class Carried:
    """A span's identity as it crosses to the engine process (for the batch span's link)."""

    trace_id: int
    span_id: int
    flags: int


class Tracing:
    def __init__(self, process: str) -> None:
        require()
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attributes = {"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE), "torchrest.process": process}
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(BatchSpanProcessor(_exporter()))
        self.tracer = self.provider.get_tracer("torchrest")
        self.propagator = TraceContextTextMapPropagator()
        self._trace = trace
        # spans take wall-clock nanoseconds; the server times everything on the monotonic clock
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def wall_ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns

    def request(self, name: str, carrier: dict[str, str], started_s: float, attributes: dict[str, Any]) -> Any:
        """The span of one request, its parent the caller's `traceparent` (when `carrier` has one)."""
        parent = self.propagator.extract(carrier)
        return self.tracer.start_span(
            name,
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            start_time=self.wall_ns(started_s),
            attributes=attributes,
        )

    def finish(self, span: Any, times: StageTimes, ended_s: float, status: dict[str, int], error: str = "") -> None:
        """End a request's span at `ended_s`: a child per stage its `times` marked, the model that answered,
        its status (`{"http.response.status_code": 200}` or the gRPC one) and, when it failed, the error's
        code (`error`; the span's status is ERROR for a server fault, as OpenTelemetry's conventions say)."""
        if not span.is_recording():  # not sampled: nothing of it is exported
            span.end()
            return
        context = self._trace.set_span_in_context(span)
        for stage, start_s, end_s in times.marks or ():
            child = self.tracer.start_span(stage, context=context, start_time=self.wall_ns(start_s))
            child.end(end_time=self.wall_ns(max(start_s, end_s)))
        if times.model:
            span.set_attribute("torchrest.model", times.model)
            span.set_attribute("torchrest.model_version", times.version)
        if times.task:
            span.set_attribute("torchrest.task", times.task)
        for key, value in status.items():
            span.set_attribute(key, value)
        if error:
            span.set_attribute("error.type", error)
            if status.get("http.response.status_code", 500) >= 500:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end(end_time=self.wall_ns(ended_s))

    def carried(self, span: Any) -> Carried:
        context = span.get_span_context()
        return Carried(context.trace_id, context.span_id, int(context.trace_flags))

    def batch(
        self, model: str, version: str, size: int, links: list[Carried], start_s: float, end_s: float, error: str = ""
    ) -> None:
        """The span of one batch through the model, linked to the requests it served."""
        trace = self._trace
        joined = [
            trace.Link(trace.SpanContext(c.trace_id, c.span_id, is_remote=True, trace_flags=trace.TraceFlags(c.flags)))
            for c in links
        ]
        attributes: dict[str, Any] = {
            "torchrest.model": model,
            "torchrest.model_version": version,
            "torchrest.batch_size": size,
        }
        span = self.tracer.start_span(
            f"inference {model}", links=joined, start_time=self.wall_ns(start_s), attributes=attributes
        )
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.end(end_time=self.wall_ns(end_s))

    def ids(self, span: Any) -> tuple[str, str]:
        """(trace id, span id) as hex, for the log line of the request."""
        context = span.get_span_context()
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if (protocol or "http/protobuf") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol not in (None, "http/protobuf"):
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not served here: exporting over http/protobuf", protocol)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()
