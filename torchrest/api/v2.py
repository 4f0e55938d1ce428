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

A model takes one input, whichever suits the client: `image` (BYTES [n], encoded images), `pixels`
(UINT8 [n, H, W, 3]) or `tensor` (FP32 [n, 3, H, W], normalised as the model's input says). Each image
becomes one job in the model's batch queue, batched with the image routes'. The request parameter `task`
picks one of the model's tasks (default: its first); its outputs are that task's (api/tensor_io.py;
docs/tasks.md): a classifier's `labels`/`scores` for the top k (`top_k`) and `probabilities` when asked
for, a detector's boxes, a segmenter's mask, an encoder's embedding. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from torchrest import __version__
from torchrest.admission import admitted, room_for
from torchrest.api.app import AppState, Handler
from torchrest.api.guards import admin, inference
from torchrest.api.http import Request, Response, json_response
from torchrest.api.lifecycle import deadline_s, in_time, until_disconnect
from torchrest.api.tensor_io import answers_of, images_of, metadata, output_tensors, platform, task_of
from torchrest.api.tensors import HEADER_LENGTH, encode_response, json_object, parse_request
from torchrest.errors import BadRequest, NotReady
from torchrest.served import ModelState, ServedEntry

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
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


def _entry(request: Request, state: AppState) -> ServedEntry:
    return state.models.entry(request.params["name"], request.params.get("version"))


async def model_metadata(request: Request, state: AppState) -> Response:
    return json_response(200, metadata(_entry(request, state)))


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
            "platform": platform(entry),
            "max_batch_size": runtime.info.max_batch_size if runtime else state.config.max_batch_size,
            "instance_group": [{"count": runtime.info.instances if runtime else 0, "kind": "KIND_CPU"}],
            "dynamic_batching": {"max_queue_delay_microseconds": int(state.config.max_wait_ms * 1000)},
            "parameters": {
                k: ",".join(map(str, v)) if isinstance(v, list) else str(v)
                for k, v in entry.model.describe().items()
                if not isinstance(v, dict)
            },
        },
    )


async def stats(request: Request, state: AppState) -> Response:
    rows = await state.models.statistics(request.params.get("name"), request.params.get("version"))
    return json_response(200, {"model_stats": rows})


async def repository_index(request: Request, state: AppState) -> Response:
    only_ready = False
    if request.method == "POST":
        body = await in_time(request.body(64 * 1024), state.config.read_timeout)
        if body.strip():
            ready_only = json_object(body).get("ready", False)
            if not isinstance(ready_only, bool):
                raise BadRequest(f"'ready' must be true or false, got {ready_only!r}")
            only_ready = ready_only
    index = await state.models.index()
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
    times = request.times
    room_for(runtime, deadline)  # a full queue is refused before the body is read; a slow one holds no place
    admitted_s = time.monotonic()
    times.mark("admission", request.started_s, admitted_s)
    body = await in_time(request.body(config.max_body_bytes), config.read_timeout)
    header_length = request.headers.get(HEADER_LENGTH)
    if len(body) > PARSE_OFF_LOOP_BYTES and header_length is None:
        parsed = await asyncio.to_thread(parse_request, body, header_length)
    else:
        parsed = parse_request(body, header_length)
    times.mark("body read", admitted_s, time.monotonic())
    with admitted(runtime, deadline) as places:
        task, head = task_of(parsed, runtime.model)
        options = task.v2_options(parsed.parameters, head)
        times.task = task.name
        images = images_of(parsed, runtime)
        places.add(len(images) - 1)
        answering = answers_of(runtime, images, deadline, request.request_id, times, task.name, options)
        answers = await until_disconnect(answering, request)
    outputs = output_tensors(parsed, answers, task, head, options, runtime.model.labels)
    document: dict[str, Any] = {"model_name": runtime.name, "model_version": runtime.model.version}
    if parsed.id is not None:
        document["id"] = parsed.id
    body, header_length_out = encode_response(document, outputs)
    total_s = time.monotonic() - request.started_s
    runtime.observe_total(total_s)
    timing = {"server-timing": times.header(total_s)}
    if header_length_out is None:
        return Response(200, body, headers=timing)
    return Response(
        200,
        body,
        content_type="application/octet-stream",
        headers={"inference-header-content-length": str(header_length_out), **timing},
    )


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
