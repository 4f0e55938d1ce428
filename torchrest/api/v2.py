"""The Open Inference Protocol (KServe v2, Triton's HTTP API) over the same models, queues and batches
as /classify:

    GET  /v2                                   server metadata and the extensions supported
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]      model metadata: inputs, outputs (-1: the batch dimension)
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2/models/{name}[/versions/{v}]/config
    POST /v2/models/{name}[/versions/{v}]/infer
    GET  /v2/models[/{name}[/versions/{v}]]/stats   Triton's statistics extension
    GET|POST /v2/repository/index;  POST /v2/repository/models/{name}/load, /unload

A classifier takes one input, whichever suits the client: `image` (BYTES [n], encoded images),
`pixels` (UINT8 [n, S, S, 3]) or `tensor` (FP32 [n, 3, S, S], normalised with the ImageNet mean and
std). Each image becomes one job in the model's batch queue, batched with /classify's. Outputs:
`labels` (BYTES [n, k]) and `scores` (FP32 [n, k]) for the top k (request parameter `top_k`, default 1)
by default, and `probabilities` (FP32 [n, classes]) when asked for. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from torchrest import __version__
from torchrest.api.app import AppState, Handler
from torchrest.api.guards import admin, inference
from torchrest.api.http import Request, Response, json_response
from torchrest.api.lifecycle import deadline_s, in_time, until_disconnect
from torchrest.api.tensors import HEADER_LENGTH, InferRequest, Output, encode_response, json_object, parse_request
from torchrest.backends import BACKENDS
from torchrest.errors import BadRequest, NotReady
from torchrest.manager import ModelEntry, ModelState
from torchrest.postprocess import label, top_indices
from torchrest.runtime import ModelRuntime

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
DEFAULT_OUTPUTS = ("labels", "scores")
PARSE_OFF_LOOP_BYTES = 256 * 1024  # a JSON header this large is parsed on a worker thread


async def server_metadata(request: Request, state: AppState) -> Response:
    return json_response(200, {"name": "torchrest", "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request, state: AppState) -> Response:
    return json_response(200, {"live": True})


async def ready(request: Request, state: AppState) -> Response:
    reason = state.not_ready_reason()
    if reason is not None:
        raise NotReady(reason)
    return json_response(200, {"ready": True})


def _entry(request: Request, state: AppState) -> ModelEntry:
    return state.models.entry(request.params["name"], request.params.get("version"))


async def model_metadata(request: Request, state: AppState) -> Response:
    entry = _entry(request, state)
    model = entry.model
    side = model.input_spec.crop_size
    return json_response(
        200,
        {
            "name": entry.name,
            "versions": [entry.version],
            "platform": _platform(entry),
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "pixels", "datatype": "UINT8", "shape": [-1, side, side, 3]},
                {"name": "tensor", "datatype": "FP32", "shape": [-1, 3, side, side]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            ],
        },
    )


async def model_ready(request: Request, state: AppState) -> Response:
    entry = _entry(request, state)
    state.models.runtime(entry.name, request.params.get("version"))  # 503 unless it serves
    return json_response(200, {"name": entry.name, "ready": True})


async def model_config(request: Request, state: AppState) -> Response:
    entry = _entry(request, state)
    runtime = entry.runtime
    return json_response(
        200,
        {
            "name": entry.name,
            "platform": _platform(entry),
            "max_batch_size": runtime.queue.max_batch_size if runtime else state.config.max_batch_size,
            "instance_group": [{"count": state.config.instances, "kind": "KIND_CPU"}],
            "dynamic_batching": {"max_queue_delay_microseconds": int(state.config.max_wait_ms * 1000)},
            "parameters": {k: str(v) for k, v in entry.model.describe().items() if not isinstance(v, dict)},
        },
    )


async def stats(request: Request, state: AppState) -> Response:
    name = request.params.get("name")
    entries = [_entry(request, state)] if name is not None else list(state.models.entries.values())
    return json_response(
        200,
        {"model_stats": [e.runtime.stats.as_triton(e.name, e.version) for e in entries if e.runtime is not None]},
    )


async def repository_index(request: Request, state: AppState) -> Response:
    only_ready = False
    if request.method == "POST":
        body = await in_time(request.body(64 * 1024), state.config.read_timeout)
        if body.strip():
            ready_only = json_object(body).get("ready", False)
            if not isinstance(ready_only, bool):
                raise BadRequest(f"'ready' must be true or false, got {ready_only!r}")
            only_ready = ready_only
    index = state.models.index()
    return json_response(200, [row for row in index if not only_ready or row["state"] == ModelState.READY])


async def load(request: Request, state: AppState) -> Response:
    await state.models.load(request.params["name"])
    return json_response(200, {})


async def unload(request: Request, state: AppState) -> Response:
    await state.models.unload(request.params["name"])
    return json_response(200, {})


async def infer(request: Request, state: AppState) -> Response:
    runtime = state.models.runtime(request.params["name"], request.params.get("version"))
    config = state.config
    deadline = deadline_s(request, config.timeout_ms)
    with runtime.admitted() as places:  # one place first: a full queue is refused before the body is read
        body = await in_time(request.body(config.max_body_bytes), config.read_timeout)
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) > PARSE_OFF_LOOP_BYTES and header_length is None:
            parsed = await asyncio.to_thread(parse_request, body, header_length)
        else:
            parsed = parse_request(body, header_length)
        images = _images(parsed, runtime)
        places.add(len(images) - 1)
        rows = await until_disconnect(_all(runtime, images, deadline, request.request_id), request)
    probabilities = np.stack(rows) if rows else np.zeros((0, len(runtime.model.labels)), np.float32)
    outputs = _output_tensors(parsed, probabilities, runtime.model.labels)
    document: dict[str, Any] = {"model_name": runtime.name, "model_version": runtime.model.version}
    if parsed.id is not None:
        document["id"] = parsed.id
    body, header_length_out = encode_response(document, outputs)
    runtime.observe_total(time.monotonic() - request.started_s)
    if header_length_out is None:
        return Response(200, body)
    return Response(
        200,
        body,
        content_type="application/octet-stream",
        headers={"inference-header-content-length": str(header_length_out)},
    )


def _images(parsed: InferRequest, runtime: ModelRuntime) -> list[bytes | np.ndarray]:
    """The request's one input -> one item per image: encoded bytes, or a pixel/tensor array."""
    if len(parsed.inputs) != 1:
        raise BadRequest(f"send exactly one input (image, pixels or tensor), got {len(parsed.inputs)}")
    tensor = parsed.inputs[0]
    side = runtime.model.input_spec.crop_size
    expected = {"image": ("BYTES", None), "pixels": ("UINT8", (side, side, 3)), "tensor": ("FP32", (3, side, side))}
    if tensor.name not in expected:
        raise BadRequest(
            f"unknown input {tensor.name!r}: this model takes image (BYTES), pixels (UINT8) or tensor (FP32)"
        )
    datatype, row_shape = expected[tensor.name]
    if tensor.datatype != datatype:
        raise BadRequest(f"input {tensor.name!r} must be {datatype}, got {tensor.datatype}")
    if row_shape is None:
        if not tensor.data:
            raise BadRequest("input 'image' holds no image")
        if any(not element for element in tensor.data):
            raise BadRequest("input 'image' holds an empty element")
        return list(tensor.data)
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != row_shape or tensor.shape[0] == 0:
        raise BadRequest(
            f"input {tensor.name!r} must have shape [n, {', '.join(map(str, row_shape))}], got {tensor.shape}"
        )
    assert isinstance(tensor.data, np.ndarray)
    batch = tensor.data.reshape(tensor.shape)
    if datatype == "FP32" and not np.isfinite(batch).all():
        raise BadRequest("input 'tensor' holds NaN or infinite values")
    return list(batch)


async def _all(
    runtime: ModelRuntime, images: list[bytes | np.ndarray], deadline_s: float, request_id: str
) -> list[np.ndarray]:
    """Every image's row; the first failure (400 for an undecodable image, 504, ...) fails the request."""
    answers = await asyncio.gather(
        *(runtime.infer(image, deadline_s, request_id) for image in images), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]


def _output_tensors(parsed: InferRequest, probabilities: np.ndarray, labels: list[str]) -> list[Output]:
    classes = probabilities.shape[1]
    k = parsed.parameters.get("top_k", 1)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= classes:
        raise BadRequest(f"top_k must be an integer from 1 to {classes}, got {k!r}")
    wanted = (
        parsed.outputs if parsed.outputs is not None else {name: parsed.binary_by_default for name in DEFAULT_OUTPUTS}
    )
    n = probabilities.shape[0]
    top = top_indices(probabilities, k)
    outputs = []
    for name, binary in wanted.items():
        binary = binary or parsed.binary_by_default
        if name == "probabilities":
            outputs.append(Output(name, "FP32", [n, classes], probabilities, binary))
        elif name == "scores":
            outputs.append(Output(name, "FP32", [n, k], np.take_along_axis(probabilities, top, axis=1), binary))
        elif name == "labels":
            names = [label(labels, int(i)).encode() for i in top.reshape(-1)]
            outputs.append(Output(name, "BYTES", [n, k], names, binary))
        else:
            raise BadRequest(f"unknown output {name!r}: this model has probabilities, labels and scores")
    return outputs


def _platform(entry: ModelEntry) -> str:
    backend = str(entry.model.metadata.get("backend", "torch"))
    return BACKENDS[backend].platform if backend in BACKENDS else backend


def templates() -> dict[str, dict[str, Handler]]:
    """The /v2 routes, for `App`."""
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes: dict[str, dict[str, Handler]] = {
        "/v2": {"GET": server_metadata},
        "/v2/health/live": {"GET": live},
        "/v2/health/ready": {"GET": ready},
        "/v2/models/stats": {"GET": stats},
        "/v2/repository/index": {"GET": repository_index, "POST": repository_index},
        "/v2/repository/models/{name}/load": {"POST": admin(load)},
        "/v2/repository/models/{name}/unload": {"POST": admin(unload)},
    }
    for prefix in (model, versioned):
        routes[prefix] = {"GET": model_metadata}
        routes[f"{prefix}/ready"] = {"GET": model_ready}
        routes[f"{prefix}/config"] = {"GET": model_config}
        routes[f"{prefix}/stats"] = {"GET": stats}
        routes[f"{prefix}/infer"] = {"POST": inference(infer)}
    return routes
