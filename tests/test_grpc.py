"""The Open Inference Protocol over gRPC (`--grpc-port`), with real clients against a real server: the
same two-model repository as tests/test_v2.py, tritonclient[grpc] and KServe's InferenceGRPCClient (each
in a process of its own, see tests/grpc_clients.py), gRPC health checking and reflection, a fuzzed
ModelInfer, deadlines, SIGTERM, and the .proto checked against the protocol's descriptors."""

from __future__ import annotations

import filecmp
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import (
    CAT_LABELS,
    Server,
    admin_token_file,
    metric_value,
    running_server,
    wait_for,
)
from tests.helpers import assert_one_line_failure, clients, infer_request, start

pytestmark = pytest.mark.slow(seconds=30)

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def repository(lite0_repository: Path) -> Path:
    return lite0_repository


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    folder = tmp_path_factory.mktemp("grpc")
    # the event loop at the model threads' priority: the deadline tests time its answers while the other
    # workers of the suite keep both cores busy, and a loop below them all answers late (test_priority.py
    # checks the default)
    args = ("--model-repository", str(repository), "--grpc-port", "0", "--event-loop-nice", "0")
    with running_server(folder, *args, "--admin-token-file", str(admin_token_file(folder))) as server:
        yield server, f"127.0.0.1:{server.grpc_port}"


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


def _model_infer(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


def test_a_short_deadline_on_a_busy_server_is_never_computed(served: tuple[Server, str]) -> None:
    server, address = served
    photo = (ROOT / "tests/data/rocket.jpg").read_bytes()
    before = server.metrics()
    with grpc.insecure_channel(address) as channel:
        call = _model_infer(channel)
        # a late call with a deadline of 1 s, sent once the images in flight ahead of it (what admission reckons
        # the wait from) are about two seconds of work at the pace of a timed call of 4 images: the queue
        # would outlast it, and the refusal has time to come back on a machine busy with other work too
        started = time.perf_counter()
        call(infer_request("lite0", photo, images=4), timeout=60)
        ahead = min(150, math.ceil(2.0 / ((time.perf_counter() - started) / 4)))
        busy = [call.future(infer_request("lite0", photo, images=4), timeout=120) for _ in range(ahead // 4 + 4)]
        in_flight = partial(metric_value, name="torchrest_in_flight", model="lite0")
        wait_for(lambda: in_flight(server.metrics()) >= ahead, what=f"{ahead} images in flight")
        with pytest.raises(grpc.RpcError) as late:
            call(infer_request("lite0", photo), timeout=1.0)
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
    # a deadline as long as the calls' own: 64 images one at a time can take past the default 10 s on a busy
    # machine, and admission would rightly refuse the calls that could not make it
    args = ("--model-repository", str(repository), "--grpc-port", "0", "--max-batch-size", "1")
    args += ("--timeout-ms", "120000")
    photo = (ROOT / "tests/data/cat.jpg").read_bytes()
    with running_server(tmp_path, *args) as server, grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = _model_infer(channel)
        # 8 calls of 8 images each, one image at a time (a second or more): SIGTERM once every call is admitted
        # (its images in flight, or already computed) and some are still in flight
        calls = [call.future(infer_request("lite0", photo, images=8), timeout=120) for _ in range(8)]

        def all_admitted() -> bool:
            metrics = server.metrics()
            in_flight = metric_value(metrics, "torchrest_in_flight", model="lite0")
            return in_flight >= 1 and in_flight + metric_value(metrics, "torchrest_batch_size_sum", model="lite0") >= 64

        wait_for(all_admitted, what="every call admitted, some still in flight", every_s=0.01)
        server.process.send_signal(signal.SIGTERM)
        answers = [future.result() for future in calls]
        assert all(len(answer) > 0 for answer in answers)
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=5)


def test_grpc_port_in_use_fails_the_start_in_one_line(repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = start("--model-repository", str(repository), "--grpc-port", str(port))
    assert_one_line_failure(result, "cannot listen")
