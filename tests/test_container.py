"""The container image, run as KServe and Kubernetes run it: read-only root filesystem, a non-root (and
an arbitrary) uid, the model repository mounted read-only at /mnt/models, a CPU limit, SIGTERM on stop.
Real clients talk to it: HTTP multipart, KServe's own v2 REST client and tritonclient.

Needs the image and a container engine: `make image-test` builds `torchrest:latest` and runs this file
(CONTAINER_ENGINE and TORCHREST_IMAGE override the engine and the image).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import CAT_LABELS, PHOTOS, TINY_LABELS, free_port, metric_value, write_repository

pytestmark = pytest.mark.container

ENGINE = os.environ.get("CONTAINER_ENGINE", "podman").split()
IMAGE = os.environ.get("TORCHREST_IMAGE", "torchrest:latest")
READY_TIMEOUT_S = 180


@dataclass
class Container:
    id: str
    url: str
    cold_start_s: float

    def logs(self) -> str:
        result = engine("logs", self.id, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, object]:
        return dict(json.loads(engine("inspect", "--format", "{{json .State}}", self.id).stdout))


def engine(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def image() -> str:
    if engine("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"no image {IMAGE}: build it with `make image` (or run `make image-test`)")
    return IMAGE


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_repository(tmp_path_factory.mktemp("repository"))
    # the container's user is not the test's: everything must be readable by others, as a Secret or a
    # storage initializer's files are
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@contextlib.contextmanager
def running_container(*run_args: str, port: int = 8080, serve_args: tuple[str, ...] = ()) -> Iterator[Container]:
    """`<engine> run` the image with a read-only root, published on a free loopback port; wait (bounded)
    until /v2/health/ready is 200. The container is removed afterwards."""
    host_port = free_port()
    started = time.monotonic()
    publish = f"127.0.0.1:{host_port}:{port}"
    container_id = engine("run", "--detach", "--read-only", "--publish", publish, *run_args, IMAGE, *serve_args)
    container_id = container_id.stdout.strip()
    url = f"http://127.0.0.1:{host_port}"
    try:
        deadline = started + READY_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            running = json.loads(engine("inspect", "--format", "{{.State.Running}}", container_id).stdout)
            if not running or time.monotonic() > deadline:
                logs = Container(container_id, url, 0).logs()
                raise AssertionError(f"container not ready (running={running}):\n{logs}")
            time.sleep(0.2)
        container = Container(container_id, url, time.monotonic() - started)
        print(f"\ncontainer {' '.join(run_args)}: ready {container.cold_start_s:.1f} s after `run`")
        yield container
    finally:
        engine("rm", "--force", "--time", "0", container_id, check=False)


def classify(url: str, model: str | None = None) -> dict[str, object]:
    params = {"model": model} if model else {}
    response = httpx.post(f"{url}/classify", params=params, files={"image": PHOTOS["cat"]}, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def kserve_labels(url: str, model: str) -> list[str]:
    """cat.jpg through KServe's own v2 REST client (the `kserve` package), image as binary BYTES."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def infer() -> list[str]:
        image = InferInput(name="image", shape=[1], datatype="BYTES")
        image.set_data_from_numpy(np.array([PHOTOS["cat"]], dtype=np.object_), binary_data=True)
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            assert await client.is_server_ready(url)
            assert await client.is_model_ready(url, model)
            response = await client.infer(url, InferRequest(model_name=model, infer_inputs=[image]), model)
        finally:
            await client.close()
        labels = next(output for output in response.outputs if output.name == "labels")
        return [value.decode() if isinstance(value, bytes) else str(value) for value in labels.as_numpy().ravel()]

    return asyncio.run(infer())


def triton_labels(url: str, model: str) -> list[str]:
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([PHOTOS["cat"]], dtype=np.object_), binary_data=True)
        result = client.infer(model, [image], outputs=[httpclient.InferRequestedOutput("labels")])
        labels = result.as_numpy("labels")
        assert labels is not None
        return [value.decode() for value in labels.ravel()]
    finally:
        client.close()


def test_model_repository_mounted_read_only_as_kserve_mounts_it(repository: Path) -> None:
    grpc_port = free_port()
    grpc_publish = ("--publish", f"127.0.0.1:{grpc_port}:8081")
    with running_container("--volume", f"{repository}:/mnt/models:ro", *grpc_publish) as container:
        index = httpx.post(f"{container.url}/v2/repository/index", timeout=10).json()
        assert {(model["name"], model["state"]) for model in index} == {("lite0", "READY"), ("tiny", "READY")}
        assert classify(container.url, "lite0")["prediction"]["label"] in CAT_LABELS  # type: ignore[index]
        assert classify(container.url, "tiny")["prediction"]["label"] in TINY_LABELS  # type: ignore[index]
        assert kserve_labels(container.url, "lite0")[0] in CAT_LABELS
        assert triton_labels(container.url, "lite0")[0] in CAT_LABELS
        info = httpx.get(f"{container.url}/", timeout=10).json()
        assert info["batching"]["threads_per_instance"] >= 1
        user = engine("exec", container.id, "id", "-u").stdout.strip()
        assert user != "0", "the image runs as a non-root user"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # gRPC on KServe's port, 8081
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_single_model_folder_any_uid_and_port_from_the_environment(repository: Path) -> None:
    """One model folder at /mnt/models (KServe's single-model mount) served under the InferenceService's
    name as the runtime passes it, an arbitrary uid in group 0 (as OpenShift assigns them), and PORT
    chosen by the platform (Knative sets it)."""
    run_args = ("--volume", f"{repository / 'lite0'}:/mnt/models:ro", "--user", "123456:0", "--env", "PORT=9000")
    with running_container(*run_args, port=9000, serve_args=("--model-name", "cat-finder")) as container:
        info = httpx.get(f"{container.url}/", timeout=10).json()
        assert [model["name"] for model in info["models"]] == ["cat-finder"]
        assert classify(container.url)["prediction"]["label"] in CAT_LABELS  # type: ignore[index]
        assert kserve_labels(container.url, "cat-finder")[0] in CAT_LABELS
        assert engine("exec", container.id, "id", "-u").stdout.strip() == "123456"


def test_builtin_default_model_follows_the_cpu_limit() -> None:
    """No /mnt/models: the built-in default model. `--cpus 1` sets a CFS quota of one CPU on a machine
    with more cores: the server must size its threads to the quota, not to the node."""
    with running_container("--cpus", "1") as container:
        info = httpx.get(f"{container.url}/", timeout=10).json()
        assert info["model"]["name"] == "efficientnet_lite0"
        assert info["batching"]["threads_per_instance"] == 1
        assert classify(container.url)["prediction"]["label"] in CAT_LABELS  # type: ignore[index]


def test_stop_under_load_answers_every_admitted_request(repository: Path) -> None:
    """`<engine> stop` sends SIGTERM: the server answers the 12 requests it admitted, exits 0, and stop
    returns once the drain is done (well before its own 60 s kill timeout)."""
    run_args = ("--volume", f"{repository}:/mnt/models:ro", "--env", "TORCHREST_MAX_BATCH_SIZE=1")
    with running_container(*run_args) as container:

        async def burst_then_stop() -> tuple[list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=container.url, timeout=120) as client:
                posts = [
                    asyncio.ensure_future(
                        client.post("/classify", params={"model": "lite0"}, files={"image": PHOTOS["cat"]})
                    )
                    for _ in range(12)
                ]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if metric_value((await client.get("/metrics")).text, "torchrest_in_flight") == 12:
                        break
                    await asyncio.sleep(0.01)
                started = time.monotonic()
                stop = await asyncio.to_thread(engine, "stop", "--time", "60", container.id)
                stop_s = time.monotonic() - started
                assert stop.returncode == 0, stop.stderr
                return list(await asyncio.gather(*posts)), stop_s

        responses, stop_s = asyncio.run(burst_then_stop())
        assert [response.status_code for response in responses] == [200] * 12
        assert all(response.json()["prediction"]["label"] in CAT_LABELS for response in responses)
        state = container.state()
        assert state["ExitCode"] == 0, container.logs()
        assert stop_s < 50, f"stop took {stop_s:.1f} s: the engine killed it instead of letting it drain"
        print(f"\nstop under load: {stop_s:.1f} s, 12/12 answered 200, exit status 0")
