"""The ASGI request and response primitives the handlers share: headers, query, a body read under a
byte limit, and JSON or plain responses. Kept to what we use; uvicorn and httptools parse HTTP itself.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from torchrest.errors import BodyTooLarge, TooManyUploads, TorchrestError
from torchrest.timing import StageTimes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

REQUEST_ID_MAX_LENGTH = 64


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body, headers=headers or {})


def error_response(error: TorchrestError, protocol_v2: bool = False) -> Response:
    """Our error body, or the Open Inference Protocol's `{"error": "..."}` on its /v2 routes."""
    if protocol_v2:
        return json_response(error.status, {"error": error.message}, dict(error.headers))
    payload = {"status": "failed", "code": error.code, "message": error.message}
    return json_response(error.status, payload, dict(error.headers))


class Receiving:
    """The body bytes a process is receiving, all connections together, under one budget: a chunk that would
    pass it fails its request (503). Bytes count while they arrive; a body read in full is given back, as
    its request then holds a place in its model's queue, which bounds it."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.held_bytes = 0

    def take(self, nbytes: int) -> None:
        if self.held_bytes + nbytes > self.budget_bytes:
            raise TooManyUploads(
                f"the request bodies being received hold {self.held_bytes / 2**20:.0f} MiB, the limit "
                f"(--max-receiving-mb {self.budget_bytes / 2**20:g}): retry in a moment"
            )
        self.held_bytes += nbytes

    def give(self, nbytes: int) -> None:
        self.held_bytes -= nbytes


UNBOUNDED = Receiving(2**62)  # requests made without a server's budget (tests of the handlers alone)


class Request:
    __slots__ = (
        "scope", "receive", "receiving", "method", "path", "headers", "request_id", "started_s", "params", "times",
        "body_read", "_query",
    )  # fmt: skip

    def __init__(self, scope: Scope, receive: Receive, started_s: float, receiving: Receiving = UNBOUNDED) -> None:
        self.scope = scope
        self.receive = receive
        self.receiving = receiving
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        self.request_id = _request_id(self.headers.get("x-request-id"))
        self.started_s = started_s
        self.params: dict[str, str] = {}  # the {name} segments of a templated route
        self.times = StageTimes()  # where its time went (Server-Timing; with tracing, its span's children)
        self.body_read = False  # whether the handler waited for the body (its time is then not the server's)
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True))
        return self._query

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def declared_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value)

    async def body_chunks(self, limit_bytes: int) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; refuse it (413) as soon as it would pass `limit_bytes`."""
        declared = self.declared_length()
        if declared is not None and declared > limit_bytes:
            raise BodyTooLarge(f"body of {declared} bytes is over the limit of {limit_bytes}")
        received = 0
        self.body_read = True
        try:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                if received + len(chunk) > limit_bytes:
                    raise BodyTooLarge(f"body is over the limit of {limit_bytes} bytes")
                if chunk:
                    self.receiving.take(len(chunk))
                    received += len(chunk)
                    yield chunk
                if not message.get("more_body", False):
                    return
        finally:
            self.receiving.give(received)

    async def disconnected(self) -> None:
        """Return when the client closes the connection. Call it once the body has been read: from
        then on the server only has a disconnect left to tell."""
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def body(self, limit_bytes: int) -> bytes:
        parts = [chunk async for chunk in self.body_chunks(limit_bytes)]
        return parts[0] if len(parts) == 1 else b"".join(parts)


async def send_response(send: Send, response: Response, request_id: str) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(name.encode(), value.encode()) for name, value in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _request_id(supplied: str | None) -> str:
    """The client's X-Request-Id when it is short and printable, else a fresh random one."""
    if supplied and len(supplied) <= REQUEST_ID_MAX_LENGTH and supplied.isprintable() and supplied.isascii():
        return supplied
    return f"{random.getrandbits(64):016x}"  # not os.urandom: a syscall that lets go of the GIL
