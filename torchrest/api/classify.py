"""POST /classify: the seed-compatible endpoint.

    pick the model (?model=NAME: 404/503) -> admit (503 if full) -> read body (408/413/415/400)
    -> runtime: deadline (504), decode into the batch (400/413), model (500) -> top-k;
    a client that leaves while queued has its job cancelled
    -> {"status": "success", "model", "prediction": {"label", "class_id", "confidence"}, "top_k": [...]}

Admission comes first, so an overloaded server answers 503 without reading or decoding anything.
"""

from __future__ import annotations

import time

from torchrest.admission import admitted
from torchrest.api.app import AppState
from torchrest.api.forms import read_image
from torchrest.api.http import Request, Response, json_response
from torchrest.api.lifecycle import deadline_s, in_time, until_disconnect
from torchrest.errors import BadRequest
from torchrest.postprocess import top_k

MAX_TOP_K = 20


async def classify(request: Request, state: AppState) -> Response:
    runtime = state.models.runtime(request.query.get("model"))  # 404 unknown, 503 not loaded (yet)
    k = parse_top_k(request.query.get("top_k"))
    config = state.config
    deadline = deadline_s(request, config.timeout_ms)
    times = request.times
    with admitted(runtime, deadline):
        admitted_s = time.monotonic()
        times.mark("admission", request.started_s, admitted_s)
        data = await in_time(read_image(request, config.max_body_bytes), config.read_timeout)
        times.mark("body read", admitted_s, time.monotonic())
        answer = runtime.infer(data, deadline, request.request_id, times)
        answered = await until_disconnect(answer, request)
    predictions = top_k(answered, k, runtime.model.labels)
    total_s = time.monotonic() - request.started_s
    runtime.observe_total(total_s)
    return json_response(
        200,
        {
            "status": "success",
            "model": runtime.name,
            "prediction": predictions[0].as_dict(),
            "top_k": [p.as_dict() for p in predictions],
        },
        headers={"server-timing": times.header(total_s)},
    )


def parse_top_k(raw: str | None) -> int:
    if raw is None:
        return 1
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_TOP_K:
        raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}")
    return int(raw)
