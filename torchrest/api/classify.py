"""POST /classify: the seed-compatible endpoint.

    pick the model (?model=NAME: 404/503) -> admit (503 if full) -> read body (408/413/415/400)
    -> runtime: deadline (504), decode into the batch (400/413), model (500) -> top-k;
    a client that leaves while queued has its job cancelled
    -> {"status": "success", "model", "prediction": {"label", "class_id", "confidence"}, "top_k": [...]}

Admission comes first, so an overloaded server answers 503 without reading or decoding anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from torchrest.api.app import AppState
from torchrest.api.forms import read_image
from torchrest.api.http import ClientDisconnected, Request, Response, json_response
from torchrest.errors import BadRequest, RequestTimeout
from torchrest.postprocess import top_k

MAX_TOP_K = 20
T = TypeVar("T")


async def classify(request: Request, state: AppState) -> Response:
    runtime = state.models.runtime(request.query.get("model"))  # 404 unknown, 503 not loaded (yet)
    k = parse_top_k(request.query.get("top_k"))
    config = state.config
    deadline_s = request.started_s + request_timeout_ms(request, config.timeout_ms) / 1000
    runtime.admit()
    try:
        data = await in_time(read_image(request, config.max_body_bytes), config.read_timeout)
        probabilities = await until_disconnect(runtime.infer(data, deadline_s, request.request_id), request)
    finally:
        runtime.release()
    predictions = top_k(probabilities, k, runtime.model.labels)
    runtime.observe_total(time.monotonic() - request.started_s)
    return json_response(
        200,
        {
            "status": "success",
            "model": runtime.name,
            "prediction": predictions[0].as_dict(),
            "top_k": [p.as_dict() for p in predictions],
        },
    )


async def until_disconnect(answer: Awaitable[T], request: Request) -> T:
    """Await `answer`, but give it up if the client leaves first: its queued job is then cancelled and
    the batcher drops it instead of computing an answer nobody will read."""
    answering = asyncio.ensure_future(answer)
    leaving = asyncio.ensure_future(request.disconnected())
    try:
        await asyncio.wait({answering, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if not answering.done():
        answering.cancel()
        raise ClientDisconnected()
    return answering.result()


async def in_time(reading: Awaitable[T], timeout_s: float) -> T:
    """The body `reading` returns, if the client sends all of it within `timeout_s` (else 408)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reading
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s") from None


def request_timeout_ms(request: Request, server_timeout_ms: int) -> int:
    """The client may ask for a shorter deadline than the server's with `X-Request-Timeout-Ms`."""
    raw = request.headers.get("x-request-timeout-ms")
    if raw is None:
        return server_timeout_ms
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise BadRequest(f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {raw!r}")
    return min(int(raw), server_timeout_ms)


def parse_top_k(raw: str | None) -> int:
    if raw is None:
        return 1
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_TOP_K:
        raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}")
    return int(raw)
