"""The Open Inference Protocol over gRPC (`--grpc-port`), with real clients against a real server: the
same two-model repository as tests/test_v2.py, tritonclient[grpc] and KServe's InferenceGRPCClient (each
in a process of its own, see tests/grpc_clients.py), gRPC health checking and reflection, a fuzzed
ModelInfer, deadlines, SIGTERM, and the .proto checked against the protocol's descriptors."""

from __future__ import annotations

import filecmp
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import (
    ADMIN_TOKEN,
    CAT_LABELS,
    Server,
    admin_token_file,
    free_port,
    metric_value,
    running_server,
    write_repository,
)

ROOT = Path(__file__).parent.parent
CLIENTS = Path(__file__).with_name("grpc_clients.py")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    folder = tmp_path_factory.mktemp("grpc")
    port = free_port()
    args = ("--model-repository", str(repository), "--grpc-port", str(port))
    with running_server(folder, *args, "--admin-token-file", str(admin_token_file(folder))) as server:
        yield server, f"127.0.0.1:{port}"


def clients(scenario: str, address: str, argument: str = ADMIN_TOKEN) -> dict:  # type: ignore[type-arg]
    """tests/grpc_clients.py SCENARIO ADDRESS ARGUMENT (the admin token, or the model for `answers`)."""
    result = subprocess.run(
        [sys.executable, str(CLIENTS), scenario, address, argument], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_tritonclient_grpc_covers_the_protocol(served: tuple[Server, str]) -> None:
    server, address = served
    out = clients("triton", address)
    assert out["live"] and out["ready"] and out["model_ready"] and out["server_name"] == "torchrest"
    assert out["index"] == ["lite0", "tiny"] and out["inputs"] == ["image", "pixels", "tensor"]
    assert out["cat_label"] in CAT_LABELS
    assert out["uint8_max_difference"] == 0.0 and out["fp32_max_difference"] < 1e-5
    assert out["eight_match"] and out["burst_answered"] == 32 and out["burst_correct"] == 32
    assert out["errors"] == {
        "unknown_model": "NOT_FOUND",
        "bad_shape": "INVALID_ARGUMENT",
        "bad_datatype": "INVALID_ARGUMENT",
        "load_without_token": "UNAUTHENTICATED",
    }
    assert not out["tiny_ready_after_unload"] and out["tiny_ready_after_load"]
    assert out["inference_count"] > 40 and out["config_platform"] == "pytorch_libtorch"
    assert metric_value(server.metrics(), "torchrest_requests_total", route="grpc", status="OK") > 40


def test_kserve_grpc_client_raw_and_typed_contents(served: tuple[Server, str]) -> None:
    answers = clients("kserve", served[1])
    assert answers["raw"][0] in CAT_LABELS and answers["typed"][0] in CAT_LABELS


def test_fuzzed_model_infer_gets_only_documented_codes(served: tuple[Server, str]) -> None:
    out = clients("fuzz", served[1])
    assert out["unexpected"] == [] and out["live_after"], out
    assert sum(out["codes"].values()) == 150


def test_health_checking_and_reflection(served: tuple[Server, str]) -> None:
    with grpc.insecure_channel(served[1]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=10)))
        services = {service.name for service in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def test_proto_matches_the_protocol() -> None:
    out = clients("protocol", "-")
    assert out["mismatches"] == [] and out["messages"] >= 30 and out["fields"] >= 100


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    """The committed modules are what the .proto generates (the command is in the .proto's header)."""
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp_path}"]
    command += [f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(ROOT / "torchrest/grpc/inference.proto")]
    subprocess.run(command, check=True, cwd=ROOT)
    for name in ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "torchrest/grpc" / name, ROOT / "torchrest/grpc" / name, shallow=False), name


def infer_request(model: str, photo: bytes, images: int = 1) -> bytes:
    """A ModelInferRequest for `model` with `images` copies of one image, as raw protobuf (the protocol's
    field numbers), so this process needs no generated module of the `inference` package."""

    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    tensor = field(1, b"image") + field(2, b"BYTES") + _varint(3 << 3 | 0) + _varint(images)
    raw = (len(photo).to_bytes(4, "little") + photo) * images
    return field(1, model.encode()) + field(5, tensor) + field(7, raw)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _model_infer(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


def test_a_short_deadline_on_a_busy_server_is_never_computed(served: tuple[Server, str]) -> None:
    server, address = served
    photo = (ROOT / "tests/data/rocket.jpg").read_bytes()
    before = server.metrics()
    with grpc.insecure_channel(address) as channel:
        call = _model_infer(channel)
        # 64 calls, so that the queue is still long after the 0.3 s below: on a fast 2-core machine (AVX-512)
        # 24 calls were all answered by then, and the late call found nothing ahead of it
        busy = [call.future(infer_request("lite0", photo), timeout=120) for _ in range(64)]
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as late:
            call(infer_request("lite0", photo), timeout=0.05)
        # the queue ahead would outlast its deadline: refused at once (as HTTP's 503), not queued to expire
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "past this request's deadline" in (late.value.details() or "")
        for future in busy:
            future.result()
    after = server.metrics()
    dropped = sum(
        metric_value(after, "torchrest_dropped_requests_total", model="lite0", reason=reason)
        - metric_value(before, "torchrest_dropped_requests_total", model="lite0", reason=reason)
        for reason in ("expired", "cancelled", "shed")
    )
    assert dropped >= 1  # never run by the model


def test_sigterm_finishes_admitted_grpc_calls(repository: Path, tmp_path: Path) -> None:
    port = free_port()
    args = ("--model-repository", str(repository), "--grpc-port", str(port), "--max-batch-size", "1")
    photo = (ROOT / "tests/data/cat.jpg").read_bytes()
    with running_server(tmp_path, *args) as server, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _model_infer(channel)
        # 8 calls of 8 images each: long enough in the server that all 64 places are seen taken at once
        calls = [call.future(infer_request("lite0", photo, images=8), timeout=120) for _ in range(8)]
        deadline = time.monotonic() + 30
        while metric_value(server.metrics(), "torchrest_in_flight", model="lite0") < 64:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        answers = [future.result() for future in calls]
        assert all(len(answer) > 0 for answer in answers)
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=5)


def test_grpc_port_in_use_fails_the_start_in_one_line(repository: Path) -> None:
    from tests.test_cli import assert_one_line_failure, start

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = start("--model-repository", str(repository), "--grpc-port", str(port))
    assert_one_line_failure(result, "cannot listen")
