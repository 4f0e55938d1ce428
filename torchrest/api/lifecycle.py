"""A request's life on the HTTP side, shared by every endpoint that runs a model (/classify, /v2 infer):

    deadline (server's --timeout-ms, or a shorter X-Request-Timeout-Ms)
    -> room_for(runtime, deadline): 503 at once when the queue is full or would outlast the deadline, before
    any body is read (a slow upload then holds no place) -> body read in time (408)
    -> with admitted(runtime, deadline): the place itself (503 when it filled meanwhile) -> the runtime's
    answer, unless the client leaves first (its queued jobs are then cancelled before the model sees them)

Admission itself is the runtime's (torchrest.admission), so the gRPC front-end shares it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from torchrest.api.http import ClientDisconnected, Request
from torchrest.errors import BadRequest, RequestTimeout

T = TypeVar("T")


def deadline_s(request: Request, server_timeout_ms: int) -> float:
    """When the request must have reached the model (monotonic clock)."""
    return request.started_s + request_timeout_ms(request, server_timeout_ms) / 1000


def request_timeout_ms(request: Request, server_timeout_ms: int) -> int:
    """The client may ask for a shorter deadline than the server's with `X-Request-Timeout-Ms`."""
    raw = request.headers.get("x-request-timeout-ms")
    if raw is None:
        return server_timeout_ms
    if not (raw.strip().isdecimal() and raw.isascii()) or int(raw) <= 0:
        raise BadRequest(f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {raw!r}")
    return min(int(raw), server_timeout_ms)


async def in_time(reading: Awaitable[T], timeout_s: float) -> T:
    """The body `reading` returns, if the client sends all of it within `timeout_s` (else 408)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reading
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s") from None


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
