"""Open-loop load: requests sent on a fixed schedule, whatever the server is doing.

A closed-loop tool (wrk) waits for an answer before sending the next request, so a slow server is
sent less work and its queueing delay hides. Here request i leaves at start + i / rate, and its
latency counts from that scheduled moment (no coordinated omission). Keep-alive connections are
reused from a pool; one is opened when none is idle.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import numpy as np

BOUNDARY = "----torchrest-openloop-5c1e"


def multipart_body(image: bytes) -> bytes:
    """The body `curl -F image=@photo.jpg` sends (boundary BOUNDARY)."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="image.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def multipart_request(host: str, port: int, image: bytes, path: str = "/classify") -> bytes:
    """The bytes of `curl -F image=@photo.jpg http://host:port/classify`, built once."""
    return post(host, port, path, f"multipart/form-data; boundary={BOUNDARY}", multipart_body(image))


def raw_request(host: str, port: int, image: bytes, path: str = "/classify") -> bytes:
    """The photo as the whole body (`curl -T photo.jpg`, wrk/raw.lua)."""
    return post(host, port, path, "image/jpeg", image)


def post(host: str, port: int, path: str, content_type: str, body: bytes) -> bytes:
    """The bytes of one POST request."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response off a connection: its status, and whether the server keeps the connection open."""
    status, keep, _ = await read_whole_response(reader)
    return status, keep


async def read_whole_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """As `read_response`, with the body (sized by Content-Length, or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
    status = int(head[0].split()[1])
    headers = {name.strip(): value.strip() for name, value in (line.split(":", 1) for line in head[1:] if ":" in line)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "") != "close", body


def fetch(url: str, request: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """Send one prebuilt request to `url`'s host and port; its status and body."""

    async def once() -> tuple[int, bytes]:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(request)
            await writer.drain()
            status, _, body = await asyncio.wait_for(read_whole_response(reader), timeout_s)
            return status, body
        finally:
            writer.close()

    return asyncio.run(once())


async def _open_loop(
    url: str, image: bytes, rate: float, seconds: float, timeout_s: float, request: bytes | None
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = request or multipart_request(host, port, image)
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    count = max(1, int(rate * seconds))
    start = loop.time() + 0.2

    async def send(index: int) -> None:
        scheduled = start + index / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        connection = None
        try:
            connection = idle.pop() if idle else await asyncio.open_connection(host, port)
            reader, writer = connection
            writer.write(request)
            await writer.drain()
            status, _ = await asyncio.wait_for(read_response(reader), timeout_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            if connection is not None:
                connection[1].close()
            return
        latencies.append(loop.time() - scheduled)
        if status != 200:
            errors[f"status {status}"] += 1
        idle.append(connection)

    began = time.perf_counter()
    await asyncio.gather(*(send(index) for index in range(count)))
    elapsed = time.perf_counter() - began
    for _, writer in idle:
        writer.close()
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "target_rate": rate,
        "sent": count,
        "answered": len(latencies),
        "achieved_rate": len(latencies) / elapsed,
        "duration_s": elapsed,
        "latency_ms": {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)} | {"max": float(ms.max())},
        "errors": dict(errors),
        "error_count": sum(errors.values()),
    }


def open_loop(
    url: str, image: bytes, rate: float, seconds: float, timeout_s: float = 30.0, request: bytes | None = None
) -> dict[str, Any]:
    """Send `rate` requests/s for `seconds`; latency percentiles measured from each scheduled send.
    `request`: the whole HTTP request to send (default: `image` uploaded to /classify as `curl -F`)."""
    return asyncio.run(_open_loop(url, image, rate, seconds, timeout_s, request))
