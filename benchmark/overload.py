"""Overload: wrk at 1000 connections for 60 s against the default model, far past its capacity.

What a trusted server must show, and this script measures:
  - goodput holds: 200s per second under overload against the capacity measured first, on the same
    server, at 8 connections;
  - every answer is 200, 503 or (rarely) 504 (wrk counts answers by status); 504s as a share of admitted;
  - 503s come back at once: a probe sends one request every 100 ms on its own connection during the
    load and times each answer by status (wrk's latencies mix 200s and 503s);
  - admitted requests finish within the deadline (the probe's 200s, against --timeout-ms);
  - memory stays bounded: the server's resident memory sampled every second, and its peak (VmHWM);
  - one second after the load stops, /health is ready and a classify of the cat works.
Writes benchmark/results/<date>/overload.{json,md,png}. Needs wrk.

    python benchmark/overload.py [--connections 1000] [--duration 60] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    ROOT,
    WRK_DIR,
    free_port,
    log,
    platform_name,
    serving_process,
    torchrest_command,
    write_results,
)
from openloop import BOUNDARY, multipart_request

TIMEOUT_MS = 10_000  # the server's default --timeout-ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--capacity-seconds", type=float, default=15.0, help="the 8-connection run first")
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("server_options", nargs="*", help="more `torchrest serve` options (after --)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/overload.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    started = dt.datetime.now()
    port = free_port()
    image = args.image.read_bytes()
    with serving_process(torchrest_command(args.model, port, args.server_options), port) as (url, process):
        log(f"capacity: wrk at 8 connections for {args.capacity_seconds:.0f} s")
        run_wrk(url, 8, 3, args.image)  # warm-up
        capacity = run_wrk(url, 8, args.capacity_seconds, args.image)
        log(f"capacity: {ok_per_s(capacity):.1f} answers (200) per second")
        rss = MemorySampler(process.pid)
        probe = Probe(port, image)
        rss.start()
        probe.start()
        log(f"wrk: {args.connections} connections for {args.duration:.0f} s against {args.model}")
        load = run_wrk(url, args.connections, args.duration, args.image)
        probe.stop()
        after = recovery(url, port, image)
        rss.stop()
        peak_kib = peak_rss_kib(process.pid)
    results = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python benchmark/overload.py " + " ".join(sys.argv[1:]),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "model": args.model,
        "connections": args.connections,
        "duration_s": args.duration,
        "capacity": capacity,
        "wrk": load,
        "goodput": goodput(capacity, load),
        "probe": probe.summary(),
        "rss_mib": {"samples": rss.samples_mib, "peak": peak_kib / 1024, "first": rss.samples_mib[0]},
        "recovery": after,
    }
    out = args.out or ROOT / "benchmark" / "results" / started.date().isoformat()
    write_results(out, "overload", results, markdown, plot)
    return 0


def run_wrk(url: str, connections: int, seconds: float, image: Path) -> dict[str, Any]:
    command = [
        *("wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "30s"),
        *("-s", str(WRK_DIR / "statuses.lua"), url),
    ]
    env = {**os.environ, "IMAGE": str(image), "WRK_LUA_DIR": str(WRK_DIR)}
    output = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 90).stdout
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("WRK_")}
    result = json.loads(lines["WRK_JSON"])
    result["statuses"] = json.loads(lines["WRK_STATUSES"])
    result["req_per_s"] = result["requests"] / result["duration_s"]
    return result


def ok_per_s(run: dict[str, Any]) -> float:
    return run["statuses"].get("200", 0) / run["duration_s"]


def goodput(capacity: dict[str, Any], load: dict[str, Any]) -> dict[str, float]:
    """200s per second under overload, as a share of the 8-connection capacity; 504s as a share of the
    requests admitted (answered 200 or 504)."""
    admitted = load["statuses"].get("200", 0) + load["statuses"].get("504", 0)
    return {
        "capacity_ok_per_s": ok_per_s(capacity),
        "overload_ok_per_s": ok_per_s(load),
        "share_of_capacity": ok_per_s(load) / max(ok_per_s(capacity), 1e-9),
        "expired_share_of_admitted": load["statuses"].get("504", 0) / max(admitted, 1),
    }


class Probe(threading.Thread):
    """One request every 100 ms, each on a fresh connection, timed and sorted by answer status."""

    def __init__(self, port: int, image: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.request = multipart_request("127.0.0.1", port, image)
        self.answers: list[tuple[int, float]] = []  # (status or 0 for a failure, latency ms)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.1):
            threading.Thread(target=self._one, daemon=True).start()

    def _one(self) -> None:
        started = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            head, body = self.request.split(b"\r\n\r\n", 1)
            connection.request(
                "POST",
                "/classify",
                body=body,
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
            status = connection.getresponse().status
            connection.close()
        except OSError:
            status = 0
        self.answers.append((status, (time.perf_counter() - started) * 1000))

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        time.sleep(1)  # let the last probes land

    def summary(self) -> dict[str, Any]:
        by_status: dict[str, Any] = {}
        for status in sorted({status for status, _ in self.answers}):
            ms = np.array([latency for s, latency in self.answers if s == status])
            by_status[str(status)] = {
                "count": len(ms),
                **{f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)},
                "max": float(ms.max()),
            }
        return {"sent": len(self.answers), "by_status": by_status}


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples_mib: list[float] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while True:
            self.samples_mib.append(status_kib(self.pid, "VmRSS") / 1024)
            if self._stopping.wait(1.0):
                return

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def status_kib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def peak_rss_kib(pid: int) -> float:
    return status_kib(pid, "VmHWM")


def recovery(url: str, port: int, image: bytes) -> dict[str, Any]:
    """One second after the load: is /health ready, and does a classify work (and how fast)?"""
    time.sleep(1.0)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health")
    health = connection.getresponse()
    health.read()
    head, body = multipart_request("127.0.0.1", port, image).split(b"\r\n\r\n", 1)
    started = time.perf_counter()
    connection.request(
        "POST", "/classify", body=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    answer = connection.getresponse()
    payload = json.loads(answer.read())
    latency_ms = (time.perf_counter() - started) * 1000
    connection.close()
    return {
        "health_status": health.status,
        "classify_status": answer.status,
        "classify_label": payload.get("prediction", {}).get("label"),
        "classify_ms": latency_ms,
    }


def markdown(results: dict[str, Any]) -> str:
    load, probe, rss, after = results["wrk"], results["probe"], results["rss_mib"], results["recovery"]
    good = results["goodput"]
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(load["statuses"].items()))
    errors = {kind: count for kind, count in load["errors"].items() if count and kind != "status"}
    lines = [
        f"# torchrest overload: {results['model']}, {results['connections']} connections, "
        f"{results['duration_s']:.0f} s ({results['date']})",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`.",
        "",
        f"- capacity first (8 connections, {results['capacity']['duration_s']:.0f} s): "
        f"{good['capacity_ok_per_s']:.1f} answers (200) per second.",
        f"- wrk: {load['requests']} answers ({load['req_per_s']:.1f}/s) by status: {statuses}; socket errors: "
        f"{errors or 'none'}.",
        f"- goodput under overload: {good['overload_ok_per_s']:.1f} 200s per second, "
        f"**{good['share_of_capacity']:.0%} of capacity**; 504s: {good['expired_share_of_admitted']:.2%} of admitted.",
        "- probe (one request every 100 ms on its own connection, during the load), latency by status:",
        "",
        "| status | count | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for status, row in probe["by_status"].items():
        lines.append(
            f"| {status if status != '0' else 'failed'} | {row['count']} | {row['p50']:.1f} | {row['p90']:.1f} "
            f"| {row['p99']:.1f} | {row['max']:.1f} |"
        )
    lines += [
        "",
        f"- deadline: admitted (200) answers against --timeout-ms {TIMEOUT_MS} ms: max "
        f"{probe['by_status'].get('200', {}).get('max', float('nan')):.0f} ms.",
        f"- memory: resident {rss['first']:.0f} MiB at the start, {max(rss['samples']):.0f} MiB at most while "
        f"sampled, peak (VmHWM) {rss['peak']:.0f} MiB.",
        f"- one second after the load: /health {after['health_status']}, classify {after['classify_status']} "
        f"({after['classify_label']}, {after['classify_ms']:.0f} ms).",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    samples = results["rss_mib"]["samples"]
    memory_axis.plot(range(len(samples)), samples)
    memory_axis.set(xlabel="seconds", ylabel="resident MiB", title="Server memory under overload", ylim=(0, None))
    rows = results["probe"]["by_status"]
    names = list(rows)
    for index, quantile in enumerate(("p50", "p99")):
        latency_axis.bar(
            [i + index * 0.4 for i in range(len(names))], [rows[n][quantile] for n in names], 0.4, label=quantile
        )
    latency_axis.set_xticks([i + 0.2 for i in range(len(names))], [n if n != "0" else "failed" for n in names])
    latency_axis.set(yscale="log", xlabel="answer status", ylabel="ms", title="Probe latency by status")
    latency_axis.legend()
    for axis in (memory_axis, latency_axis):
        axis.grid(alpha=0.3)
    figure.suptitle(f"{results['connections']} connections, {results['model']}, {results['machine']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
