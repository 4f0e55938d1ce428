"""The server's own /openapi.json, and schemathesis (the real CLI from PyPI) against it: generated and
mutated requests for every operation (the /v2 ones too, bar load and unload), never a 5xx, every
response matching the document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import Server, running_server
from torchrest.api import route_table
from torchrest.api.openapi import document
from torchrest.errors import all_errors

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_openapi_document_lists_every_route_and_error_code(server: Server) -> None:
    response = httpx.get(f"{server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.0")
    assert {"/classify", "/health", "/metrics", "/", "/openapi.json"} <= set(document["paths"])
    assert {"/v2", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/stats"} <= set(document["paths"])
    codes = document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert set(codes) == {error.code for error in all_errors()}
    classify = document["paths"]["/classify"]["post"]
    assert {"400", "408", "413", "415", "503", "504"} <= set(classify["responses"])


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    routes, templates = route_table()
    served = {path: {method.lower() for method in methods} for path, methods in (routes | templates).items()}
    documented = {path: set(operations) for path, operations in document()["paths"].items()}
    assert served == documented


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(tmp_path: Path) -> None:
    """Every check schemathesis has, bar one: schema-valid random bytes are not a decodable image, so
    their 400 is right (positive_data_acceptance off, see tests/schemathesis.toml)."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    with running_server(tmp_path) as server:
        run = subprocess.run(
            [
                str(schemathesis),
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "40",
                "--seed",
                "20261125",
                "--request-timeout",
                "30",
                "--exclude-path-regex",
                "^/v2/repository/models/",  # load and unload: not for random traffic
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-6000:]
        assert "passed" in output
        assert " 500" not in server.log() and "Traceback" not in server.log()
