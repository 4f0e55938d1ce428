"""Quick when idle, fast when busy: both ends of one server, this tree against a base commit, in one
interleaved run.

    python benchmark/latency.py --base REF [--rounds 2] [--duration 8] [--out benchmark/results/<date>]

For each model folder (EfficientNet-Lite0 as OpenVINO fp32 and ResNet-18 as OpenVINO INT8, made by
`torchrest optimize` with its throughput layout; ResNet-18 has random weights, seeded) every server serves
the same file: torchrest at REF (a `git worktree`), this tree, and the naive FastAPI baseline (one
process, the model called per request: the quickest peer at one connection in benchmark/peers.py). Each
round starts every server once, in turn, and measures, with wrk and the open loop uploading cat.jpg:

    p50 and p99 at 1 connection (closed loop)        the quiet hours
    req/s at 100 connections                         the busy ones
    p99 in the open loop at 50% of that server's own req/s at 100

Then the default server (`torchrest serve`, no flags) of both trees: seconds until /health says ready
(this tree first with an empty cache, converting the model, then with it cached) and p50 at 1 connection.
Medians over the rounds. Writes <out>/latency.{json,md,png}; needs wrk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baseline_command, bind
from ceiling import worktree
from harness import (
    ROOT,
    grouped_bars,
    log,
    markdown_table,
    platform_name,
    save_figure,
    serving,
    settle,
    write_results,
    wrk,
)
from openloop import open_loop

PHOTO = ROOT / "tests" / "data" / "cat.jpg"
MODELS = {"efficientnet_lite0": "openvino-fp32", "resnet18": "openvino-int8"}


def model_folders(repository: Path) -> None:
    """The two model folders, made here with optimize's throughput layout (once per repository)."""
    for model, candidate in MODELS.items():
        if (repository / model / "config.json").is_file():
            continue
        log(f"optimize {model} -> {candidate}")
        subprocess.run(
            [
                *(sys.executable, "-m", "torchrest", "optimize", "--model", model, "--out", str(repository)),
                *("--calibration", str(ROOT / "tests" / "data"), "--candidates", candidate),
                *("--batch-sizes", "1,4,16", "--seconds-per-point", "1", "--max-top1-disagreement", "100%"),
            ],
            check=True,
            capture_output=True,
        )


def measure(url: str, duration: float) -> dict[str, Any]:
    image = PHOTO.read_bytes()
    wrk(f"{url}/classify", 8, 3.0, PHOTO)  # warm-up: first runs of every path (kernels, pools) are not measured
    one = wrk(f"{url}/classify", 1, duration, PHOTO)
    settle(url, image, one["latency_ms"]["p50"])
    busy = wrk(f"{url}/classify", 100, duration, PHOTO)
    settle(url, image, one["latency_ms"]["p50"])
    half = open_loop(url, image, rate=0.5 * busy["req_per_s"], seconds=duration)
    return {
        "p50_ms_1": one["latency_ms"]["p50"],
        "p99_ms_1": one["latency_ms"]["p99"],
        "req_per_s_100": busy["req_per_s"],
        "errors_100": busy["error_count"],
        "p99_ms_open_50": half["latency_ms"]["p99"],
        "open_50_rate": half["target_rate"],
    }


def started(command: list[str], port: int, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds until /health answered 200, p50 ms at one connection) of a server started afresh."""
    began = time.perf_counter()
    with serving(command, port, env=env, cwd=cwd) as url:
        ready_s = time.perf_counter() - began
        return ready_s, wrk(f"{url}/classify", 1, 5, PHOTO)["latency_ms"]["p50"]


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchrest", "serve", "--host", "127.0.0.1", "--port", "0", *args]


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit to compare with (git ref)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--repository", type=Path, default=None, help="where the model folders are (made if absent)")
    parser.add_argument("--models", default=",".join(MODELS), help="which of the model folders to serve")
    parser.add_argument("--no-default", action="store_true", help="leave the default server's start-up out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/latency.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    repository = args.repository or Path(tempfile.mkdtemp(prefix="latency-repository-"))
    model_folders(repository)
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "platform": platform_name(),
        "base": args.base,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "models": {},
        "default": {},
    }
    with worktree(args.base) as base:
        trees = {f"torchrest ({args.base})": base, "torchrest (this tree)": ROOT}
        for model in args.models.split(","):
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*trees, "naive baseline"]}
            for round_number in range(1, args.rounds + 1):
                for name in runs:
                    log(f"{model}, round {round_number}: {name}")
                    if name in trees:
                        serve = ["--model-repository", str(repository), "--model", model, "--log-level", "warning"]
                        command, port = bind(serve_command(*serve))
                        env, cwd = {}, trees[name]
                    else:
                        command, port = bind(baseline_command(model, 1))
                        env, cwd = {"BASELINE_REPOSITORY": str(repository)}, ROOT
                    with serving(command, port, env=env, cwd=cwd) as url:
                        runs[name].append(measure(url, args.duration))
            results["models"][model] = {name: median_of(measured) for name, measured in runs.items()}
            log(json.dumps(results["models"][model]))
        default_runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for round_number in range(1, 0 if args.no_default else args.rounds + 1):
            for name, tree in trees.items():
                cache = tempfile.mkdtemp(prefix="latency-cache-")  # this tree converts at its first start
                env = {"TORCHREST_CACHE_DIR": cache, "XDG_CACHE_HOME": cache}
                first = started(*bind(serve_command()), tree, env)
                again = started(*bind(serve_command()), tree, env)
                log(f"default server, round {round_number}: {name}: ready in {first[0]:.1f} s, then {again[0]:.1f} s")
                default_runs[name].append(
                    {"ready_s_first": first[0], "ready_s_again": again[0], "p50_ms_1": min(first[1], again[1])}
                )
                shutil.rmtree(cache, ignore_errors=True)
        results["default"] = {name: median_of(measured) for name, measured in default_runs.items() if measured}
    write_results(args.out, "latency", results, markdown, plot)
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Both ends: one connection and 100, this tree against {results['base']}",
        "",
        f"{results['platform']}, {results['date']}; medians of {results['rounds']} interleaved rounds of "
        f"{results['duration_s']:.0f} s per point, cat.jpg uploaded; ResNet-18 has random weights (seeded).",
        "",
    ]
    rows = []
    for model, servers in results["models"].items():
        for name, figures in servers.items():
            rows.append(
                [
                    f"{model} ({MODELS[model]})",
                    name,
                    f"{figures['p50_ms_1']:.1f}",
                    f"{figures['p99_ms_1']:.1f}",
                    f"{figures['req_per_s_100']:.1f}",
                    f"{figures['p99_ms_open_50']:.1f}",
                ]
            )
    header = ["model (file)", "server", "p50 ms @1", "p99 ms @1", "req/s @100", "p99 ms, open loop at 50%"]
    lines += markdown_table(header, rows)
    if results["default"]:
        lines += ["", "The default server (`torchrest serve`, no flags):", ""]
        rows = [
            [name, f"{f['ready_s_first']:.1f}", f"{f['ready_s_again']:.1f}", f"{f['p50_ms_1']:.1f}"]
            for name, f in results["default"].items()
        ]
        lines += markdown_table(["server", "ready s (first start)", "ready s (again)", "p50 ms @1"], rows)
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    models = list(results["models"])
    servers = list(results["models"][models[0]])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in (
        (axes[0], "p50_ms_1", "p50 ms at 1 connection (lower is better)"),
        (axes[1], "req_per_s_100", "req/s at 100 connections"),
    ):
        series = {name: [results["models"][m][name][key] for m in models] for name in servers}
        grouped_bars(axis, models, series, label)
    save_figure(figure, list(axes), f"Both ends, this tree against {results['base']} ({results['platform']})", path)


if __name__ == "__main__":
    sys.exit(main())
