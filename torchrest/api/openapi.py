"""GET /openapi.json: the OpenAPI 3.0 description of the HTTP API, for clients, gateways and
schemathesis. Written by hand next to the handlers it describes; each task's route from what the task
declares (`Task.openapi`: its query parameters and its answer), for every task installed or served; the
error codes come from `torchrest/errors.py`, so the document cannot name a code the server does not send
(or miss one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from torchrest import __version__
from torchrest.api.app import AppState
from torchrest.api.http import Request, Response
from torchrest.errors import all_errors
from torchrest.served import MODEL_NAME, tasks_by_route
from torchrest.served import VERSION as VERSION_RE
from torchrest.tasks import Task
from torchrest.tasks.registry import installed_tasks

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


# inference is open unless the server has API keys; repository management always needs the admin token
INFERENCE_SECURITY: list[Schema] = [{}, {"bearer": []}, {"apiKey": []}]
ADMIN_SECURITY: list[Schema] = [{"bearer": []}]
SECURITY_SCHEMES: Schema = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (inference) or the admin token"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an API key (inference)"},
}

TIMEOUT_AND_ID: list[Schema] = [
    {
        "name": "model",
        "in": "query",
        "description": "the model to ask (default: the server's default model)",
        "schema": {"type": "string", "pattern": f"^{MODEL_NAME.pattern}$", "maxLength": 128},
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
]
IMAGE_BODY: Schema = {
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
}


def _image_operation(summary: str, parameters: list[Schema], answer: Schema, **other_content: Schema) -> Schema:
    """POST one image (multipart field `image`, or the raw body), get the task's answer."""
    return {
        "summary": summary,
        "description": "Multipart field `image` (curl -F image=@photo.jpg), or the raw image as the body. "
        "JPEG, PNG, WebP, GIF, BMP; EXIF orientation applied. Answers are in the original image's pixels. "
        "A model that does not do this task answers 400 `task_not_served`.",
        "parameters": [*parameters, *TIMEOUT_AND_ID],
        "requestBody": IMAGE_BODY,
        "responses": {
            "200": {"description": "the answer", "content": {JSON: {"schema": answer}, **other_content}},
            **_errors(400, 401, 404, 408, 413, 415, 500, 503, 504),
        },
        "security": INFERENCE_SECURITY,
    }


def task_operation(task: Task) -> Schema:
    """POST /<task>: its query parameters and its answer (the task's), inside the envelope every answer has."""
    parameters, answer = task.openapi()
    other = {"image/png": {"schema": {"type": "string", "format": "binary"}}} if task.answers_png else {}
    return _image_operation(task.summary or f"The {task.name} task", parameters, _success(answer), **other)


def _success(answer: Schema) -> Schema:
    """`{"status": "success", "model": ...}` and the task's own fields."""
    return {
        **answer,
        "type": "object",
        "required": ["status", "model", *answer.get("required", [])],
        "properties": {
            "status": {"type": "string", "enum": ["success"]},
            "model": {"type": "string"},
            **answer.get("properties", {}),
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
    "summary": "What is served (JSON); a browser (Accept: text/html) gets the web page instead",
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
                },
                "text/html": {"schema": {"type": "string"}},
            },
        }
    },
}


V2_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "additionalProperties": False,
}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{MODEL_NAME.pattern}$", "maxLength": 128},
}
VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": VERSION_RE.pattern},
}
TENSOR_META: Schema = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}


def infer_request(tasks: Sequence[Task]) -> Schema:
    """A v2 inference request; its parameters: `task`, and every task's options (as its query parameters)."""
    options = {
        parameter["name"]: {key: value for key, value in parameter["schema"].items() if key != "maximum"}
        if parameter["name"] == "top_k"  # any k up to the model's classes, not the route's cap
        else parameter["schema"]
        for task in tasks
        for parameter in task.openapi()[0]
    }
    task_name: Schema = {"type": "string", "enum": [task.name for task in tasks]}
    return {
        **INFER_REQUEST,
        "properties": {
            **INFER_REQUEST["properties"],
            "parameters": {"type": "object", "properties": {"task": task_name, **options}},
        },
    }


INFER_REQUEST: Schema = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string", "enum": ["image", "pixels", "tensor"]},
                    "datatype": {"type": "string", "enum": ["BYTES", "UINT8", "FP32"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "parameters": {"type": "object"},
                    "data": {"type": "array"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
INFER_RESPONSE: Schema = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": TENSOR_META},
    },
}


def _v2_errors(*statuses: int) -> dict[str, Schema]:
    what = {
        400: "malformed request, or a model name or version no model can have",
        401: "missing or wrong API key or admin token",
        403: "repository management is off: no admin token configured",
        404: "unknown model or version",
        408: "body too slow",
        413: "body too large",
        503: "not ready, or queue full",
        504: "deadline passed in the queue",
    }
    return {str(s): {"description": what[s], "content": {JSON: {"schema": _ref("V2Error")}}} for s in statuses}


def _v2_get(summary: str, schema: Schema, *errors: int, params: list[Schema] | None = None) -> Schema:
    operation: Schema = {
        "summary": summary,
        "responses": {"200": {"description": "ok", "content": {JSON: {"schema": schema}}}, **_v2_errors(*errors)},
    }
    if params:
        operation["parameters"] = params
    return {"get": operation}


def v2_paths(tasks: Sequence[Task]) -> dict[str, Schema]:
    """The Open Inference Protocol's routes (api/v2.py)."""
    anything: Schema = {"type": "object"}
    paths: dict[str, Schema] = {
        "/v2": _v2_get("Server metadata", {"type": "object", "required": ["name", "version", "extensions"]}),
        "/v2/health/live": _v2_get("Liveness", anything),
        "/v2/health/ready": _v2_get("Readiness", anything, 503),
        "/v2/models/stats": _v2_get("Statistics of every model", {"type": "object", "required": ["model_stats"]}),
        "/v2/repository/index": {
            "get": _v2_get("Model repository index", {"type": "array", "items": anything})["get"],
            "post": {
                **_v2_get("Model repository index (Triton's form)", {"type": "array", "items": anything}, 400)["get"],
                "requestBody": {
                    "required": False,
                    "content": {JSON: {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}},
                },
            },
        },
        "/v2/repository/models/{name}/load": {
            "post": {
                "summary": "Load or reload a model",
                "parameters": [NAME],
                "responses": {
                    "200": {"description": "loaded", "content": {JSON: {"schema": anything}}},
                    **_v2_errors(400, 401, 403, 404),
                },
                "security": ADMIN_SECURITY,
            }
        },
        "/v2/repository/models/{name}/unload": {
            "post": {
                "summary": "Unload a model after draining it",
                "parameters": [NAME],
                "responses": {
                    "200": {"description": "unloaded", "content": {JSON: {"schema": anything}}},
                    **_v2_errors(400, 401, 403, 404),
                },
                "security": ADMIN_SECURITY,
            }
        },
    }
    for prefix, params in (("/v2/models/{name}", [NAME]), ("/v2/models/{name}/versions/{version}", [NAME, VERSION])):
        metadata = {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "inputs": {"type": "array", "items": TENSOR_META},
                "outputs": {"type": "array", "items": TENSOR_META},
            },
        }
        paths[prefix] = _v2_get("Model metadata", metadata, 400, 404, params=params)
        paths[f"{prefix}/ready"] = _v2_get("Model readiness", anything, 400, 404, 503, params=params)
        paths[f"{prefix}/config"] = _v2_get("Model configuration", anything, 400, 404, params=params)
        paths[f"{prefix}/stats"] = _v2_get(
            "Model statistics", {"type": "object", "required": ["model_stats"]}, 400, 404, params=params
        )
        paths[f"{prefix}/infer"] = {
            "post": {
                "summary": "Inference: JSON, or JSON + binary tensors (Inference-Header-Content-Length)",
                "parameters": [
                    *params,
                    {
                        "name": "Inference-Header-Content-Length",
                        "in": "header",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": infer_request(tasks)}}},
                "responses": {
                    "200": {
                        "description": "outputs (binary ones after the JSON header)",
                        "content": {JSON: {"schema": INFER_RESPONSE}, "application/octet-stream": {}},
                    },
                    **_v2_errors(400, 401, 404, 408, 413, 503, 504),
                },
                "security": INFERENCE_SECURITY,
            }
        }
    return paths


def _static(summary: str, content_type: str) -> Schema:
    return {"summary": summary, "responses": {"200": {"description": summary, "content": {content_type: {}}}}}


def document(tasks: Sequence[Task] | None = None) -> Schema:
    """The document for these tasks' routes (default: every installed task's)."""
    tasks = installed_tasks() if tasks is None else tasks
    return {
        "openapi": "3.0.3",
        "info": {"title": "torchrest", "version": __version__, "description": "PyTorch models as a REST API"},
        "paths": {
            **{task.route: {"post": task_operation(task)} for task in tasks},
            "/health": {"get": HEALTH},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
                }
            },
            "/": {"get": INFO},
            "/web/app.js": {"get": _static("The web page's script", "text/javascript")},
            "/web/style.css": {"get": _static("The web page's style sheet", "text/css")},
            "/web/stats": {
                "get": {
                    "summary": "The web page's feed: per model, answers so far, recent latency and batch size, queue",
                    "responses": {
                        "200": {
                            "description": "one sample",
                            "content": {JSON: {"schema": {"type": "object", "required": ["time", "models"]}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.0", "content": {JSON: {}}}},
                }
            },
            **v2_paths(tasks),
        },
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": {
                "V2Error": V2_ERROR,
                "Error": {
                    "type": "object",
                    "required": ["status", "code", "message"],
                    "properties": {
                        "status": {"type": "string", "enum": ["failed"]},
                        "code": {"type": "string", "enum": sorted({e.code for e in all_errors()})},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }


_bodies: dict[tuple[str, ...], bytes] = {}  # the document for a set of task routes, written once


async def openapi(request: Request, state: AppState) -> Response:
    """The document for every task installed and every task a served model brings."""
    tasks = tasks_by_route(state.models)
    body = _bodies.get(tuple(tasks))
    if body is None:
        body = _bodies[tuple(tasks)] = json.dumps(document(list(tasks.values())), separators=(",", ":")).encode()
    return Response(200, body)


__all__ = ["document", "openapi"]
