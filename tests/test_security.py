"""Who gets in, over real HTTP(S): the admin token on repository management, API keys on inference (and
their rotation under traffic), metrics on their own port, TLS with server and client certificates, CORS,
and model names from URLs that try to leave the repository."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    ADMIN,
    ADMIN_TOKEN,
    PHOTOS,
    TINY_LABELS,
    Server,
    Tiny,
    admin_token_file,
    metric_value,
    running_server,
    wait_for,
    write_model_folder,
)
from tests.helpers import assert_one_line_failure, infer_request, start
from torchrest.access import RECHECK_S

pytestmark = pytest.mark.slow(seconds=60)  # servers of their own, most of them

ORIGIN = "https://app.example.com"
KEYS = ("key-that-stays-valid-1", "key-rotated-out-22")


def write_keys(path: Path, *keys: str) -> None:
    """Replace the keys file atomically, as a Kubernetes Secret update does (a rename, never a partial file)."""
    staged = path.with_suffix(".new")
    staged.write_text("# API keys for torchrest\n\n" + "\n".join(keys) + "\n")
    os.replace(staged, path)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny inside the repository; a loadable model folder outside it that no URL may reach."""
    root = tmp_path_factory.mktemp("area")
    write_model_folder(root / "repository", "tiny", Tiny(0.0), TINY_LABELS)
    write_model_folder(root, "outside", Tiny(1.0), TINY_LABELS)
    return root / "repository"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "api-keys"
    write_keys(path, *KEYS)
    return path


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-process", "two-front-ends"])
def locked(
    repository: Path, keys_file: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """Everything on: admin token, API keys, metrics on their own port, CORS for one origin; in one
    process, and with two front-end processes (each reads the keys and the token itself)."""
    folder = tmp_path_factory.mktemp("locked")
    args = (
        *("--model-repository", str(repository), "--admin-token-file", str(admin_token_file(folder))),
        *("--api-keys-file", str(keys_file), "--metrics-port", "0", "--cors-origins", ORIGIN),
        *("--grpc-port", "0", "--workers", request.param),
    )
    with running_server(folder, *args) as server:
        server.metrics_url = f"http://127.0.0.1:{server.metrics_port}"  # type: ignore[attr-defined]
        server.grpc_address = f"127.0.0.1:{server.grpc_port}"  # type: ignore[attr-defined]
        yield server


def classify(url: str, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"image": PHOTOS["cat"]}, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_management_is_off_without_an_admin_token(server: Server) -> None:
    response = httpx.post(f"{server.url}/v2/repository/models/efficientnet_lite0/unload", timeout=10)
    assert response.status_code == 403
    assert "--admin-token-file" in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200  # nothing was unloaded


def test_management_needs_the_admin_token(locked: Server) -> None:
    url = f"{locked.url}/v2/repository/models/tiny/load"
    for headers in ({}, {"Authorization": "Bearer wrong-token-000000000"}, {"Authorization": ADMIN_TOKEN}):
        refused = httpx.post(url, headers=headers, timeout=30)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(url, headers=ADMIN, timeout=60).status_code == 200
    index = httpx.get(f"{locked.url}/v2/repository/index", timeout=10)  # reading stays open
    assert index.status_code == 200 and index.json()[0]["name"] == "tiny"
    assert httpx.get(f"{locked.url}/v2/models/tiny", timeout=10).status_code == 200


def test_admin_token_from_the_environment(repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHREST_ADMIN_TOKEN", ADMIN_TOKEN)
    with running_server(tmp_path, "--model-repository", str(repository)) as server:
        url = f"{server.url}/v2/repository/models/tiny/unload"
        assert httpx.post(url, timeout=30).status_code == 401
        assert httpx.post(url, headers=ADMIN, timeout=30).status_code == 200
    assert ADMIN_TOKEN not in server.log()


def test_inference_needs_an_api_key_and_probes_stay_open(locked: Server) -> None:
    assert classify(locked.url).status_code == 401
    assert classify(locked.url, {"Authorization": "Bearer not-a-key"}).status_code == 401
    assert classify(locked.url, {"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
    assert classify(locked.url, {"X-API-Key": KEYS[1]}).status_code == 200
    infer = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3], "data": [0] * 150528}]}
    assert httpx.post(f"{locked.url}/v2/models/tiny/infer", json=infer, timeout=30).status_code == 401
    answer = httpx.post(f"{locked.url}/v2/models/tiny/infer", json=infer, headers={"X-API-Key": KEYS[0]}, timeout=30)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"][0] in TINY_LABELS
    for path in ("/health", "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/tiny/ready", "/openapi.json"):
        assert httpx.get(f"{locked.url}{path}", timeout=10).status_code == 200, path


def test_grpc_inference_needs_an_api_key_too(locked: Server) -> None:
    request = infer_request("tiny", PHOTOS["cat"])
    with grpc.insecure_channel(locked.grpc_address) as channel:  # type: ignore[attr-defined]
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            call(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(call(request, metadata=[("x-api-key", KEYS[0])], timeout=30)) > 0
        assert len(call(request, metadata=[("authorization", f"Bearer {KEYS[1]}")], timeout=30)) > 0


def test_metrics_move_to_their_own_port_and_count_401s_by_route(locked: Server) -> None:
    classify(locked.url)  # one more 401
    assert httpx.get(f"{locked.url}/metrics", timeout=10).status_code == 404
    metrics_url = locked.metrics_url  # type: ignore[attr-defined]
    scraped = httpx.get(f"{metrics_url}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert metric_value(scraped.text, "torchrest_requests_total", route="/classify", status="401") >= 1
    assert httpx.post(f"{metrics_url}/classify", headers={"X-API-Key": KEYS[0]}, timeout=10).status_code == 404


def test_keys_rotate_under_traffic_without_failing_a_valid_key(locked: Server, keys_file: Path) -> None:
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    f"{locked.url}/classify", files={"image": PHOTOS["cat"]}, headers={"X-API-Key": KEYS[0]}
                )
                statuses[response.status_code] += 1

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: statuses[200] >= 3, what="traffic with the old key")
        new_key = "key-rotated-in-333"
        write_keys(keys_file, KEYS[0], new_key)
        deadline = time.monotonic() + 10
        while classify(locked.url, {"X-API-Key": new_key}).status_code != 200:
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.2)
        time.sleep(RECHECK_S + 0.2)  # every process re-reads the file within RECHECK_S (one front-end may be first)
        for _ in range(6):  # new connections: both front-ends, where there are two
            assert classify(locked.url, {"X-API-Key": KEYS[1]}).status_code == 401  # the old one is out
            assert classify(locked.url, {"X-API-Key": new_key}).status_code == 200
    finally:
        stop.set()
        sender.join()
        write_keys(keys_file, *KEYS)
    assert set(statuses) == {200} and statuses[200] > 5, statuses
    log = locked.log()
    assert not any(secret in log for secret in (*KEYS, new_key, ADMIN_TOKEN, "not-a-key", "wrong-token"))


def test_cors_preflight_allowed_and_refused(locked: Server, server: Server) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    allowed = httpx.options(f"{locked.url}/classify", headers=preflight, timeout=10)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "x-api-key" in allowed.headers["access-control-allow-headers"]
    refused = httpx.options(
        f"{locked.url}/classify", headers={**preflight, "Origin": "https://evil.example"}, timeout=10
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    wrong_method = httpx.options(
        f"{locked.url}/classify", headers={**preflight, "Access-Control-Request-Method": "DELETE"}, timeout=10
    )
    assert wrong_method.status_code == 403
    answered = classify(locked.url, {"Origin": ORIGIN, "X-API-Key": KEYS[0]})
    assert answered.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answered.headers["access-control-expose-headers"]
    # off by default: no CORS headers at all, and no preflight
    assert "access-control-allow-origin" not in classify(server.url, {"Origin": ORIGIN}).headers
    assert httpx.options(f"{server.url}/classify", headers=preflight, timeout=10).status_code == 405


# -- TLS -------------------------------------------------------------------------------------------------
def certificate(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def write_pem(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tls_with_client_certificates(repository: Path, tmp_path: Path, workers: str) -> None:
    authority = certificate("torchrest test CA", None, server=False)
    ca_path, _ = write_pem(tmp_path, "ca", *authority)
    server_cert, server_key = write_pem(tmp_path, "server", *certificate("localhost", authority, server=True))
    client_cert, client_key = write_pem(tmp_path, "client", *certificate("a client", authority, server=False))
    tls = ("--ssl-certfile", str(server_cert), "--ssl-keyfile", str(server_key), "--ssl-ca-certs", str(ca_path))
    trusted = ssl.create_default_context(cafile=str(ca_path))
    trusted.load_cert_chain(str(client_cert), str(client_key))

    def ready(server: Server) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"https://localhost:{server.port}/v2/health/ready", verify=trusted, timeout=2).is_success
        return False

    args = (*tls, "--grpc-port", "0", "--workers", workers, "--model-repository", str(repository))
    with running_server(tmp_path, *args, ready=ready) as server:
        url, port, grpc_port = f"https://localhost:{server.port}", server.port, server.grpc_port
        assert classify(url, verify=trusted).json()["prediction"]["label"] in TINY_LABELS
        no_client_cert = ssl.create_default_context(cafile=str(ca_path))
        with pytest.raises(httpx.HTTPError):
            classify(url, verify=no_client_cert)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port: refused, not answered
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert httpx.get(f"{url}/health", verify=trusted, timeout=10).status_code == 200  # still serving
        # gRPC on the same certificates: a client certificate is required there too
        ca = ca_path.read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, client_key.read_bytes(), client_cert.read_bytes())
        with grpc.secure_channel(f"localhost:{grpc_port}", with_cert) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.secure_channel(f"localhost:{grpc_port}", grpc.ssl_channel_credentials(ca)) as channel:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--api-keys-file", "/no/such/keys"), "API key file /no/such/keys is not readable"),
        (("--admin-token", "short"), "at least 16 characters"),
        (("--ssl-certfile", "/no/cert.pem", "--ssl-keyfile", "/no/key.pem"), "cannot use the TLS certificate"),
        (("--ssl-certfile", "/no/cert.pem"), "--ssl-certfile and --ssl-keyfile go together"),
    ],
)
def test_bad_security_settings_fail_the_start_in_one_line(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_failure(start(*args), fragment)


# -- names from URLs -------------------------------------------------------------------------------------
NASTY = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "../outside",
            "..%2Foutside",
            "%2e%2e",
            "/etc/passwd",
            "tiny/../../outside",
            "tiny\x00",
            "\x00",
            "outside",
            "~root",
            "C:\\Windows",
            "..\\outside",
            ".hidden",
            "-rf",
            "a" * 129,
            "a" * 5000,
        ]
    ),
    st.text(min_size=1, max_size=300),
    st.text(alphabet="./%\\\x00abc", min_size=1, max_size=40),
)
ROUTES = [
    ("POST", "/v2/repository/models/{}/load"),
    ("POST", "/v2/repository/models/{}/unload"),
    ("GET", "/v2/models/{}"),
    ("GET", "/v2/models/{}/ready"),
    ("GET", "/v2/models/{}/config"),
    ("GET", "/v2/models/{}/stats"),
    ("POST", "/v2/models/{}/infer"),
    ("GET", "/v2/models/tiny/versions/{}"),
    ("POST", "/classify?model={}"),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NASTY, route=st.sampled_from(ROUTES), raw=st.booleans())
def test_nasty_model_names_never_leave_the_repository(
    locked: Server, name: str, route: tuple[str, str], raw: bool
) -> None:
    """Percent-encoded (or, where the client allows, sent as they are), every name is refused: 400 for a
    name no model can have, 404 for a well-formed one that is not in the repository. The model folder
    beside the repository is never loaded."""
    method, template = route
    if name == "tiny" or (template.endswith("versions/{}") and name.isdigit()):
        return  # names that are allowed to work
    # sent as it is only where no client or router would read it as something else (a path separator,
    # a dot segment, an escape, a query delimiter); otherwise percent-encoded, as clients send names
    plain = name not in (".", "..") and all(c.isprintable() and c not in "/%&+=;#? " for c in name)
    segment = name if raw and plain else quote(name, safe="").replace(".", "%2E")  # no dot segments to normalise
    headers = {**ADMIN, "X-API-Key": KEYS[0]}
    try:
        response = httpx.request(method, locked.url + template.format(segment), headers=headers, timeout=30)
    except httpx.InvalidURL:
        return  # the client itself refuses to send it
    assert response.status_code in {400, 404}, (name, template, response.status_code, response.text)
    index = httpx.get(f"{locked.url}/v2/repository/index", timeout=10).json()
    assert [model["name"] for model in index] == ["tiny"]


def test_a_load_reads_only_inside_the_repository(locked: Server, repository: Path) -> None:
    """A folder whose config.json points its artifact outside, and a link to the folder beside the
    repository, both name a real, loadable model: neither is loaded."""
    escape = repository / "escape"
    escape.mkdir()
    outside = {"artifact": "../../outside/1/model.pt", "labels": "../../outside/labels.txt"}
    (escape / "config.json").write_text(json.dumps({"name": "escape", "backend": "torch", **outside}))
    (repository / "link").symlink_to(repository.parent / "outside", target_is_directory=True)
    try:
        refused = httpx.post(f"{locked.url}/v2/repository/models/escape/load", headers=ADMIN, timeout=30)
        assert refused.status_code == 400 and "outside the model folder" in refused.json()["error"]
        linked = httpx.post(f"{locked.url}/v2/repository/models/link/load", headers=ADMIN, timeout=30)
        assert linked.status_code == 404 and "outside the repository" in linked.json()["error"]
        index = {model["name"]: model["state"] for model in httpx.get(f"{locked.url}/v2/repository/index").json()}
        assert index.get("tiny") == "READY" and "outside" not in index and index.get("escape") != "READY"
    finally:
        (repository / "link").unlink()
        for path in escape.iterdir():
            path.unlink()
        escape.rmdir()
