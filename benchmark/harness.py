"""What every benchmark here shares: the offline limit, server processes that always stop, wrk runs.

Servers run in their own process group: leaving a `with serving(...)` block, by success, error or
Ctrl-C, kills the whole group (gunicorn's workers included).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchrest.config import ServerConfig  # noqa: E402
from torchrest.engine.build import configure_torch  # noqa: E402
from torchrest.models.registry import load_model  # noqa: E402
from torchrest.models.repository import load_from_repository  # noqa: E402
from torchrest.preprocess import decode_image  # noqa: E402

WRK_DIR = ROOT / "benchmark" / "wrk"
READY_TIMEOUT_S = 300


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def offline(
    model_name: str,
    image: bytes,
    batch_sizes: list[int],
    seconds: float,
    repository: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Decode + pre-process + model in a tight loop: what one process does with no HTTP and no queue."""
    config = ServerConfig(model=model_name, model_repository=repository)
    configure_torch(config)
    model = load_from_repository(repository, model_name) if repository else load_model(config)
    backend = model.open_backend(device, config.threads_per_instance)
    backend.prepare_thread()
    spec, limit = model.input_spec, config.max_image_pixels
    buffer = backend.input_buffer(max(batch_sizes), spec.size)
    per_batch: dict[int, float] = {}
    latencies_ms: list[float] = []
    for size in batch_sizes:
        for row in range(size):  # warm-up
            buffer[row] = decode_image(image, spec, limit)
        backend.run(buffer[:size])
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or images < 3 * size:
            batch_started = time.perf_counter()
            for row in range(size):
                buffer[row] = decode_image(image, spec, limit)
            backend.run(buffer[:size])
            images += size
            if size == 1:
                latencies_ms.append((time.perf_counter() - batch_started) * 1000)
        per_batch[size] = images / (time.perf_counter() - started)
        log(f"  offline {model_name} ({backend.name}) batch {size:>2}: {per_batch[size]:7.1f} img/s")
    best = max(per_batch, key=lambda size: per_batch[size])
    return {
        "backend": backend.name,
        "img_per_s_by_batch": per_batch,
        "best_batch_size": best,
        "best_img_per_s": per_batch[best],
        "single_image_latency_ms_p50": float(np.median(latencies_ms)) if latencies_ms else None,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrest_command(model_name: str, port: int, extra: list[str]) -> list[str]:
    return [
        *(sys.executable, "-m", "torchrest", "serve", "--model", model_name),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra),
    ]


@contextmanager
def serving(
    command: list[str], port: int, env: dict[str, str] | None = None, cwd: Path | None = None, health: str = "/health"
) -> Iterator[str]:
    """Start `command` (a server listening on `port`), wait for `health` to answer 200, yield its URL;
    always stop it. `cwd` (default: this tree) is where it runs: another checkout serves its own code."""
    with serving_process(command, port, env, cwd, health) as (url, _):
        yield url


@contextmanager
def serving_process(
    command: list[str],
    port: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    health: str = "/health",
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `serving`, yielding the process too (its pid, for memory readings). The server's log goes to a
    file: a pipe nobody reads fills up under load and then blocks the server on its next log line."""
    log_file = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        command,
        cwd=cwd or ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"

    def exited() -> str | None:
        return f"server exited: {Path(log_file.name).read_text()[-3000:]}" if process.poll() is not None else None

    try:
        wait_until_ready(f"{url}{health}", exited)
        yield url, process
    finally:
        stop(process)
        log_file.close()
        os.unlink(log_file.name)


def wait_until_ready(url: str, failed: Callable[[], str | None], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; RuntimeError with what `failed` says once it says anything."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (reason := failed()) is not None:
            raise RuntimeError(reason)
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    with _suppress_lookup():
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with _suppress_lookup():
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:  # already gone
        pass


def cpu_seconds_by_process(pid: int) -> dict[str, float]:
    """CPU time (user + system) so far of `pid` and every process below it, by process name and pid
    (`torchrest-fe0 (1234)`): a server of several processes is measured whole, and the balance between its
    front-ends shows."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    waiting = [pid]
    while waiting:
        current = waiting.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            name = Path(f"/proc/{current}/comm").read_text().strip()
            for task in Path(f"/proc/{current}/task").iterdir():
                waiting += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended between two reads
        found[f"{name} ({current})"] = (int(fields[11]) + int(fields[12])) / ticks
    return found


@contextmanager
def cpu_per_request(pid: int) -> Iterator[dict[str, Any]]:
    """`with cpu_per_request(server_pid) as cpu: result = wrk(...); cpu["requests"] = result["requests"]`:
    afterwards `cpu` holds the server's CPU ms per answered request, in all and by process."""
    before = cpu_seconds_by_process(pid)
    cpu: dict[str, Any] = {}
    yield cpu
    after = cpu_seconds_by_process(pid)
    requests = max(1, cpu.get("requests", 0))
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    cpu["cpu_ms_per_request"] = sum(spent.values()) * 1000 / requests
    cpu["cpu_ms_by_process"] = {name: seconds * 1000 / requests for name, seconds in spent.items() if seconds > 0}


def wrk(
    url: str,
    connections: int,
    seconds: float,
    image: Path,
    script: str = "upload.lua",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One closed-loop wrk run, bounded in time; throughput, latency percentiles and every error kind.
    `env` reaches the wrk script (IMAGES_PER_REQUEST, MODEL for v2.lua)."""
    command = [
        *("wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"),
        *("-s", str(WRK_DIR / script), url),
    ]
    variables = {**os.environ, "IMAGE": str(image), "WRK_LUA_DIR": str(WRK_DIR), **(env or {})}
    output = subprocess.run(command, capture_output=True, text=True, env=variables, timeout=seconds + 60).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    result = json.loads(line.removeprefix("WRK_JSON "))
    statuses = next((line for line in output.splitlines() if line.startswith("WRK_STATUSES ")), None)
    if statuses is not None:  # statuses.lua: answers by HTTP status
        result["statuses"] = json.loads(statuses.removeprefix("WRK_STATUSES "))
    result["req_per_s"] = result["requests"] / result["duration_s"]
    result["connections"] = connections
    result["error_count"] = sum(result["errors"].values())
    return result


def idle_latency_ms(url: str, image: bytes, request: bytes | None = None) -> float:
    """Latency of one request to a server with nothing else to do: the fastest of three in a row.
    `request`: the whole HTTP request (default: `image` uploaded to /classify)."""
    return min(_probe_ms(url, image, request) for _ in range(3))


def settle(url: str, image: bytes, idle_ms: float, limit_s: float = 60.0, request: bytes | None = None) -> float:
    """Wait until requests a finished run left behind are served: a client that goes away at the end
    of a run leaves its request queued, and the next run would otherwise pay for it. Returns seconds
    waited (bounded by `limit_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if _probe_ms(url, image, request) <= 2 * idle_ms + 20:
            break
    return time.monotonic() - started


def _probe_ms(url: str, image: bytes, request: bytes | None = None) -> float:
    from openloop import open_loop

    result = open_loop(url, image, rate=1.0, seconds=1.0, timeout_s=60.0, request=request)
    return result["latency_ms"]["p50"] if result["answered"] else float("inf")


def write_results(
    out: Path,
    stem: str,
    results: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """<out>/<stem>.json, .md and .png; the table is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.md").write_text(markdown(results))
    plot(results, out / f"{stem}.png")
    print((out / f"{stem}.md").read_text())
    log(f"wrote {out}/{stem}.json, {stem}.md, {stem}.png")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def latency_bars(axis: Any, runs_by_server: dict[str, list[dict[str, Any]]], points: list[str]) -> None:
    """Grouped bars on a log axis: for each point (a run of each server, in order) every server's p50
    (solid) with its p99 behind it (light), one colour per server."""
    width = 0.8 / max(1, len(runs_by_server))
    for index, (name, runs) in enumerate(runs_by_server.items()):
        for quantile, alpha in (("p99", 0.35), ("p50", 1.0)):
            axis.bar(
                [i + index * width for i in range(len(points))],
                [run["latency_ms"][quantile] for run in runs],
                width=width,
                alpha=alpha,
                color=f"C{index}",
                label=name if quantile == "p50" else None,
            )
    axis.set_xticks([i + width * (len(runs_by_server) - 1) / 2 for i in range(len(points))], points)
    axis.set(yscale="log", ylabel="latency ms", title="Latency: p50 (solid) and p99 (light)")


def grouped_bars(axis: Any, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """One bar per series in each group (the servers side by side for each model or photo), one colour
    per series."""
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        axis.bar([i + index * width for i in range(len(groups))], values, width=width, color=f"C{index}", label=name)
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], groups)
    axis.set(ylabel=ylabel)


def side_by_side(count: int) -> tuple[Any, list[Any]]:
    """A figure of `count` panels in a row (at least one), 6 x 4 inches each, and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, max(1, count), figsize=(6 * max(1, count), 4))
    return figure, [axes] if count <= 1 else list(axes)


def connection_bars(axis: Any, servers: dict[str, Any]) -> None:
    """Each server's req/s at 1 and at 100 connections (wrk's figures by connection count), side by side."""
    series = {server: [points[c]["req_per_s"] for c in ("1", "100")] for server, points in servers.items()}
    grouped_bars(axis, ["1 connection", "100 connections"], series, "req/s")


def save_figure(figure: Any, axes: list[Any], title: str, path: Path) -> None:
    """Grid and legend on every axis, the title, then the PNG at `path`; the figure is closed."""
    import matplotlib.pyplot as plt

    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def platform_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
