"""GET /openapi.json: the OpenAPI 3.0 description of the HTTP API, for clients, gateways and
schemathesis. Written by hand next to the handlers it describes; the error codes come from
`torchrest/errors.py`, so the document cannot name a code the server does not send (or miss one).
"""

from __future__ import annotations

import json
from typing import Any

from torchrest import __version__
from torchrest.api.classify import MAX_TOP_K
from torchrest.api.http import Request, Response
from torchrest.errors import all_errors

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Schema]:
    """Error responses by status, each listing the codes that status carries."""
    out: dict[str, Schema] = {}
    for status in statuses:
        codes = sorted({e.code for e in all_errors() if e.status == status})
        out[str(status)] = {
            "description": "; ".join(f"`{c}`" for c in codes),
            "content": {JSON: {"schema": _ref("Error")}},
        }
    return out


PREDICTION: Schema = {
    "type": "object",
    "required": ["label", "class_id", "confidence"],
    "properties": {
        "label": {"type": "string"},
        "class_id": {"type": "integer", "minimum": 0},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

CLASSIFY: Schema = {
    "summary": "Classify one image",
    "description": "Multipart field `image` (curl -F image=@cat.jpg), or the raw image as the body. "
    "JPEG, PNG, WebP, GIF, BMP.",
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 1},
        },
        {
            "name": "X-Request-Timeout-Ms",
            "in": "header",
            "description": "a deadline shorter than the server's --timeout-ms",
            "schema": {"type": "integer", "minimum": 1},
        },
        {
            "name": "X-Request-Id",
            "in": "header",
            "description": "echoed back when it is up to 64 printable ASCII characters, else replaced by a fresh id",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {
            "description": "the prediction, and the top k",
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["status", "model", "prediction", "top_k"],
                        "properties": {
                            "status": {"type": "string", "enum": ["success"]},
                            "model": {"type": "string"},
                            "prediction": _ref("Prediction"),
                            "top_k": {"type": "array", "items": _ref("Prediction"), "minItems": 1},
                        },
                    }
                }
            },
        },
        **_errors(400, 408, 413, 415, 500, 503, 504),
    },
}

HEALTH: Schema = {
    "summary": "Readiness: 200 once the model is loaded and warmed up and every instance serves",
    "responses": {
        "200": {
            "description": "ready",
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["status", "model"],
                        "properties": {"status": {"type": "string", "enum": ["ready"]}, "model": {"type": "string"}},
                    }
                }
            },
        },
        **_errors(503),
    },
}

INFO: Schema = {
    "summary": "What is served: model, weights source, backend, device, batching settings",
    "responses": {
        "200": {
            "description": "server description",
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["name", "version", "ready"],
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "ready": {"type": "boolean"},
                            "model": {"type": "object", "nullable": True},
                            "backend": {"type": "string", "nullable": True},
                            "device": {"type": "string", "nullable": True},
                            "batching": {"type": "object"},
                            "endpoints": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                }
            },
        }
    },
}


def document() -> Schema:
    return {
        "openapi": "3.0.3",
        "info": {"title": "torchrest", "version": __version__, "description": "PyTorch models as a REST API"},
        "paths": {
            "/classify": {"post": CLASSIFY},
            "/health": {"get": HEALTH},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
                }
            },
            "/": {"get": INFO},
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.0", "content": {JSON: {}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Prediction": PREDICTION,
                "Error": {
                    "type": "object",
                    "required": ["status", "code", "message"],
                    "properties": {
                        "status": {"type": "string", "enum": ["failed"]},
                        "code": {"type": "string", "enum": sorted({e.code for e in all_errors()})},
                        "message": {"type": "string"},
                    },
                },
            }
        },
    }


_BODY = json.dumps(document(), separators=(",", ":")).encode()


async def openapi(request: Request, state: object) -> Response:
    return Response(200, _BODY)


__all__ = ["document", "openapi"]
