"""uvicorn's httptools protocol with a deadline on request headers (slowloris) and a bound on connections.

uvicorn times out idle keep-alive connections but lets a client take forever over its headers. Here a
connection must deliver a request's complete headers within `--read-timeout` seconds of opening (or of
the request's first byte on a kept-alive connection); past it, the client gets 408 and is closed. The
body has its own deadline in the handler (`api/lifecycle.py`). Either way nothing waits on the client
but a timer: the event loop and the inference threads are never held by a slow sender. And a process holds
at most `--max-connections` open connections: the next one gets 503 `too_many_connections` and is closed,
so that file descriptors and memory stay bounded whatever clients do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from torchrest.errors import RequestTimeout, TooManyConnections, TorchrestError


def guarded_protocol(
    read_timeout_s: float, max_connections: int, on_timeout: Callable[[], None], on_refused: Callable[[], None]
) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`); `on_timeout` counts each 408 sent,
    `on_refused` each connection refused past `max_connections`."""
    answer = _closing_answer(RequestTimeout(f"request headers not received within {read_timeout_s:g} s"))
    refusal = _closing_answer(TooManyConnections(f"this server holds {max_connections} connections already"))

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.server_state.connections) > max_connections:
                transport.write(refusal)
                transport.close()
                on_refused()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(read_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered; its own deadlines apply
            self.transport.write(answer)
            self.transport.close()
            on_timeout()

    return HeaderDeadlineProtocol


def _closing_answer(error: TorchrestError) -> bytes:
    """The whole HTTP response of an error that closes the connection, in the error table's JSON."""
    body = json.dumps({"status": "failed", "code": error.code, "message": error.message}).encode()
    reason = HTTPStatus(error.status).phrase.encode()
    return (
        b"HTTP/1.1 " + str(error.status).encode() + b" " + reason + b"\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
