"""Every error a client can get from /classify: right status, JSON body, request id, server stays up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import CAT_LABELS, PHOTOS, Server, export_program, metric_value, running_server, wait_for
from tests.helpers import forged_png

pytestmark = pytest.mark.slow(seconds=60)  # servers of their own, most of them


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "failed"
    assert body["code"] == code
    assert body["message"]
    assert response.headers["x-request-id"]
    return body


def post_raw(server: Server, content: bytes, content_type: str = "image/jpeg") -> httpx.Response:
    return httpx.post(f"{server.url}/classify", content=content, headers={"content-type": content_type}, timeout=60)


def concurrent_posts(
    server: Server, bodies: list[bytes], content_type: str = "image/jpeg", headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """POST every body to /classify at once, each on its own connection; answers in order."""
    sent = {"content-type": content_type, **(headers or {})}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            posts = (client.post("/classify", content=b, headers=sent) for b in bodies)
            return list(await asyncio.gather(*posts))

    return asyncio.run(burst())


def test_missing_image_field(server: Server) -> None:
    response = httpx.post(f"{server.url}/classify", files={"photo": ("x.jpg", PHOTOS["cat"])}, timeout=60)
    assert_error(response, 400, "missing_image")


def test_empty_raw_body(server: Server) -> None:
    assert_error(post_raw(server, b""), 400, "missing_image")


def test_multipart_without_boundary(server: Server) -> None:
    assert_error(post_raw(server, b"--x\r\n", "multipart/form-data"), 400, "malformed_request")


def test_multipart_cut_inside_the_image(server: Server) -> None:
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + PHOTOS["cat"][:2000]
    assert_error(post_raw(server, body, "multipart/form-data; boundary=xyz"), 400, "malformed_request")


@pytest.mark.parametrize(
    "payload",
    [
        b"this is not an image",
        PHOTOS["cat"][: len(PHOTOS["cat"]) // 2],  # truncated JPEG
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # PNG signature, garbage after
        b"GIF89a" + b"\xff" * 32,
    ],
)
def test_undecodable_bytes(server: Server, payload: bytes) -> None:
    assert_error(post_raw(server, payload), 400, "invalid_image")


def test_unsupported_format_tiff(server: Server) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(PHOTOS["cat"])).save(buffer, format="TIFF")
    assert_error(post_raw(server, buffer.getvalue(), "image/tiff"), 400, "invalid_image")


def test_unsupported_content_type(server: Server) -> None:
    assert_error(post_raw(server, b"hello", "text/plain"), 415, "unsupported_media_type")


def test_decompression_bomb_header(server: Server) -> None:
    body = assert_error(post_raw(server, forged_png(100_000, 100_000), "image/png"), 413, "image_too_large")
    assert "megapixels" in body["message"]


@pytest.mark.parametrize("timeout", ["soon", "0", "-5", "1.5"])
def test_bad_request_timeout_header(server: Server, timeout: str) -> None:
    response = httpx.post(
        f"{server.url}/classify", files={"image": PHOTOS["cat"]}, headers={"x-request-timeout-ms": timeout}, timeout=60
    )
    assert "X-Request-Timeout-Ms" in assert_error(response, 400, "invalid_parameter")["message"]


@pytest.mark.parametrize("top_k", ["0", "21", "abc", "-1"])
def test_bad_top_k(server: Server, top_k: str) -> None:
    response = httpx.post(
        f"{server.url}/classify", params={"top_k": top_k}, files={"image": ("c.jpg", PHOTOS["cat"])}, timeout=60
    )
    assert_error(response, 400, "invalid_parameter")


def test_unknown_route_and_wrong_method(server: Server) -> None:
    assert_error(httpx.get(f"{server.url}/nope", timeout=10), 404, "not_found")
    response = httpx.get(f"{server.url}/classify", timeout=10)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_server_still_serves_after_errors(server: Server) -> None:
    response = post_raw(server, PHOTOS["cat"])
    assert response.status_code == 200
    assert response.json()["prediction"]["label"] in CAT_LABELS


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-process", "two-front-ends"])
def tight_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    """One request at a time, 1 MiB bodies, 1 megapixel images; in one process, and with two front-end
    processes (the engine's queue admits; 503s and limits come from either process)."""
    with running_server(
        tmp_path_factory.mktemp("tight"),
        "--workers",
        request.param,
        "--model",
        "resnet18",
        "--max-queue",
        "1",
        "--max-batch-size",
        "1",
        "--max-body-mb",
        "1",
        "--max-image-megapixels",
        "1",
    ) as running:
        yield running


def test_body_over_limit_is_refused_from_its_declared_length(tight_server: Server) -> None:
    response = post_raw(tight_server, b"\xff" * (2 * 1024 * 1024))
    assert_error(response, 413, "body_too_large")
    assert response.headers["connection"] == "close"


def test_chunked_body_over_limit_is_refused_while_streaming(tight_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(48):
            yield b"\xff" * 65536

    response = httpx.post(
        f"{tight_server.url}/classify", content=chunks(), headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert_error(response, 413, "body_too_large")


def test_image_over_pixel_limit(tight_server: Server) -> None:
    buffer = io.BytesIO()
    Image.new("L", (1500, 1000)).save(buffer, format="PNG")  # 1.5 MP, a few KB
    assert_error(post_raw(tight_server, buffer.getvalue(), "image/png"), 413, "image_too_large")


def test_queue_full_is_503_with_retry_after(tight_server: Server) -> None:
    responses = concurrent_posts(tight_server, [PHOTOS["cat"]] * 12)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses
    shed = [r for r in responses if r.status_code == 503]
    assert shed, statuses
    for response in shed:
        assert_error(response, 503, "queue_full")
        assert response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"  # a client that retries at once must reconnect
    metrics = tight_server.metrics()
    assert metric_value(metrics, "torchrest_requests_total", route="/classify", status="503") == len(shed)
    assert metric_value(metrics, "torchrest_dropped_requests_total", reason="shed") == len(shed)


@pytest.mark.parametrize(("deadline_from", "workers"), [("server", "1"), ("client", "1"), ("client", "2")])
def test_deadline_passed_in_queue_is_504_and_never_reaches_the_model(
    tmp_path: Path, deadline_from: str, workers: str
) -> None:
    """One image at a time (~50+ ms each) and a 40 ms deadline, the server's (--timeout-ms) or the
    client's (X-Request-Timeout-Ms): of 8 concurrent requests sent before the server has timed a batch
    (so admission cannot foresee the wait), the first is served and those still queued at their
    deadline get 504 without ever reaching the model."""
    args = ("--model", "resnet18", "--max-batch-size", "1", "--workers", workers)
    server_timeout = ("--timeout-ms", "40") if deadline_from == "server" else ()
    headers = {"x-request-timeout-ms": "40"} if deadline_from == "client" else {}
    with running_server(tmp_path, *args, *server_timeout) as server:
        responses = concurrent_posts(server, [PHOTOS["cat"]] * 8, headers=headers)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503, 504}, statuses  # 503: a late sender, once a batch was timed
        late = [r for r in responses if r.status_code == 504]
        assert late, statuses
        for response in late:
            assert_error(response, 504, "deadline_exceeded")
        metrics = server.metrics()
        assert metric_value(metrics, "torchrest_batch_size_sum") == statuses.count(200)
        assert metric_value(metrics, "torchrest_dropped_requests_total", reason="expired") == len(late)


def test_a_request_the_queue_would_keep_past_its_deadline_is_refused_at_once(tmp_path: Path) -> None:
    """Once the server has timed its batches, a request that the queue ahead of it would keep past its
    deadline is refused at admission (503, Retry-After: the expected wait) instead of queued to expire."""
    with running_server(tmp_path, "--model", "resnet18", "--max-batch-size", "1") as server:
        first = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60)
        assert first.status_code == 200
        timing = dict(part.split(";dur=") for part in first.headers["server-timing"].split(", "))
        per_image_ms = float(timing["inference"]) + float(timing["decode"])
        deadline_ms = max(1, round(3 * per_image_ms))  # room for about three images
        responses = concurrent_posts(server, [PHOTOS["cat"]] * 16, headers={"x-request-timeout-ms": str(deadline_ms)})
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503, 504}, statuses
        refused = [r for r in responses if r.status_code == 503]
        assert refused, statuses
        for response in refused:
            assert "past this request's deadline" in assert_error(response, 503, "queue_full")["message"]
            assert int(response.headers["retry-after"]) >= 1
        metrics = server.metrics()
        assert metric_value(metrics, "torchrest_dropped_requests_total", reason="shed") == len(refused)


class FailsOnWhite(torch.nn.Module):
    """A real exported classifier (4 classes from channel means) that fails on a white image: it raises
    (an assertion in its graph), or (`exhausts_memory`) asks the allocator for 48 TiB, as a model
    exhausting its device would (a branch of its graph, torch.cond)."""

    def __init__(self, exhausts_memory: bool = False) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 4)
        self.exhausts_memory = exhausts_memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        white = x.mean() > 2.0
        if self.exhausts_memory:

            def huge(m: torch.Tensor) -> torch.Tensor:
                return self.head(torch.empty([1 << 42, 3], dtype=torch.float32)[: m.shape[0]])

            return torch.cond(white, huge, self.head, (means,))
        torch._assert_async(~white, "this model cannot look at white images")
        return self.head(means)


def serve_fails_on_white(
    tmp_path: Path, exhausts_memory: bool
) -> tuple[contextlib.AbstractContextManager[Server], bytes]:
    """A server of FailsOnWhite, and a white PNG to send it."""
    model_path = export_program(FailsOnWhite(exhausts_memory), (2, 3, 224, 224), torch.float32, tmp_path / "white.pt2")
    labels = tmp_path / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    white = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(white, format="PNG")
    return running_server(tmp_path, "--model", str(model_path), "--labels", str(labels)), white.getvalue()


def test_model_error_fails_that_batch_only(tmp_path: Path) -> None:
    serving, white = serve_fails_on_white(tmp_path, exhausts_memory=False)
    with serving as server:
        ok = post_raw(server, PHOTOS["cat"])
        assert ok.status_code == 200, ok.text
        assert ok.json()["prediction"]["label"] in {"north", "east", "south", "west"}
        assert_error(post_raw(server, white, "image/png"), 500, "model_error")
        again = post_raw(server, PHOTOS["coffee"])
        assert again.status_code == 200, again.text
        assert metric_value(server.metrics(), "torchrest_model_errors_total") == 1
        assert "cannot look at white images" in server.log()


def test_instance_that_dies_is_restarted_and_health_is_not_ready_meanwhile(tmp_path: Path) -> None:
    """Out of memory leaves a backend unusable: that batch fails (500), /health turns 503 at once, the
    instance is re-opened after a 1 s back-off, and a request queued meanwhile is answered after it."""
    serving, white = serve_fails_on_white(tmp_path, exhausts_memory=True)
    with serving as server:
        assert post_raw(server, PHOTOS["cat"]).status_code == 200
        died = post_raw(server, white, "image/png")
        assert_error(died, 500, "model_error")
        assert "restarting" in died.json()["message"]
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert_error(health, 503, "not_ready")
        assert "instance 0 is restarting after RuntimeError" in health.json()["message"]
        queued = post_raw(server, PHOTOS["coffee"])  # waits in the queue for the restarted instance
        assert queued.status_code == 200, queued.text
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        metrics = server.metrics()
        assert metric_value(metrics, "torchrest_instance_restarts_total") == 1
        assert metric_value(metrics, "torchrest_model_errors_total") == 1
        assert "instance 0 restarted" in server.log()


def test_bad_images_in_a_batch_fail_alone(server: Server) -> None:
    """Undecodable images batched with good ones get 400; the good ones still get their own answers."""

    bodies = [PHOTOS["cat"] if i % 2 == 0 else b"not an image %d" % i for i in range(16)]
    for index, response in enumerate(concurrent_posts(server, bodies)):
        if index % 2 == 0:
            assert response.status_code == 200, response.text
            assert response.json()["prediction"]["label"] in CAT_LABELS
        else:
            assert_error(response, 400, "invalid_image")


def raw_classify_request(port: int, image: bytes) -> bytes:
    boundary = "torchrest-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize("workers", ["1", "2"])
def test_client_that_leaves_while_queued_is_cancelled_not_computed(tmp_path: Path, workers: str) -> None:
    """ResNet-18 one image at a time (~25-50 ms each): 24 clients send a whole request and hang up while
    most of them are queued. Those are dropped as cancelled; the model runs far fewer than 24 batches.
    With two front-ends, the engine hears of each hang-up and drops the job the same way."""
    args = ("--model", "resnet18", "--max-batch-size", "1", "--timeout-ms", "60000", "--workers", workers)
    with running_server(tmp_path, *args) as server:
        port = int(server.url.rsplit(":", 1)[1])
        request = raw_classify_request(port, PHOTOS["cat"])
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]
        for client in clients:
            client.sendall(request)

        # hang up once most requests wait in the queue, or (on a machine busy with other work, where the decode
        # rather than the model is what they wait for) all are in the server and some wait in the queue
        def waiting() -> bool:
            metrics = server.metrics()
            queued = metric_value(metrics, "torchrest_queue_depth")
            return queued >= 8 or (queued >= 3 and metric_value(metrics, "torchrest_in_flight") >= 24)

        wait_for(waiting, what="most requests waiting", every_s=0.01)
        for client in clients:
            client.close()
        deadline = time.monotonic() + 30
        cancelled = computed = closed = answered = 0.0
        while time.monotonic() < deadline:  # every job ends computed or dropped as cancelled
            metrics = server.metrics()
            cancelled = metric_value(metrics, "torchrest_dropped_requests_total", reason="cancelled")
            computed = metric_value(metrics, "torchrest_batch_size_count")
            closed = metric_value(metrics, "torchrest_requests_total", route="/classify", status="499")
            answered = metric_value(metrics, "torchrest_requests_total", route="/classify", status="200")
            if cancelled + computed == 24 and closed + answered == 24:
                break
            time.sleep(0.05)
        assert cancelled >= 12 and cancelled + computed == 24, (cancelled, computed)
        assert closed >= cancelled and closed + answered == 24, (closed, answered)
        while metric_value(metrics, "torchrest_in_flight") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # (with several processes the engine writes its gauges ten times a second)
            metrics = server.metrics()
        assert metric_value(metrics, "torchrest_in_flight") == 0
        answer = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60)
        assert answer.status_code == 200


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_admitted_requests_then_exits_0(tmp_path: Path, workers: str) -> None:
    """SIGTERM with 8 requests admitted (one image at a time, ~50+ ms each): every one is answered 200,
    none is reset, the process exits 0, and the port is closed to new connections. With two front-ends,
    both drain through the engine before it stops."""
    args = ("--model", "resnet18", "--max-batch-size", "1", "--drain-timeout", "60", "--workers", workers)
    with running_server(tmp_path, *args) as server:

        async def burst_then_sigterm() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                posts = [
                    asyncio.ensure_future(client.post("/classify", files={"image": PHOTOS["cat"]})) for _ in range(8)
                ]
                deadline = time.monotonic() + 30
                while True:  # every request admitted: in flight, or already answered
                    metrics = (await client.get("/metrics")).text
                    in_flight = metric_value(metrics, "torchrest_in_flight")
                    answered = metric_value(metrics, "torchrest_requests_total", route="/classify", status="200")
                    if in_flight >= 1 and in_flight + answered >= 8:
                        break
                    assert time.monotonic() < deadline, (in_flight, answered)
                    await asyncio.sleep(0.01)
                server.process.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*posts))

        responses = asyncio.run(burst_then_sigterm())
        assert [r.status_code for r in responses] == [200] * 8
        assert all(r.json()["status"] == "success" for r in responses)
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=5)


def read_until_closed(client: socket.socket, timeout_s: float) -> bytes:
    client.settimeout(timeout_s)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            received += chunk
    return received


def test_slow_clients_are_timed_out_and_hold_nothing(tmp_path: Path) -> None:
    """Slowloris: 40 clients dribble their headers, 10 send headers and then dribble the body. Meanwhile
    normal requests are answered at once; at --read-timeout each slow client gets 408 and is closed."""
    with running_server(tmp_path, "--read-timeout", "2") as server:
        port = int(server.url.rsplit(":", 1)[1])
        slow_headers = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        slow_bodies = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        for client in slow_bodies:
            head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
            client.sendall(head + PHOTOS["cat"][:100])
        started = time.monotonic()
        for line in (b"POST /classify HTTP/1.1\r\n", b"Host: x\r\n", b"X-Slow: 1\r\n"):
            for client in slow_headers:
                client.sendall(line)
            answer = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=10)
            assert answer.status_code == 200, answer.text  # the slow clients hold no worker
            time.sleep(0.3)
        answers = [read_until_closed(client, 10) for client in slow_headers + slow_bodies]
        waited = time.monotonic() - started
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"code":"request_timeout"' in answer.replace(b" ", b"")
        assert waited > 1.9, waited  # none cut before --read-timeout (each read above waits at most 10 s)
        metrics = server.metrics()
        assert metric_value(metrics, "torchrest_requests_total", route="other", status="408") == 40
        assert metric_value(metrics, "torchrest_requests_total", route="/classify", status="408") == 10
        assert metric_value(metrics, "torchrest_in_flight") == 0
        for client in slow_headers + slow_bodies:
            client.close()


def test_uploads_hold_no_place_their_bytes_are_bounded_and_so_are_connections(tmp_path: Path) -> None:
    """A slow upload holds no place in the queue (only room is checked before its body); the bytes being
    received, all connections together, stay under --max-receiving-mb (503 too_many_uploads past it, and the
    budget comes back); past --max-connections a new connection gets 503 too_many_connections and is closed."""
    args = ("--max-queue", "2", "--max-body-mb", "1", "--max-receiving-mb", "1.5", "--max-connections", "12")
    with running_server(tmp_path, *args, "--read-timeout", "20") as server:
        port = int(server.url.rsplit(":", 1)[1])
        head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for client in slow:
            client.sendall(head % 100_000 + PHOTOS["cat"][:100])
        time.sleep(0.5)
        answer = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=30)
        assert answer.status_code == 200, answer.text  # five uploads under way, a queue of two: none held

        padded = PHOTOS["cat"] + bytes(1_000_000 - len(PHOTOS["cat"]))  # a JPEG with trailing bytes decodes
        first, second = (socket.create_connection(("127.0.0.1", port)) for _ in range(2))
        first.sendall(head % len(padded) + padded[:900_000])
        time.sleep(0.5)
        second.sendall(head % len(padded) + padded[:900_000])
        refused = read_until_closed(second, 10)
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
        assert b'"code":"too_many_uploads"' in refused.replace(b" ", b"")
        first.sendall(padded[900_000:])
        assert first.recv(65536).startswith(b"HTTP/1.1 200 ")
        again = httpx.post(f"{server.url}/classify", content=padded, headers={"content-type": "image/jpeg"}, timeout=30)
        assert again.status_code == 200, again.text  # the budget came back
        for client in (*slow, first, second):
            client.close()

        time.sleep(0.5)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
        extra = socket.create_connection(("127.0.0.1", port))
        turned_away = read_until_closed(extra, 10)
        assert turned_away.startswith(b"HTTP/1.1 503 "), turned_away[:200]
        assert b'"code":"too_many_connections"' in turned_away.replace(b" ", b"")
        idle.pop().close()
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # a place freed, a place taken
        for client in idle:
            client.close()
        metrics = server.metrics()
        assert metric_value(metrics, "torchrest_requests_total", route="other", status="503") >= 1
