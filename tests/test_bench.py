"""The benchmark's own parts against real servers: the open-loop generator and the naive baseline."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CAT_LABELS, PHOTOS, Server, free_port, wait_until_ready

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmark"
sys.path.insert(0, str(BENCHMARK))

from openloop import open_loop  # noqa: E402


def test_open_loop_sends_on_schedule_and_counts_answers(server: Server) -> None:
    result = open_loop(server.url, PHOTOS["cat"], rate=8.0, seconds=1.5)
    assert result["sent"] == 12 and result["answered"] == 12 and result["error_count"] == 0
    assert result["duration_s"] >= 1.3  # the last request leaves 1.375 s after the first
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]


def test_open_loop_counts_refused_requests_as_errors(tmp_path: Path) -> None:
    result = open_loop(f"http://127.0.0.1:{free_port()}", PHOTOS["cat"], rate=20.0, seconds=0.2)
    assert result["answered"] == 0 and result["error_count"] == result["sent"] == 4


@contextmanager
def naive_baseline(tmp_path: Path, *env: str) -> Iterator[Server]:
    """benchmark/baseline/naive_server.py under gunicorn, one worker; `env`: its NAME=value settings."""
    pytest.importorskip("gunicorn")
    port = free_port()
    log_path = tmp_path / "baseline.log"
    command = [
        *(sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "1"),
        *("--chdir", str(BENCHMARK / "baseline"), "--env", f"PYTHONPATH={BENCHMARK.parent}"),
        *(part for setting in env for part in ("--env", setting)),
        *("-b", f"127.0.0.1:{port}", "naive_server:app"),
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    baseline = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_ready(baseline)
        yield baseline
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.slow
def test_naive_baseline_serves_the_same_answer(tmp_path: Path, server: Server) -> None:
    with naive_baseline(tmp_path, "BASELINE_MODEL=efficientnet_lite0") as baseline:
        naive = httpx.post(f"{baseline.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).json()
    ours = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).json()
    assert naive["status"] == "success" and naive["prediction"]["label"] in CAT_LABELS
    assert naive["prediction"]["label"] == ours["prediction"]["label"]
    assert naive["prediction"]["confidence"] == pytest.approx(ours["prediction"]["confidence"], abs=1e-3)


@pytest.mark.slow
def test_naive_baseline_serves_a_repository_model(tmp_path: Path, lite0_repository: Path) -> None:
    """BASELINE_REPOSITORY: the baseline runs the model file a repository holds (the peers' second row)."""
    repository = lite0_repository
    with naive_baseline(tmp_path, "BASELINE_MODEL=lite0", f"BASELINE_REPOSITORY={repository}") as baseline:

        def classify(_: int) -> dict[str, Any]:
            return httpx.post(f"{baseline.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).json()

        with ThreadPoolExecutor(4) as pool:  # at once: the runtime is called under a lock, one at a time
            answers = list(pool.map(classify, range(4)))
    assert all(a["status"] == "success" and a["prediction"]["label"] in CAT_LABELS for a in answers)
