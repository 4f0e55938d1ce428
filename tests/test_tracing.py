"""OpenTelemetry traces and JSON logs, from a real server to a real OTLP/HTTP receiver in the test (the
protocol's own protobuf messages, from opentelemetry-proto, decode what arrives)."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import PHOTOS, Server, free_port, running_server
from tests.helpers import clients

pytestmark = pytest.mark.slow(seconds=70)
STAGES = {"admission", "body read", "queue wait", "decode", "inference", "response"}


class Receiver:
    """An OTLP/HTTP trace collector on a free port: every span it is sent, decoded. `delay_s` makes it
    answer each export that much later (a slow collector)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.spans: list[dict[str, Any]] = []
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceRequest,
                    ExportTraceServiceResponse,
                )

                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.take(ExportTraceServiceRequest.FromString(body), self.path)
                time.sleep(receiver.delay_s)
                reply = ExportTraceServiceResponse().SerializeToString()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a slow collector: the exporter gave up waiting (its timeout), as it should

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, request: Any, path: str) -> None:
        assert path == "/v1/traces"
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "status": span.status.code,
                            "service": service,
                        }
                    )

    def wait_for(self, found: Any, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = [span for span in list(self.spans) if found(span)]
            if spans:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"no such span in {[span['name'] for span in self.spans]}")

    def close(self) -> None:
        self.server.shutdown()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def tracing_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "classifier-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s, not every 5 s
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }


@pytest.fixture(scope="module")
def repository(lite0_repository: Path) -> Path:
    return lite0_repository


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-front-ends"])
def traced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, repository: Path
) -> Iterator[tuple[Server, Receiver, int]]:
    receiver = Receiver()
    args = ("--model-repository", str(repository), "--default-model", "lite0", "--tracing", "--log-format", "json")
    # batches of up to 8 that wait 300 ms for company (the cap timed at start-up can be 1 on a small CPU)
    more = (
        "--grpc-port",
        "0",
        "--workers",
        str(request.param),
        "--max-wait-ms",
        "300",
        "--max-batch-size",
        "8",
    )
    with running_server(tmp_path_factory.mktemp("traced"), *args, *more, env=tracing_env(receiver.endpoint)) as s:
        assert s.grpc_port is not None
        yield s, receiver, s.grpc_port
    receiver.close()


def request_span(receiver: Receiver, trace_id: str) -> dict[str, Any]:
    return receiver.wait_for(lambda s: s["trace_id"] == trace_id and s["attributes"].get("torchrest.model"))[0]


def test_classify_v2_and_grpc_requests_continue_the_callers_trace(traced: tuple[Server, Receiver, int]) -> None:
    import tritonclient.http as http_client

    server, receiver, grpc_port = traced
    header, trace_id, caller = traceparent()
    response = httpx.post(
        f"{server.url}/classify", files={"image": PHOTOS["cat"]}, headers={"traceparent": header}, timeout=60
    )
    assert response.status_code == 200
    span = request_span(receiver, trace_id)
    assert span["name"] == "POST /classify" and span["parent"] == caller
    assert span["attributes"]["http.response.status_code"] == 200 and span["attributes"]["torchrest.model"] == "lite0"
    assert span["attributes"]["torchrest.request_id"] == response.headers["x-request-id"]
    assert span["service"]["service.name"] == "classifier-under-test"
    children = receiver.wait_for(lambda s: s["parent"] == span["span_id"] and s["name"] == "response")
    names = {s["name"] for s in receiver.spans if s["parent"] == span["span_id"]}
    assert STAGES <= names | {"decode"}, names  # (decode is the front-end's with --workers 2)
    assert children

    header, trace_id, caller = traceparent()
    http = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = http_client.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PHOTOS["coffee"]], dtype=np.object_))
    http.infer("lite0", [tensor], headers={"traceparent": header})
    span = request_span(receiver, trace_id)
    assert span["name"] == "POST /v2/models/{name}/infer" and span["parent"] == caller

    header, trace_id, caller = traceparent()
    assert clients("traced", f"127.0.0.1:{grpc_port}", header)["label"] == "Egyptian cat"
    span = request_span(receiver, trace_id)
    assert span["name"] == "inference.GRPCInferenceService/ModelInfer" and span["parent"] == caller
    assert span["attributes"]["rpc.grpc.status_code"] == 0


def test_a_batch_is_one_span_linked_to_every_request_it_served(traced: tuple[Server, Receiver, int]) -> None:
    server, receiver, _ = traced
    calls = [traceparent() for _ in range(6)]

    async def send() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            replies = await asyncio.gather(
                *(
                    client.post("/classify", files={"image": PHOTOS["rocket"]}, headers={"traceparent": h})
                    for h, *_ in calls
                )
            )
        return [reply.status_code for reply in replies]

    assert asyncio.run(send()) == [200] * 6  # --max-wait-ms 300: they wait for each other
    requests = {request_span(receiver, trace_id)["span_id"]: trace_id for _, trace_id, _ in calls}
    expected = {(trace_id, span_id) for span_id, trace_id in requests.items()}

    def batches() -> list[dict[str, Any]]:
        return [s for s in list(receiver.spans) if s["name"] == "inference lite0" and set(s["links"]) & expected]

    deadline = time.monotonic() + 15
    while {link for batch in batches() for link in batch["links"]} & expected != expected:
        assert time.monotonic() < deadline, "not every request was linked from a batch span"
        time.sleep(0.1)
    linked = [link for batch in batches() for link in batch["links"] if link in expected]
    assert sorted(linked) == sorted(expected)  # every request, in one batch span only
    assert max(batch["attributes"]["torchrest.batch_size"] for batch in batches()) > 1
    assert all(batch["attributes"]["torchrest.model"] == "lite0" for batch in batches())


def test_log_lines_are_json_and_carry_the_ids_the_spans_carry(traced: tuple[Server, Receiver, int]) -> None:
    server, receiver, _ = traced
    header, trace_id, _ = traceparent()
    response = httpx.post(
        f"{server.url}/classify", files={"image": PHOTOS["astronaut"]}, headers={"traceparent": header}, timeout=60
    )
    span = request_span(receiver, trace_id)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message", "process"} <= line.keys() for line in lines)
    mine = [line for line in lines if line.get("request_id") == response.headers["x-request-id"]]
    assert len(mine) == 1
    line = mine[0]
    assert line["trace_id"] == trace_id and line["span_id"] == span["span_id"]
    assert line["route"] == "/classify" and line["model"] == "lite0" and line["status"] == 200
    assert line["duration_ms"] > 0 and line["logger"] == "torchrest.access"


@pytest.mark.parametrize("collector", ["down", "slow"])
def test_a_collector_that_is_down_or_slow_never_slows_or_fails_requests(
    collector: str, tmp_path: Path, repository: Path
) -> None:
    slow = Receiver(delay_s=3.0) if collector == "slow" else None
    endpoint = slow.endpoint if slow else f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ("--model-repository", str(repository), "--default-model", "tiny", "--tracing")
    with running_server(tmp_path, *args, env=tracing_env(endpoint)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            took = []
            for _ in range(40):
                started = time.perf_counter()
                response = client.post("/classify", files={"image": PHOTOS["cat"]})
                took.append(time.perf_counter() - started)
                assert response.status_code == 200
        # exports go every 0.1 s and a slow one takes 3 s: a request that waited for one would take as long
        assert max(took) < 2.5, took
    if slow:
        assert slow.spans  # it was reached, slowly
        slow.close()


def test_without_the_switch_the_otel_variables_alone_send_nothing(tmp_path: Path, repository: Path) -> None:
    receiver = Receiver()
    args = ("--model-repository", str(repository), "--default-model", "tiny", "--log-format", "json")
    with running_server(tmp_path, *args, env=tracing_env(receiver.endpoint)) as server:
        for _ in range(5):
            assert httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).status_code == 200
        time.sleep(0.5)  # five export intervals
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert receiver.spans == []
    access = [line for line in lines if line["logger"] == "torchrest.access" and line["route"] == "/classify"]
    assert len(access) == 5 and all("trace_id" not in line for line in access)
    receiver.close()
