"""HTTP surface: the ASGI app and its routes. One module per concern: `http` (primitives), `forms`
(body -> image bytes), `classify` (POST /classify), `health` (/health, /metrics, /), `openapi` (/openapi.json), and
`protocol` (uvicorn's HTTP protocol with a header deadline), `v2` (the Open Inference Protocol) and
`tensors` (its JSON and binary tensor encodings)."""

from __future__ import annotations

from torchrest.api.app import App, AppState, Handler
from torchrest.api.classify import classify
from torchrest.api.health import health, info, metrics
from torchrest.api.openapi import openapi
from torchrest.api.v2 import templates


def build_app(state: AppState) -> App:
    routes: dict[str, dict[str, Handler]] = {
        "/classify": {"POST": classify},
        "/health": {"GET": health},
        "/metrics": {"GET": metrics},
        "/": {"GET": info},
        "/openapi.json": {"GET": openapi},
    }
    return App(state, routes, templates())


__all__ = ["App", "AppState", "build_app"]
