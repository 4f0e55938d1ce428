"""What tracing and JSON logs cost: the near-free model (benchmark/ceiling.py's: the server's own work is
all there is to measure) at 100 connections, in one interleaved run.

    python benchmark/tracing.py --base REF [--rounds 3] [--duration 10] [--out benchmark/results/<date>]

Servers, each started afresh in every round, in turn:
    torchrest at REF (a commit from before tracing: the cost of it being there at all, switched off)
    this tree, tracing off
    this tree, --tracing with every request sampled, exported over OTLP/HTTP to a sink in this process
    this tree, --tracing with one request in ten sampled (parentbased_traceidratio 0.1: a production setting)
    this tree, --tracing (every request) and --log-format json (a JSON line per request as well)
wrk uploads cat.jpg, then a 16x16 JPEG (where the front-end's own work is nearly all of a request's);
req/s, p50/p99 and the server's CPU time per answered request (all its processes), medians over the
rounds. The sink reads and drops what it is sent; it shares the machine's cores with the server, so the
"on" rows pay for it too. Writes <out>/tracing.{json,md,png}; needs wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import bind
from ceiling import PHOTO, make_tiny_photo, model_for, near_free_model, worktree
from harness import (
    ROOT,
    cpu_per_request,
    grouped_bars,
    log,
    markdown_table,
    platform_name,
    save_figure,
    serving_process,
    torchrest_command,
    write_results,
    wrk,
)


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and drops it."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def measure(command: list[str], cwd: Path, seconds: float, tiny: Path, env: dict[str, str]) -> dict[str, Any]:
    command, port = bind(command)
    results = {}
    with serving_process(command, port, env=env, cwd=cwd) as (url, process):
        wrk(url, 8, 3.0, PHOTO)  # warm-up
        for label, photo in (("cat.jpg", PHOTO), ("16x16 JPEG", tiny)):
            with cpu_per_request(process.pid) as cpu:
                run = wrk(url, 100, seconds, photo)
                cpu["requests"] = run["requests"] - run["errors"]["status"]
            results[label] = {
                "req_per_s": run["req_per_s"],
                "p50_ms": run["latency_ms"]["p50"],
                "p99_ms": run["latency_ms"]["p99"],
                "errors": run["error_count"],
                "cpu_ms_per_request": cpu["cpu_ms_per_request"],
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a commit from before tracing (git ref)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="comma-separated servers to leave out (their names as printed)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/tracing.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="tracing-"))
    tiny = make_tiny_photo(folder)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    os.environ |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    quiet = ["--log-level", "warning"]
    rounds: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(worktree(args.base))
        model = str(near_free_model(folder))
        ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        plans: dict[str, tuple[list[str], Path, dict[str, str]]] = {
            f"torchrest ({args.base})": (torchrest_command(str(model_for(base, model, folder)), 0, quiet), base, {}),
            "tracing off": (torchrest_command(model, 0, quiet), ROOT, {}),
            "--tracing, every request": (torchrest_command(model, 0, [*quiet, "--tracing"]), ROOT, {}),
            "--tracing, 1 in 10": (torchrest_command(model, 0, [*quiet, "--tracing"]), ROOT, ratio),
            "--tracing --log-format json": (
                torchrest_command(model, 0, ["--tracing", "--log-format", "json"]),
                ROOT,
                {},
            ),
        }
        for name in filter(None, args.skip.split(",")):
            plans.pop(name)
        for round_number in range(1, args.rounds + 1):
            for name, (command, cwd, env) in plans.items():
                log(f"round {round_number}: {name}")
                measured = measure(command, cwd, args.duration, tiny, env)
                rounds.setdefault(name, []).append(measured)
                log("  " + ", ".join(f"{photo}: {r['req_per_s']:.0f} req/s" for photo, r in measured.items()))
    sink.shutdown()
    results = {
        "date": dt.date.today().isoformat(),
        "platform": platform_name(),
        "base": args.base,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "servers": {name: _medians(measured) for name, measured in rounds.items()},
    }
    write_results(args.out, "tracing", results, markdown, plot)
    return 0


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """For each photo, the round with the median req/s (its other figures with it)."""
    medians = {}
    for photo in rounds[0]:
        ranked = sorted((measured[photo] for measured in rounds), key=lambda run: run["req_per_s"])
        medians[photo] = {**ranked[len(ranked) // 2], "rounds_req_per_s": [r["req_per_s"] for r in ranked]}
    return medians


def markdown(results: dict[str, Any]) -> str:
    off = results["servers"]["tracing off"]
    rows = []
    for name, photos in results["servers"].items():
        for photo, run in photos.items():
            rows.append(
                [
                    name,
                    photo,
                    f"{run['req_per_s']:.0f}",
                    f"{run['req_per_s'] / off[photo]['req_per_s']:.2f}x",
                    f"{run['cpu_ms_per_request']:.2f}",
                    f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f}",
                    str(run["errors"]),
                ]
            )
    header = ["server", "photo", "req/s @100", "vs tracing off", "CPU ms/request", "p50 / p99 ms", "errors"]
    lines = [
        f"# What tracing costs (near-free model, 100 connections), this tree against {results['base']}",
        "",
        f"{results['platform']}, {results['date']}; medians of {results['rounds']} interleaved rounds of "
        f"{results['duration_s']:.0f} s. With --tracing every request is sampled and exported over OTLP/HTTP to a "
        "sink on the same cores.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    servers = list(results["servers"])
    photos = list(results["servers"][servers[0]])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in (
        (axes[0], "req_per_s", "req/s at 100 connections"),
        (axes[1], "cpu_ms_per_request", "server CPU ms per request"),
    ):
        series = {name: [results["servers"][name][photo][key] for photo in photos] for name in servers}
        grouped_bars(axis, photos, series, label)
    save_figure(figure, list(axes), f"What tracing costs, near-free model ({results['platform']})", path)


if __name__ == "__main__":
    sys.exit(main())
