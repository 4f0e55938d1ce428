"""Under overload the model keeps the cores: the event loop's thread runs at a lower priority than the
threads that decode and run the model (Linux gives each thread its own nice value)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import CAT_LABELS, PHOTOS, Server, running_server
from tests.helpers import thread_nice_values

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def test_the_event_loop_runs_below_the_model_threads(server: Server) -> None:
    assert httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).status_code == 200
    nice = thread_nice_values(server.process.pid)
    assert nice.pop(server.process.pid) == 10  # the main thread runs the event loop
    assert list(nice.values()).count(0) >= 3  # the load thread, the inference thread, the decode pool


def test_equal_priority_and_decoding_with_the_batch_on_request(tmp_path: Path) -> None:
    with running_server(tmp_path, "--event-loop-nice", "0", "--no-decode-ahead") as server:
        answer = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60)
        assert answer.json()["prediction"]["label"] in CAT_LABELS
        assert set(thread_nice_values(server.process.pid).values()) == {0}
