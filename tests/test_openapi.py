"""The server's own /openapi.json, and schemathesis (the real CLI from PyPI) against it: generated and
mutated requests for every operation (the /v2 ones too, bar load and unload), never a 5xx, every
response matching the document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Server
from torchrest.api import route_table
from torchrest.api.openapi import document

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    routes, templates = route_table()
    served = {path: {method.lower() for method in methods} for path, methods in (routes | templates).items()}
    documented = {path: set(operations) for path, operations in document()["paths"].items()}
    assert served == documented


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server: Server) -> None:
    """Every check schemathesis has, bar one: schema-valid random bytes are not a decodable image, so
    their 400 is right (positive_data_acceptance off, see tests/schemathesis.toml)."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    # the session's server of the default model: schemathesis changes nothing there (no load or unload)
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
