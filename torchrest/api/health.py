"""Operational endpoints: GET /health (readiness), GET /metrics (Prometheus), GET / (what is served)."""

from __future__ import annotations

from torchrest import __version__
from torchrest.api.app import AppState
from torchrest.api.http import Request, Response, json_response
from torchrest.errors import NotReady
from torchrest.served import tasks_by_route


async def health(request: Request, state: AppState) -> Response:
    # 503 not_ready until every model is loaded and warmed up, and while an instance is being re-opened
    reason = state.not_ready_reason()
    if reason is not None:
        raise NotReady(reason)
    models = state.models
    ready = [name for name, entry in models.entries.items() if entry.runtime is not None]
    return json_response(200, {"status": "ready", "model": models.default, "models": ready})


async def metrics(request: Request, state: AppState) -> Response:
    return Response(200, state.metrics.render(), content_type=state.metrics.content_type)


async def info(request: Request, state: AppState) -> Response:
    default = state.models.entry(None)
    runtime = default.runtime
    served = runtime.info if runtime else None
    config = state.config
    return json_response(
        200,
        {
            "name": "torchrest",
            "version": __version__,
            "ready": runtime is not None,
            "default_model": state.models.default,
            "model": default.model.describe() if runtime else None,
            "backend": served.backend if served else None,
            "device": served.device if served else None,
            "batching": {
                "max_batch_size": served.max_batch_size if served else None,
                "tuned_batch_size": served.max_batch_size if served else None,
                "max_wait_ms": config.max_wait_ms,
                "instances": served.instances if served else None,
                "threads_per_instance": served.threads if served else None,
            },
            "models": [
                {
                    "name": entry.name,
                    "version": entry.version,
                    "state": entry.state,
                    "tasks": list(entry.model.tasks),
                    "backend": entry.runtime.info.backend if entry.runtime else None,
                }
                for entry in state.models.entries.values()
            ],
            "endpoints": [
                *(f"POST {route}" for route in tasks_by_route(state.models)),
                "GET /health",
                "GET /metrics",
                "GET /openapi.json",
                "/v2 (KServe v2)",
            ],
        },
    )
