"""HTTP surface: the ASGI app and its routes. One module per concern: `http` (primitives), `forms` (body ->
image bytes), `image` (POST /<task>: the tasks' routes), `health` (/health,
/metrics, /), `openapi` (/openapi.json), `page` (the web page: /, /web/*, with its files in static/),
`protocol` (uvicorn's HTTP protocol with a header deadline), `v2` (the Open Inference Protocol), `tensors`
(its JSON and binary tensor encodings), `guards` (API key and admin token checks, declared on the routes)
and `cors` (browser origins)."""

from __future__ import annotations

from torchrest.api import page
from torchrest.api.app import App, AppState, Handler
from torchrest.api.guards import inference
from torchrest.api.health import health, metrics
from torchrest.api.image import ENDPOINTS, served_route
from torchrest.api.openapi import openapi
from torchrest.api.v2 import templates


def route_table() -> tuple[dict[str, dict[str, Handler]], dict[str, dict[str, Handler]]]:
    """Every route the server has, in one place: exact paths, and the /v2 templates. (A test keeps
    /openapi.json in step with it.)"""
    routes: dict[str, dict[str, Handler]] = {
        **{route: {"POST": inference(handler)} for route, handler in ENDPOINTS.items()},
        "/health": {"GET": health},
        "/metrics": {"GET": metrics},
        "/": {"GET": page.front_door},
        "/web/app.js": {"GET": page.script},
        "/web/style.css": {"GET": page.style},
        "/web/stats": {"GET": page.stats},
        "/openapi.json": {"GET": openapi},
    }
    return routes, templates()


def build_app(state: AppState) -> App:
    routes, v2_templates = route_table()
    return App(state, routes, v2_templates, metrics_port=state.config.metrics_port or 0, fallback=served_route)


__all__ = ["App", "AppState", "build_app", "route_table"]
