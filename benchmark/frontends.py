"""The engine's front-end sweep: one model served with 1, 2, 4, ... front-end processes (--workers), wrk
uploading a photo at each connection count, rounds interleaved; req/s, latency, the server's CPU time per
answered request (all its processes), and how evenly the front-ends shared the work (SO_REUSEPORT).

    python benchmark/frontends.py [--model near-free|resnet18|NAME] [--device cpu|cuda] [--workers 1,2]
                                  [--connections 100] [--photo tests/data/cat.jpg] [--rounds 2]
                                  [--duration 8] [--extra "--max-batch-size 64"]

`near-free` is benchmark/ceiling.py's model (microseconds per image): what the server's own work per
request allows. Writes benchmark/results/<date>/frontends-<model>-<device>.{json,md,png}. Needs wrk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from bench import bind
from ceiling import PHOTO, near_free_model
from harness import ROOT, cpu_per_request, log, platform_name, serving_process, torchrest_command, write_results, wrk


def sweep_point(model: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One server with `workers` front-ends; wrk at each connection count."""
    extra = ["--device", args.device, "--workers", str(workers), *shlex.split(args.extra)]
    command, port = bind(torchrest_command(model, 0, extra))
    runs = []
    with serving_process(command, port) as (url, process):
        wrk(url, max(args.connections), 3.0, args.photo)  # warm-up: every front-end, the batch sizes
        for connections in args.connections:
            with cpu_per_request(process.pid) as cpu:
                result = wrk(url, connections, args.duration, args.photo)
                cpu["requests"] = result["requests"] - result["errors"]["status"]
            result |= cpu | {"balance": balance(cpu["cpu_ms_by_process"])}
            runs.append(result)
            log(
                f"  --workers {workers:<2} {connections:>4} conn: {result['req_per_s']:8.1f} req/s  "
                f"p50 {result['latency_ms']['p50']:6.1f} ms  p99 {result['latency_ms']['p99']:7.1f} ms  "
                f"CPU {result['cpu_ms_per_request']:.2f} ms/req  front-end share {result['balance']}  "
                f"errors {result['error_count']}"
            )
    return {"workers": workers, "runs": runs}


def balance(cpu_by_process: dict[str, float]) -> str:
    """The front-ends' CPU as shares of their total, e.g. '51/49' (or '-' with one process)."""
    frontends = [ms for name, ms in sorted(cpu_by_process.items()) if name.startswith("torchrest-fe")]
    total = sum(frontends)
    return "/".join(f"{100 * ms / total:.0f}" for ms in frontends) if len(frontends) > 1 and total else "-"


def medians(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per connection count: the round with the median req/s, every round's req/s beside it."""
    runs = []
    for index in range(len(points[0]["runs"])):
        rounds = sorted((point["runs"][index] for point in points), key=lambda run: run["req_per_s"])
        runs.append({**rounds[len(rounds) // 2], "rounds_req_per_s": [run["req_per_s"] for run in rounds]})
    return {"workers": points[0]["workers"], "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Front-end sweep: {results['model']} on {results['device']}, {results['date']}",
        "",
        f"Machine: {results['machine']}. Photo: {results['photo']} (multipart). Command: `{results['command']}`",
        "",
        "| front-ends | connections | req/s (median) | each round | vs 1 | p50 ms | p99 ms | CPU ms/req "
        "| front-end shares % | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    first = results["points"][0]["runs"]
    for point in results["points"]:
        for run, reference in zip(point["runs"], first, strict=True):
            rounds = ", ".join(f"{rate:.0f}" for rate in run["rounds_req_per_s"])
            lines.append(
                f"| {point['workers']} | {run['connections']} | {run['req_per_s']:.1f} | {rounds} "
                f"| {run['req_per_s'] / reference['req_per_s']:.2f}x | {run['latency_ms']['p50']:.1f} "
                f"| {run['latency_ms']['p99']:.1f} | {run['cpu_ms_per_request']:.2f} | {run['balance']} "
                f"| {run['error_count']} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    workers = [point["workers"] for point in results["points"]]
    for index, connections in enumerate(results["connections"]):
        rates = [point["runs"][index]["req_per_s"] for point in results["points"]]
        cpu = [point["runs"][index]["cpu_ms_per_request"] for point in results["points"]]
        left.plot(workers, rates, "o-", label=f"{connections} connections")
        right.plot(workers, cpu, "o-", label=f"{connections} connections")
    left.set(xlabel="front-end processes (--workers)", ylabel="req/s", title="Requests/s")
    right.set(xlabel="front-end processes (--workers)", ylabel="CPU ms per request", title="Server CPU per request")
    for axis in (left, right):
        axis.set_xticks(workers)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"{results['model']} on {results['device']}, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="near-free", help="near-free, or any model `torchrest serve` takes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", default="1,2", help="front-end counts, comma-separated")
    parser.add_argument("--connections", default="100", help="wrk connection counts, comma-separated")
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--rounds", type=int, default=2, help="every front-end count once per round; medians")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--extra", default="", help="more `torchrest serve` flags for every server")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.connections = [int(count) for count in args.connections.split(",")]
    counts = [int(count) for count in args.workers.split(",")]
    model = (
        str(near_free_model(Path(tempfile.mkdtemp(prefix="frontends-")))) if args.model == "near-free" else args.model
    )
    log(
        f"{args.model} on {args.device}: --workers {args.workers}, {args.rounds} rounds, connections {args.connections}"
    )
    measured: dict[int, list[dict[str, Any]]] = {count: [] for count in counts}
    for round_number in range(1, args.rounds + 1):
        log(f"round {round_number} of {args.rounds}")
        for count in counts:
            measured[count].append(sweep_point(model, count, args))
    points = [medians(measured[count]) for count in counts]
    best = max(points, key=lambda point: statistics.fmean(run["req_per_s"] for run in point["runs"]))
    log(f"most req/s with --workers {best['workers']}")
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "model": args.model,
        "device": args.device,
        "photo": str(args.photo.relative_to(ROOT) if args.photo.is_relative_to(ROOT) else args.photo),
        "connections": args.connections,
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}"
        + (f", {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""),
        "command": "python " + " ".join(sys.argv),
        "points": points,
    }
    out = args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat()
    write_results(out, f"frontends-{Path(args.model).stem}-{args.device.replace(':', '')}", results, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
