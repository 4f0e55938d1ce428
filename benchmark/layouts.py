"""Which process and instance layout should a model be served with by default on this machine? Each layout
side by side, in interleaved rounds, the same model:

    --workers 1 or 2 (one process, or two front-ends and an engine) x --instances 1 or one per core
    p50 and p99 at one connection (closed loop), req/s at 100 connections, and the share of capacity kept
    under a flood (1000 connections retrying at once; capacity: the same server's 200s per second at 8)

    python benchmark/layouts.py [--model default] [--rounds 2] [--duration 15] [--flood 20] [--out DIR]
                                [-- more serve options]

`--model default` is `torchrest serve` as it comes; any other value is passed as --model (a built-in name
or a model file, with the serve options after --). Medians over the rounds. Writes <out>/layouts-<model>.
{json,md,png}. Needs wrk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import bind
from harness import ROOT, grouped_bars, log, markdown_table, platform_name, save_figure, serving, write_results, wrk
from overload import flood

CAT = ROOT / "tests" / "data" / "cat.jpg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--image", type=Path, default=CAT)
    parser.add_argument("--route", default="/classify")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--flood", type=float, default=20.0, help="seconds of the 1000-connection flood (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    parser.add_argument("server_options", nargs="*")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    layouts = [(workers, instances) for workers in (1, 2) for instances in sorted({1, cores})]
    runs: dict[str, list[dict[str, Any]]] = {label(w, i): [] for w, i in layouts}
    for number in range(args.rounds):
        order = layouts if number % 2 == 0 else list(reversed(layouts))
        for workers, instances in order:
            name = label(workers, instances)
            log(f"round {number + 1}/{args.rounds}: {name}")
            runs[name].append(measure(args, workers, instances))
    results = {
        "machine": f"{cores} cores, {platform_name()}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmark/layouts.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "layouts": {name: summary(rounds) for name, rounds in runs.items()},
    }
    stem = f"layouts-{Path(args.model).stem}"
    write_results(args.out, stem, results, markdown, plot)
    return 0


def label(workers: int, instances: int) -> str:
    return f"--workers {workers}, --instances {instances}"


def command(args: argparse.Namespace, workers: int, instances: int) -> list[str]:
    base = [sys.executable, "-m", "torchrest", "serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
    base += ["--workers", str(workers), "--instances", str(instances)]
    if args.model != "default":
        base += ["--model", args.model]
    return [*base, *args.server_options]


def measure(args: argparse.Namespace, workers: int, instances: int) -> dict[str, Any]:
    env = {"URL_PATH": args.route}
    full, port = bind(command(args, workers, instances))
    with serving(full, port) as url:
        wrk(url, 8, 3, args.image, "statuses.lua", env=env)  # warm-up
        one = wrk(url, 1, args.duration, args.image, "statuses.lua", env=env)
        many = wrk(url, 100, args.duration, args.image, "statuses.lua", env=env)
    out = {
        "p50_ms": one["latency_ms"]["p50"],
        "p99_ms": one["latency_ms"]["p99"],
        "ok_per_s_100": many.get("statuses", {}).get("200", 0) / many["duration_s"],
    }
    if args.flood > 0 and args.route == "/classify":
        flooded = flood(command(args, workers, instances), ROOT, 1000, args.flood, 8.0)
        out["flood_share"] = flooded["share_of_capacity"]
    return out


def summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def markdown(results: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['ok_per_s_100']:.1f}",
            f"{row['flood_share']:.0%}" if "flood_share" in row else "",
        ]
        for name, row in results["layouts"].items()
    ]
    header = ["layout", "p50 ms (1 conn.)", "p99 ms (1 conn.)", "200/s (100 conn.)", "flood: share of capacity"]
    return "\n".join(
        [
            f"# Layouts for {results['model']}",
            "",
            f"{results['machine']}; {results['date']}; `{results['command']}`; medians of the rounds.",
            "",
            *markdown_table(header, rows),
            "",
        ]
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["layouts"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = results["layouts"]
    grouped_bars(axes[0], ["p50 at 1 connection"], {n: [rows[n]["p50_ms"]] for n in names}, "ms")
    grouped_bars(axes[1], ["200/s at 100 connections"], {n: [rows[n]["ok_per_s_100"]] for n in names}, "req/s")
    save_figure(figure, list(axes), f"Layouts for {results['model']} ({results['machine']})", path)


if __name__ == "__main__":
    raise SystemExit(main())
