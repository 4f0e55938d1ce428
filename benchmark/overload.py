"""Overload: a closed-loop flood (wrk at 1000 connections, each retrying at once) far past capacity, by model
and process layout, this tree beside a base commit, in one interleaved run.

For every (model, --workers, tree), in turn (each server started fresh):
  - capacity first: 200s per second at 8 connections;
  - the flood: 200s per second (goodput) against that capacity, second by second; every answer by status
    (504s as a share of the 200s); socket errors;
  - a probe during the flood: one request every 100 ms on its own connection, timed by answer status;
  - resident memory of the whole server (every process), sampled every second, and its peak;
  - right after the flood: /health, and a fresh /classify of the cat, each timed (both within 2 s?).

Models: `default` (`torchrest serve` as it comes: EfficientNet-Lite0 as OpenVINO fp32), `eager` (the same in
torch eager: takes the GIL back after each op), `near-free` (benchmark/ceiling.py's: the server's own work is
all there is). Writes <out>/overload.{json,md,png}: one table, and goodput over time. Needs wrk.

    python benchmark/overload.py [--base REF] [--unpaced] [--models default,eager,near-free] [--workers 1,2]
                                 [--connections 1000] [--duration 30] [--out DIR] [-- more serve options]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench import bind
from ceiling import model_for, near_free_model, worktree
from harness import ROOT, WRK_DIR, log, markdown_table, platform_name, serving_process, write_results
from openloop import BOUNDARY, multipart_request

TIMEOUT_MS = 10_000  # the server's default --timeout-ms
CAT = ROOT / "tests" / "data" / "cat.jpg"
MODELS = ("default", "eager", "near-free")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="", help="a commit to measure beside this tree (a git worktree)")
    parser.add_argument(
        "--unpaced", action="store_true", help="this tree with --refusal-budget 0 too (every 503 at once)"
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    parser.add_argument("server_options", nargs="*", help="more `torchrest serve` options (after --)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/overload.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    layouts = [int(count) for count in args.workers.split(",")]
    started = dt.datetime.now()
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overload-")))
        trees = {"this tree": ROOT}
        options: dict[str, list[str]] = {"this tree": []}
        if args.unpaced:
            trees["unpaced"], options["unpaced"] = ROOT, ["--refusal-budget", "0"]
        if args.base:
            trees[args.base], options[args.base] = stack.enter_context(worktree(args.base)), []
        near_free = near_free_model(folder)
        plan = [(m, w, t) for m in models for w in layouts for t in trees]
        for number, (model, workers, tree_name) in enumerate(plan, 1):
            log(f"{number}/{len(plan)}: {model}, --workers {workers}, {tree_name}")
            tree = trees[tree_name]
            more = [*options[tree_name], *args.server_options]
            command = serve_command(model, workers, tree, near_free, folder, more)
            run = flood(command, tree, args.connections, args.duration, args.capacity_seconds)
            run |= {"model": model, "workers": workers, "tree": tree_name}
            log(
                f"  capacity {run['capacity_ok_per_s']:.1f}/s; flood {run['flood_ok_per_s']:.1f}/s "
                f"({run['share_of_capacity']:.0%}); 504s {run['expired_share']:.2%} of 200s; recovery "
                f"health {run['recovery']['health_ms']:.0f} ms, classify {run['recovery']['classify_ms']:.0f} ms"
            )
            runs.append(run)
    results = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python benchmark/overload.py " + " ".join(sys.argv[1:]),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "connections": args.connections,
        "duration_s": args.duration,
        "runs": runs,
    }
    write_results(args.out, "overload", results, markdown, plot)
    return 0


def serve_command(model: str, workers: int, tree: Path, near_free: Path, folder: Path, more: list[str]) -> list[str]:
    command = [sys.executable, "-m", "torchrest", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--log-level", "warning", "--workers", str(workers)]
    if model == "eager":
        command += ["--backend", "eager"]
    elif model == "near-free":
        command += ["--model", str(model_for(tree, near_free, folder))]
    return [*command, *more]


def flood(command: list[str], tree: Path, connections: int, seconds: float, capacity_s: float) -> dict[str, Any]:
    command, port = bind(command)
    image = CAT.read_bytes()
    with serving_process(command, port, cwd=tree) as (url, process):
        run_wrk(url, 8, 3)  # warm-up
        capacity = run_wrk(url, 8, capacity_s)
        memory = MemorySampler(process.pid)
        probe = Probe(port, image)
        memory.start()
        probe.start()
        load = run_wrk(url, connections, seconds)
        probe.stop()
        after = recovery(port, image)
        memory.stop()
        peak = sum(status_kib(pid, "VmHWM") for pid in tree_pids(process.pid)) / 1024
    ok = ok_per_s(load)
    return {
        "capacity_ok_per_s": ok_per_s(capacity),
        "flood_ok_per_s": ok,
        "share_of_capacity": ok / max(ok_per_s(capacity), 1e-9),
        "statuses": load["statuses"],
        "expired_share": load["statuses"].get("504", 0) / max(load["statuses"].get("200", 0), 1),
        "socket_errors": {kind: n for kind, n in load["errors"].items() if n and kind != "status"},
        "series": load["series"],
        "probe": probe.summary(),
        "rss_mib": {"first": memory.samples_mib[0], "max": max(memory.samples_mib), "peak": peak},
        "recovery": after,
    }


def run_wrk(url: str, connections: int, seconds: float) -> dict[str, Any]:
    command = [
        *("wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "30s"),
        *("-s", str(WRK_DIR / "series.lua"), url),
    ]
    env = {**os.environ, "IMAGE": str(CAT), "WRK_LUA_DIR": str(WRK_DIR)}
    output = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 90).stdout
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("WRK_")}
    result = json.loads(lines["WRK_JSON"])
    result["statuses"] = json.loads(lines["WRK_STATUSES"])
    series = json.loads(lines["WRK_SERIES"])
    first = min((int(second) for second in series), default=0)
    result["series"] = [series.get(str(first + offset), 0) for offset in range(round(seconds))]
    return result


def ok_per_s(run: dict[str, Any]) -> float:
    return float(run["statuses"].get("200", 0) / run["duration_s"])


class Probe(threading.Thread):
    """One request every 100 ms, each on a fresh connection, timed and sorted by answer status."""

    def __init__(self, port: int, image: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.body = multipart_request("127.0.0.1", port, image).split(b"\r\n\r\n", 1)[1]
        self.answers: list[tuple[int, float]] = []  # (status or 0 for a failure, latency ms)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.1):
            threading.Thread(target=self._one, daemon=True).start()

    def _one(self) -> None:
        started = time.perf_counter()
        status, _ = post(self.port, "/classify", self.body)
        self.answers.append((status, (time.perf_counter() - started) * 1000))

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        time.sleep(1)  # let the last probes land

    def summary(self) -> dict[str, Any]:
        by_status: dict[str, Any] = {}
        for status in sorted({status for status, _ in self.answers}):
            ms = np.array([latency for s, latency in self.answers if s == status])
            by_status[str(status)] = {"count": len(ms), "p50": float(np.percentile(ms, 50)), "max": float(ms.max())}
        return {"sent": len(self.answers), "by_status": by_status}


def post(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, or 0 when the connection failed; the body)."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        if body is None:
            connection.request("GET", path)
        else:
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        payload = answer.read()
        connection.close()
        return answer.status, payload
    except OSError:
        return 0, b""


def recovery(port: int, image: bytes) -> dict[str, Any]:
    """Right after the flood (its connections closed): /health, then a fresh classify, each timed."""
    started = time.perf_counter()
    health, _ = post(port, "/health")
    health_ms = (time.perf_counter() - started) * 1000
    body = multipart_request("127.0.0.1", port, image).split(b"\r\n\r\n", 1)[1]
    started = time.perf_counter()
    status, payload = post(port, "/classify", body)
    classify_ms = (time.perf_counter() - started) * 1000
    label = json.loads(payload).get("prediction", {}).get("label") if status == 200 else None
    return {"health": health, "health_ms": health_ms, "classify": status, "classify_ms": classify_ms, "label": label}


class MemorySampler(threading.Thread):
    """Resident memory of a process and every process below it, every second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples_mib: list[float] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while True:
            self.samples_mib.append(sum(status_kib(pid, "VmRSS") for pid in tree_pids(self.pid)) / 1024)
            if self._stopping.wait(1.0):
                return

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def tree_pids(pid: int) -> list[int]:
    found, waiting = [], [pid]
    while waiting:
        current = waiting.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                waiting += [int(child) for child in (task / "children").read_text().split()]
    return found


def status_kib(pid: int, field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return 0.0


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for run in results["runs"]:
        statuses = run["statuses"]
        probe_503 = run["probe"]["by_status"].get("503", {})
        after = run["recovery"]
        rows.append(
            [
                run["model"],
                str(run["workers"]),
                run["tree"],
                f"{run['capacity_ok_per_s']:.1f}",
                f"{run['flood_ok_per_s']:.1f}",
                f"**{run['share_of_capacity']:.0%}**",
                f"{statuses.get('503', 0) / results['duration_s']:.0f}",
                f"{run['expired_share']:.2%}",
                ", ".join(f"{k} {v}" for k, v in run["socket_errors"].items()) or "none",
                f"{probe_503.get('p50', float('nan')):.0f}",
                f"{run['rss_mib']['first']:.0f} / {run['rss_mib']['peak']:.0f}",
                f"{after['health']} in {after['health_ms']:.0f} ms; "
                f"{after['classify']} in {after['classify_ms']:.0f} ms",
            ]
        )
    header = [
        "model",
        "--workers",
        "tree",
        "capacity 200/s",
        "flood 200/s",
        "share",
        "503/s",
        "504 / 200",
        "socket errors",
        "probe 503 p50 ms",
        "RSS MiB start / peak",
        "right after: /health; /classify",
    ]
    return "\n".join(
        [
            f"# Overload: {results['connections']} connections retrying at once, {results['duration_s']:.0f} s",
            "",
            f"{results['machine']}; {results['date']}; `{results['command']}`. Capacity: 200s per second at 8 "
            "connections on the same server just before; share: the flood's 200s per second against it.",
            "",
            *markdown_table(header, rows),
            "",
        ]
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(run["model"] for run in results["runs"]))
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        for index, run in enumerate(r for r in results["runs"] if r["model"] == model):
            capacity = max(run["capacity_ok_per_s"], 1e-9)
            share = [count / capacity for count in run["series"]]
            style = "-" if run["tree"] == "this tree" else ":"
            axis.plot(
                range(len(share)), share, style, color=f"C{index}", label=f"--workers {run['workers']}, {run['tree']}"
            )
        axis.axhline(0.8, color="grey", linewidth=0.8, linestyle="--")
        axis.set(title=model, xlabel="seconds into the flood", ylabel="200s per second / capacity", ylim=(0, 1.3))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"Goodput under {results['connections']} connections retrying at once ({results['machine']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
