"""Several front-end processes and one engine (--workers 2): what works in one process works across them,
talked to with real clients, and the processes live and die as torchrest.supervisor says."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    PHOTOS,
    Server,
    admin_token_file,
    metric_value,
    running_server,
    wait_for,
)
from tests.helpers import clients, start, thread_nice_values
from torchrest.model_input import InputSpec

pytestmark = pytest.mark.slow(seconds=45)
SHM = Path("/dev/shm")


def children(pid: int) -> dict[str, int]:
    """The supervisor's processes by name (torchrest-eng, torchrest-fe0, ...)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            name = Path(f"/proc/{child}/comm").read_text().strip()
            if name.startswith("torchrest-"):  # not multiprocessing's resource tracker
                found[name] = int(child)
    return found


def left_behind(pid: int) -> list[Path]:
    return list(SHM.glob(f"torchrest-{pid}-*"))


def fresh(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a new connection: the kernel picks the front-end by a hash of it."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def repository(lite0_repository: Path) -> Path:
    return lite0_repository


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, repository: Path) -> Iterator[tuple[Server, int]]:
    folder = tmp_path_factory.mktemp("workers")
    args = ("--workers", "2", "--model-repository", str(repository), "--default-model", "lite0")
    extra = ("--admin-token-file", str(admin_token_file(folder)), "--grpc-port", "0")
    with running_server(folder, *args, *extra) as server:
        assert server.grpc_port is not None
        yield server, server.grpc_port


def test_two_front_ends_and_an_engine_answer_classify_v2_and_grpc(workers: tuple[Server, int], server: Server) -> None:
    """The same photo through /classify, /v2 (tritonclient) and gRPC (tritonclient) gives the answer the
    one-process server gives for the same weights."""
    import tritonclient.http as http_client

    served, grpc_port = workers
    names = children(served.process.pid)
    assert {"torchrest-eng", "torchrest-fe0", "torchrest-fe1"} <= set(names), names
    one_process = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).json()
    answers = [fresh(served, "POST", "/classify", files={"image": PHOTOS["cat"]}).json() for _ in range(6)]
    for answer in answers:
        assert answer["prediction"]["label"] == one_process["prediction"]["label"] == "Egyptian cat"
        assert answer["prediction"]["confidence"] == pytest.approx(one_process["prediction"]["confidence"], abs=1e-3)

    image = np.array([PHOTOS["cat"]], dtype=np.object_)
    http = http_client.InferenceServerClient(served.url.removeprefix("http://"))
    request = http_client.InferInput("image", [1], "BYTES")
    request.set_data_from_numpy(image)
    result = http.infer("lite0", [request], outputs=[http_client.InferRequestedOutput("labels")])
    assert result.as_numpy("labels")[0][0].decode() == "Egyptian cat"

    out = clients("triton", f"127.0.0.1:{grpc_port}")  # tritonclient.grpc, in a process of its own
    assert out["ready"] and out["model_ready"] and out["cat_label"] == "Egyptian cat"
    assert out["uint8_max_difference"] == 0.0 and out["fp32_max_difference"] < 1e-5
    assert out["eight_match"] and out["burst_answered"] == 32 and out["burst_correct"] == 32
    assert out["errors"]["unknown_model"] == "NOT_FOUND" and out["errors"]["load_without_token"] == "UNAUTHENTICATED"
    assert not out["tiny_ready_after_unload"] and out["tiny_ready_after_load"]


def test_pixels_and_tensors_cross_as_images_do(workers: tuple[Server, int]) -> None:
    """uint8 pixels travel in a slot, float tensors inline: both give the encoded photo's answer."""
    import tritonclient.http as http_client

    from torchrest.model_input import IMAGENET_MEAN, IMAGENET_STD, InputSpec
    from torchrest.preprocess import decode_image

    served, _ = workers
    pixels = decode_image(PHOTOS["cat"], InputSpec(224, 256), 10**8)
    tensor = ((pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    client = http_client.InferenceServerClient(served.url.removeprefix("http://"))
    for name, datatype, batch in (
        ("pixels", "UINT8", pixels[None]),
        ("tensor", "FP32", tensor[None].astype(np.float32)),
    ):
        request = http_client.InferInput(name, list(batch.shape), datatype)
        request.set_data_from_numpy(batch)
        result = client.infer("lite0", [request], outputs=[http_client.InferRequestedOutput("labels")])
        assert result.as_numpy("labels")[0][0].decode() == "Egyptian cat", name


def test_front_ends_run_at_the_engines_priority(workers: tuple[Server, int]) -> None:
    """--event-loop-nice lowers the one-process server's loop only: a front-end's loop is also its decoder and
    the engine's feeder, and runs apart from the model's threads (torchrest/frontend/process.py)."""
    served, _ = workers
    assert fresh(served, "POST", "/classify", files={"image": PHOTOS["cat"]}).status_code == 200
    for name, pid in children(served.process.pid).items():
        assert set(thread_nice_values(pid).values()) == {0}, name


def test_a_front_end_decodes_small_uploads_on_its_loop_and_large_ones_on_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a front-end decodes, as torchrest/frontend/process.py says: on the event loop's thread up to
    DECODE_OFF_LOOP_BYTES, on another thread beyond."""
    import asyncio
    import io
    import threading
    from types import SimpleNamespace

    from PIL import Image

    from torchrest.frontend import remote
    from torchrest.messages import EntryInfo, ModelInfo
    from torchrest.metrics import Metrics
    from torchrest.served import RuntimeInfo

    info = ModelInfo("m", "1", ["a"], InputSpec(224, 256), True, {}, {}, ("classify",), None)
    link = SimpleNamespace(slots=None, metrics=Metrics(), max_image_pixels=10**8)
    runtime = remote.RemoteRuntime(link, EntryInfo("m", info, "READY", "", None), RuntimeInfo("b", "cpu", 8, 1, 1))  # type: ignore[arg-type]
    noisy = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8)
    large = io.BytesIO()
    Image.fromarray(noisy).save(large, format="JPEG", quality=95)
    assert len(PHOTOS["cat"]) <= remote.DECODE_OFF_LOOP_BYTES < len(large.getvalue())
    threads: list[int] = []
    decode_into = remote.decode_into

    def recorded(*args: object) -> object:
        threads.append(threading.get_ident())
        return decode_into(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(remote, "decode_into", recorded)

    async def decode(data: bytes) -> np.ndarray:
        pixels, geometry, _ = await runtime._pixels_in(data, None)
        assert pixels is not None and geometry.width > 0
        return pixels

    async def both() -> int:
        await decode(PHOTOS["cat"])
        await decode(large.getvalue())
        return threading.get_ident()

    loop_thread = asyncio.run(both())
    assert threads[0] == loop_thread and threads[1] != loop_thread


def test_a_front_end_counts_its_own_requests_waiting_before_the_engine() -> None:
    """A front-end refuses (503) by the engine's last Pulse or by its own requests, those still waiting for a
    slot included, as a share of every front-end's, whichever is more: a flood then waits nowhere unseen
    past its deadline (no 504)."""
    from types import SimpleNamespace

    from torchrest.admission import admitted, room_for
    from torchrest.errors import QueueFull
    from torchrest.frontend import remote
    from torchrest.messages import EntryInfo, ModelInfo
    from torchrest.metrics import Metrics
    from torchrest.served import RuntimeInfo

    info = ModelInfo("m", "1", ["a"], InputSpec(224, 256), True, {}, {}, ("classify",), None)
    link = SimpleNamespace(slots=None, metrics=Metrics(), max_image_pixels=10**8, frontends=2, queues={})
    entry = EntryInfo("m", info, "READY", "", None, admission=(8, 1))
    runtime = remote.RemoteRuntime(link, entry, RuntimeInfo("b", "cpu", 8, 1, 1))  # type: ignore[arg-type]
    now = time.monotonic()
    with contextlib.ExitStack() as held:
        for _ in range(4):  # 4 here, as a share of 2 front-ends: 8, the queue's bound
            room_for(runtime, now + 10)
            held.enter_context(admitted(runtime, now + 10))
        assert runtime.held == 4
        with pytest.raises(QueueFull):
            room_for(runtime, now + 10)
    assert runtime.held == 0
    link.queues = {"m": (7, 0.5)}  # the engine: 7 in flight, 0.5 s an image
    with admitted(runtime, now + 10):
        with pytest.raises(QueueFull, match="past this request's deadline"):
            room_for(runtime, now + 2)  # (7 + 1) x 0.5 s ahead of it, 2 s left
    with admitted(runtime, now + 10), admitted(runtime, now + 10), admitted(runtime, now + 10):
        link.queues = {"m": (0, 1.0)}  # the Pulse saw none yet; these 3 of 2 front-ends: 6 ahead, 7 s
        with pytest.raises(QueueFull, match="past this request's deadline"):
            room_for(runtime, now + 5)
        room_for(runtime, now + 9)


def test_metrics_sum_every_process(workers: tuple[Server, int]) -> None:
    """/metrics from any front-end counts the requests of all of them, and the engine's batches."""
    served, _ = workers
    before = fresh(served, "GET", "/metrics").text
    for _ in range(10):
        assert fresh(served, "POST", "/classify?model=tiny", files={"image": PHOTOS["cat"]}).status_code == 200
    after = fresh(served, "GET", "/metrics").text
    route = {"route": "/classify", "status": "200"}
    assert (
        metric_value(after, "torchrest_requests_total", **route)
        - metric_value(before, "torchrest_requests_total", **route)
        == 10
    )
    images = metric_value(after, "torchrest_batch_size_sum", model="tiny")
    assert images - metric_value(before, "torchrest_batch_size_sum", model="tiny") == 10
    stats = fresh(served, "GET", "/v2/models/tiny/stats").json()["model_stats"][0]
    assert stats["inference_count"] >= 10
    page = fresh(served, "GET", "/web/stats").json()
    tiny = next(row for row in page["models"] if row["name"] == "tiny")
    assert tiny["ok"] >= 10 and tiny["latency_ms"]["p50"] is not None


def test_unload_and_load_asked_of_one_front_end_hold_for_all(workers: tuple[Server, int]) -> None:
    served, _ = workers
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert fresh(served, "POST", "/v2/repository/models/tiny/unload", headers=admin).status_code == 200
    statuses = [fresh(served, "POST", "/classify?model=tiny", files={"image": PHOTOS["cat"]}) for _ in range(12)]
    assert {r.status_code for r in statuses} == {503}
    assert all(r.json()["code"] == "not_ready" for r in statuses)
    index = fresh(served, "GET", "/v2/repository/index").json()
    assert {row["name"]: row["state"] for row in index}["tiny"] == "UNAVAILABLE"
    assert fresh(served, "POST", "/v2/repository/models/tiny/load", headers=admin).status_code == 200
    statuses = [fresh(served, "POST", "/classify?model=tiny", files={"image": PHOTOS["cat"]}) for _ in range(12)]
    assert {r.status_code for r in statuses} == {200}
    assert fresh(served, "POST", "/v2/repository/models/tiny/unload").status_code == 401  # the token, everywhere


def test_a_killed_front_end_is_replaced_and_the_server_keeps_serving(workers: tuple[Server, int]) -> None:
    served, _ = workers
    pid = served.process.pid
    before = children(pid)
    os.kill(before["torchrest-fe1"], signal.SIGKILL)
    wait_for(
        lambda: children(pid).get("torchrest-fe1") not in (None, before["torchrest-fe1"]),
        what="front-end 1 started again",
    )
    assert children(pid)["torchrest-eng"] == before["torchrest-eng"]  # the models were not reloaded
    wait_for(lambda: len(left_behind(pid)) == 2, what="one slot file per live front-end")
    wait_for(
        lambda: all(fresh(served, "GET", "/health").status_code == 200 for _ in range(8)), what="both front-ends ready"
    )
    for _ in range(12):
        assert fresh(served, "POST", "/classify", files={"image": PHOTOS["cat"]}).status_code == 200


def tiny_with_two_front_ends(repository: Path) -> tuple[str, ...]:
    return ("--workers", "2", "--model-repository", str(repository), "--model", "tiny")


def engine_folder(engine_pid: int) -> Path:
    """The supervisor's temporary folder (the engine's socket, the metrics files), as its engine was told."""
    environment = Path(f"/proc/{engine_pid}/environ").read_bytes().split(b"\0")
    metrics_dir = next(item for item in environment if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(metrics_dir.split(b"=", 1)[1].decode()).parent


def test_a_killed_engine_fails_health_and_ends_the_server_non_zero(tmp_path: Path, repository: Path) -> None:
    """The engine holds the models: without it the front-ends say 503 at once, and the supervisor exits 1
    (Kubernetes restarts the pod) leaving nothing in /dev/shm or its temporary folder."""
    with running_server(tmp_path, *tiny_with_two_front_ends(repository)) as server:
        process, url = server.process, server.url
        names = children(process.pid)
        folder = engine_folder(names["torchrest-eng"])
        assert (folder / "engine.sock").exists()
        os.kill(names["torchrest-eng"], signal.SIGKILL)
        answers = []
        with contextlib.suppress(httpx.HTTPError):
            while process.poll() is None:  # until the supervisor has stopped the front-ends
                answers.append(httpx.get(f"{url}/health", timeout=2).status_code)
        assert process.wait(timeout=30) == 1
        assert 200 not in answers[1:], answers  # (the first may have been answered before the kill landed)
        assert not left_behind(process.pid)
        assert all(not Path(f"/proc/{pid}").exists() for pid in names.values())
        assert "engine process exited" in server.log()
        assert not folder.exists()


def test_sigterm_drains_every_process_and_exits_0(tmp_path: Path, repository: Path) -> None:
    with running_server(tmp_path, *tiny_with_two_front_ends(repository)) as server:
        process, url = server.process, server.url
        names = children(process.pid)
        assert left_behind(process.pid)
        for _ in range(4):
            assert httpx.post(f"{url}/classify", files={"image": PHOTOS["cat"]}, timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in names.values())
        assert not left_behind(process.pid)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)


@pytest.mark.parametrize("workers", ["-1", "4096"])
def test_bad_worker_count_is_one_line_and_exit_2(workers: str) -> None:
    result = start("--workers", workers)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--workers" in result.stderr, result.stderr
