"""The HTTP surface's edge cases, in process: the ASGI app (torchrest.api) over a fake ServedModels, talked
to through httpx's ASGI transport, as Starlette tests its own apps. Routing (404, 405 with Allow), request ids,
the error JSON on every path (and /v2's `{"error": ...}`), CORS, readiness, metrics labels and the
OpenAPI document need no model and no socket: what does (bodies over the limit, which are read only once a
model has room, the protocol's header deadline, connection limits, real clients) is tested against real
servers (tests/test_errors.py, tests/test_security.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import replace

import httpx
import pytest

from torchrest.access import AccessControl
from torchrest.api import AppState, build_app, route_table
from torchrest.config import ServerConfig
from torchrest.errors import NotFound, all_errors
from torchrest.metrics import Metrics
from torchrest.served import ServedEntry, ServedModels, ServedRuntime, look_up

ORIGIN = "https://app.example.com"


class NoModels:
    """A ServedModels that serves nothing: every look-up is a 404, readiness is what the test sets."""

    def __init__(self, not_ready: str | None = None) -> None:
        self.not_ready = not_ready

    @property
    def entries(self) -> Mapping[str, ServedEntry]:
        return {}

    @property
    def default(self) -> str:
        return "nothing"

    def entry(self, name: str | None, version: str | None = None) -> ServedEntry:
        return look_up({}, name, version, self.default)

    def runtime(self, name: str | None, version: str | None = None) -> ServedRuntime:
        self.entry(name, version)
        raise NotFound("no model")  # (look_up raised first)

    def not_ready_reason(self) -> str | None:
        return self.not_ready

    async def index(self) -> list[dict[str, str]]:
        return []

    async def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, object]]:
        return []

    async def activity(self) -> dict[str, dict[str, object]]:
        return {}

    async def load(self, name: str) -> ServedEntry:
        raise NotFound(f"unknown model {name!r}")

    async def unload(self, name: str) -> None:
        raise NotFound(f"unknown model {name!r}")


def in_process(models: ServedModels | None = None, **options: object) -> httpx.Client:
    """A client of the app as `torchrest serve OPTIONS` would build it, with `models` behind it."""
    config = replace(ServerConfig(), **options)  # type: ignore[arg-type]
    state = AppState(config=config, metrics=Metrics(), models=models or NoModels(), access=AccessControl())
    transport = httpx.ASGITransport(app=build_app(state))  # type: ignore[arg-type]
    return SyncASGIClient(transport)


class SyncASGIClient(httpx.Client):
    """httpx's ASGI transport is async only: each request runs the app on its own event loop."""

    def __init__(self, transport: httpx.ASGITransport) -> None:
        super().__init__(base_url="http://torchrest.test")
        self.asgi = transport

    def send(self, request: httpx.Request, **kwargs: object) -> httpx.Response:  # type: ignore[override]
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.asgi, base_url="http://torchrest.test") as client:
                response = await client.send(request)
                await response.aread()
                return response

        return asyncio.run(send())


@pytest.fixture
def app() -> Iterator[httpx.Client]:
    with in_process() as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "failed" and body["code"] == code and body["message"], body
    assert response.headers["x-request-id"]
    return body


def test_unknown_route_is_404_json(app: httpx.Client) -> None:
    assert_error(app.get("/nope"), 404, "not_found")
    assert_error(app.post("/classify/extra"), 404, "not_found")


@pytest.mark.parametrize(("method", "path", "allow"), [("GET", "/classify", "POST"), ("POST", "/health", "GET")])
def test_wrong_method_is_405_with_allow(app: httpx.Client, method: str, path: str, allow: str) -> None:
    response = app.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_request_ids_are_echoed_or_made(app: httpx.Client) -> None:
    assert app.get("/nope", headers={"x-request-id": "mine-123"}).headers["x-request-id"] == "mine-123"
    made = {app.get("/nope").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3


def test_unknown_model_is_404_and_a_bad_name_400(app: httpx.Client) -> None:
    photo = {"content-type": "image/jpeg"}
    assert_error(app.post("/classify?model=absent", content=b"x", headers=photo), 404, "not_found")
    assert_error(app.post("/classify?model=..", content=b"x", headers=photo), 400, "invalid_parameter")


def test_v2_errors_are_the_protocols_shape(app: httpx.Client) -> None:
    response = app.get("/v2/models/absent")
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and "absent" in response.json()["error"]
    assert app.post("/v2/models/absent/infer", json={"inputs": []}).status_code == 404


def test_health_says_why_it_is_not_ready() -> None:
    with in_process(NoModels(not_ready="model lite0 is loading")) as client:
        body = assert_error(client.get("/health"), 503, "not_ready")
        assert "loading" in body["message"]
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200
    with in_process(NoModels()) as client:
        assert client.get("/health").status_code == 200


def test_cors_preflight_allowed_for_the_origin_and_refused_for_others() -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    with in_process(cors_origins=ORIGIN) as client:
        allowed = client.options("/classify", headers={"Origin": ORIGIN, **preflight})
        assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == ORIGIN
        refused = client.options("/classify", headers={"Origin": "https://evil.example.com", **preflight})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        error = client.get("/nope", headers={"Origin": ORIGIN})  # an error answer carries the header too
        assert error.status_code == 404 and error.headers["access-control-allow-origin"] == ORIGIN
    with in_process() as client:  # no --cors-origins: no header for anyone, and no preflight
        assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": ORIGIN}).headers
        assert client.options("/classify", headers={"Origin": ORIGIN, **preflight}).status_code == 405


def test_wildcard_origin_never_allows_credentials() -> None:
    with in_process(cors_origins="*") as client:
        preflight = {"Origin": "https://any.example", "Access-Control-Request-Method": "POST"}
        allowed = client.options("/classify", headers=preflight)
        assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in allowed.headers


def test_metrics_on_their_own_port_leave_the_main_port() -> None:
    with in_process(metrics_port=9100) as client:
        assert_error(client.get("/metrics"), 404, "not_found")


def test_the_openapi_document_lists_every_route_and_error_code(app: httpx.Client) -> None:
    response = app.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    routes, templates = route_table()
    assert set(document["paths"]) == set(routes) | set(templates)
    codes = document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert set(codes) == {error.code for error in all_errors()}
    assert {"400", "408", "413", "415", "503", "504"} <= set(document["paths"]["/classify"]["post"]["responses"])


def test_requests_are_counted_by_route_never_by_raw_path(app: httpx.Client) -> None:
    for path in ("/nope", "/nope/again", "/v2/models/absent"):
        app.get(path)
    text = app.get("/metrics").text
    assert 'route="other",status="404"' in text and "/nope" not in text
    assert 'route="/v2/models/{name}",status="404"' in text
