"""uvicorn's httptools protocol with a deadline on request headers (slowloris).

uvicorn times out idle keep-alive connections but lets a client take forever over its headers. Here a
connection must deliver a request's complete headers within `--read-timeout` seconds of opening (or of
the request's first byte on a kept-alive connection); past it, the client gets 408 and is closed. The
body has its own deadline in the handler (`api/classify.py`). Either way nothing waits on the client
but a timer: the event loop and the inference threads are never held by a slow sender.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from torchrest.errors import RequestTimeout


def guarded_protocol(read_timeout_s: float, on_timeout: Callable[[], None]) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`); `on_timeout` counts each 408 sent."""
    error = RequestTimeout(f"request headers not received within {read_timeout_s:g} s")
    body = json.dumps({"status": "failed", "code": error.code, "message": error.message}).encode()
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
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
