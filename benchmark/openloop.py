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
    body = multipart_body(image)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response off a connection: its status, and whether the server keeps the connection open."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").strip() != "close"


async def _open_loop(url: str, image: bytes, rate: float, seconds: float, timeout_s: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = multipart_request(host, port, image)
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


def open_loop(url: str, image: bytes, rate: float, seconds: float, timeout_s: float = 30.0) -> dict[str, Any]:
    """Send `rate` requests/s for `seconds`; latency percentiles measured from each scheduled send."""
    return asyncio.run(_open_loop(url, image, rate, seconds, timeout_s))
