"""The ASGI application: routing, request ids, one error handler, per-route metrics, lifespan.

    uvicorn (httptools) -> App.__call__ -> route handler -> Response -> send

Handlers raise `TorchrestError` subclasses; this module is the only place that turns them into HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from torchrest.access import AccessControl
from torchrest.admission import Refusals
from torchrest.api.cors import Cors
from torchrest.api.http import (
    UNBOUNDED,
    ClientDisconnected,
    Receive,
    Receiving,
    Request,
    Response,
    Scope,
    Send,
    error_response,
    send_response,
)
from torchrest.config import ServerConfig
from torchrest.errors import MethodNotAllowed, ModelError, NotFound, QueueFull, TorchrestError
from torchrest.logs import access
from torchrest.metrics import Metrics
from torchrest.served import ServedModels
from torchrest.tracing import current as current_tracing

log = logging.getLogger("torchrest.api")

Handler = Callable[[Request, "AppState"], Awaitable[Response]]
Fallback = Callable[["AppState", str], "dict[str, Handler] | None"]  # a path no route has -> its methods, if any
Hook = Callable[[], Awaitable[None]]
CLIENT_CLOSED = 499  # nginx's status for "client closed request", used in metrics only


@dataclass(slots=True)
class AppState:
    """What the handlers share; torchrest.frontend.listeners fills it."""

    config: ServerConfig
    metrics: Metrics
    models: ServedModels
    access: AccessControl = field(default_factory=AccessControl)
    refusals: Refusals = field(default_factory=Refusals)  # the pace of 503 queue_full, HTTP and gRPC alike
    receiving: Receiving = UNBOUNDED  # the bytes of the bodies being received (--max-receiving-mb)
    startup: Hook | None = None
    shutdown: Hook | None = None

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready (/health, /v2/health/ready), or None when it is."""
        return self.models.not_ready_reason()


class App:
    """`routes`: exact paths; `templates`: paths with `{name}` segments, which handlers find in
    `request.params` (matched on the raw path and then decoded, so an encoded slash stays inside its
    segment for the handler to refuse). Metrics label a request by its route or template, never by its
    raw path. With `metrics_port`, GET /metrics is served on that port only, and nothing else is. `fallback`
    finds the routes that come with what is served (a task of one's own), labelled by their path."""

    def __init__(
        self,
        state: AppState,
        routes: dict[str, dict[str, Handler]],
        templates: dict[str, dict[str, Handler]] | None = None,
        metrics_port: int = 0,
        fallback: Fallback | None = None,
    ) -> None:
        self.state = state
        self.fallback = fallback
        templates = templates or {}
        self.metrics_port = metrics_port
        self.metrics_routes = {"/metrics": routes["/metrics"]} if metrics_port else {}
        if metrics_port:
            routes = {path: methods for path, methods in routes.items() if path != "/metrics"}
        origins = state.config.cors_origin_list
        self.cors = Cors(origins) if origins else None
        self.routes = routes | {t: methods for t, methods in templates.items() if "{" not in t}
        self.templates = [(_pattern(t), t, methods) for t, methods in templates.items() if "{" in t]
        self._requests = state.metrics.requests
        known = [*self.routes, *self.metrics_routes, *(t for _, t, _ in self.templates)]
        self._latency = {route: state.metrics.request_latency.labels(route) for route in known}

    def _resolve(self, request: Request) -> tuple[str, dict[str, Handler] | None]:
        if self.metrics_port and request.scope.get("server", (None, None))[1] == self.metrics_port:
            methods = self.metrics_routes.get(request.path)
            return (request.path, methods) if methods is not None else ("other", None)
        methods = self.routes.get(request.path)
        if methods is not None:
            return request.path, methods
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else request.path
        for pattern, template, methods in self.templates:
            if (match := pattern.fullmatch(path)) is not None:
                request.params = {key: unquote(value) for key, value in match.groupdict().items()}
                return template, methods
        methods = self.fallback(self.state, request.path) if self.fallback is not None else None
        if methods is not None:
            if request.path not in self._latency:  # as many labels as the tasks served bring routes
                self._latency[request.path] = self.state.metrics.request_latency.labels(request.path)
            return request.path, methods
        return "other", None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, time.monotonic(), self.state.receiving)
        route, methods = self._resolve(request)
        tracing = current_tracing()
        span = None
        if tracing is not None and methods is not None:
            attributes = {"http.request.method": request.method, "http.route": route, "url.path": request.path}
            span = tracing.request(f"{request.method} {route}", request.headers, request.started_s, attributes)
            if span.is_recording():  # sampled: its stages and its batch are worth recording too
                span.set_attribute("torchrest.request_id", request.request_id)
                request.times.marks, request.times.link = [], tracing.carried(span)
        response, code = await self._respond(request, route, methods)
        waited_s = 0.0
        if code == QueueFull.code and response is not None:  # its turn at the refusals' pace (admission.Refusals)
            waited_s = self.state.refusals.delay_s(float(response.headers.get("retry-after", "1")))
            if waited_s > 0:
                await asyncio.sleep(waited_s)
        handled_s = time.monotonic()
        status = CLIENT_CLOSED
        if response is not None:
            await send_response(send, response, request.request_id)
            status = response.status
            if methods is not None:
                self._latency[route].observe(time.monotonic() - request.started_s)
        self._requests.labels(route, status).inc()
        ended_s = time.monotonic()
        if code == QueueFull.code and not request.body_read:  # refused before its body: the time is all ours
            self.state.refusals.observe(ended_s - request.started_s - waited_s)
        if span is not None and tracing is not None:
            request.times.mark("response", handled_s, ended_s)
            tracing.finish(span, request.times, ended_s, {"http.response.status_code": status}, code)
        if not access.disabled:
            log_request(request, route, status, code, ended_s, tracing.ids(span) if span and tracing else None)

    async def _respond(
        self, request: Request, route: str, methods: dict[str, Handler] | None
    ) -> tuple[Response | None, str]:
        """The response (None: the client left first), and the error code when it is an error."""
        origin = request.headers.get("origin") if self.cors else None
        code = ""
        try:
            preflight = request.headers.get("access-control-request-method")
            if self.cors and origin and request.method == "OPTIONS" and preflight:
                return self.cors.preflight(origin, preflight, methods), ""
            if methods is None:
                raise NotFound(f"no route {request.path}")
            handler = methods.get(request.method)
            if handler is None:
                error = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
                error.headers = {"allow": ", ".join(methods)}
                raise error
            response = await handler(request, self.state)
        except TorchrestError as error:
            self._log(request, error)
            response, code = error_response(error, protocol_v2=route.startswith("/v2")), error.code
        except ClientDisconnected:
            return None, "client_closed"
        except Exception:  # a bug of ours: answer in JSON, keep serving, and leave the traceback
            log.exception("%s %s [%s] failed", request.method, request.path, request.request_id)
            internal = TorchrestError("internal server error")
            response, code = error_response(internal, protocol_v2=route.startswith("/v2")), internal.code
        if origin and self.cors:
            response.headers.update(self.cors.headers(origin))
        return response, code

    @staticmethod
    def _log(request: Request, error: TorchrestError) -> None:
        if isinstance(error, ModelError):
            return  # the runtime logged the batch's failure once, with every request id in it
        # 503s (loading, shedding) are the server working as designed; other 5xx deserve attention
        level = logging.WARNING if error.status >= 500 and error.status != 503 else logging.INFO
        log.log(
            level,
            "%s %s -> %d %s [%s]: %s",
            request.method,
            request.path,
            error.status,
            error.code,
            request.request_id,
            error.message,
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.state.startup:
                    await self.state.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.state.shutdown:
                    await self.state.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def log_request(
    request: Request, route: str, status: int, code: str, ended_s: float, ids: tuple[str, str] | None
) -> None:
    """The request's line for `--log-format json` (torchrest.logs): ids, route, model, status, duration."""
    extra = {
        "request_id": request.request_id,
        "route": route,
        "model": request.times.model or None,
        "task": request.times.task or None,
        "status": status,
        "code": code or None,
        "duration_ms": round((ended_s - request.started_s) * 1000, 3),
    }
    if ids is not None:
        extra["trace_id"], extra["span_id"] = ids
    access.info("%s %s %d", request.method, request.path, status, extra=extra)


def _pattern(template: str) -> re.Pattern[str]:
    """ "/v2/models/{name}/infer" -> a regex whose named groups are the `{...}` segments."""
    parts = []
    for part in template.split("/"):
        named = re.fullmatch(r"\{(\w+)\}", part)
        parts.append(f"(?P<{named.group(1)}>[^/]+)" if named else re.escape(part))
    return re.compile("/".join(parts))
