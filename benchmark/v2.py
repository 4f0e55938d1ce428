"""The Open Inference Protocol against /classify, on the same model in the same run.

Three clients, taken in turn for `--rounds` rounds so that drift on a shared machine hits each alike,
each wrk for `--seconds`:
  classify  POST /classify, multipart upload of tests/data/cat.jpg (as `curl -F image=@cat.jpg`),
            at `--connections`
  v2 x1     POST /v2/models/<model>/infer, the cat as a binary BYTES tensor (binary outputs), at
            `--connections`
  v2 x8     the same with 8 images per request, at `--connections` / 8: as many images in flight as
            the others (100 connections of 8 images would hold 800 images, over 30 s of work on a
            small CPU, past the 10 s deadline and the 256-place queue: all 503s and 504s)
Reported: successful req/s and images/s (median of the rounds), v2 against /classify, p50/p99, errors.
Writes benchmark/results/<date>/v2.{json,md,png}. Needs wrk.

    python benchmark/v2.py [--model efficientnet_lite0] [--connections 100] [--seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    free_port,
    idle_latency_ms,
    log,
    platform_name,
    serving,
    settle,
    torchrest_command,
    write_results,
    wrk,
)

SCENARIOS = {  # name -> (wrk script, images per request); connections: --connections / images per request
    "classify": ("upload.lua", 1),
    "v2 x1": ("v2.lua", 1),
    "v2 x8": ("v2.lua", 8),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/v2.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    started = dt.datetime.now()
    image = args.image.read_bytes()
    port = free_port()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    with serving(torchrest_command(args.model, port, []), port) as url:
        idle_ms = idle_latency_ms(url, image)
        for round_ in range(1, args.rounds + 1):
            for name, (script, per_request) in SCENARIOS.items():
                settle(url, image, idle_ms)
                env = {"IMAGES_PER_REQUEST": str(per_request), "MODEL": args.model}
                connections = max(1, round(args.connections / per_request))
                result = wrk(url, connections, args.seconds, args.image, script, env)
                result["req_per_s"] = (result["requests"] - result["errors"]["status"]) / result["duration_s"]
                result["images_per_s"] = result["req_per_s"] * per_request
                runs[name].append(result)
                log(
                    f"round {round_}/{args.rounds} {name:>8} at {connections:>3} connections: "
                    f"{result['req_per_s']:6.1f} req/s, "
                    f"{result['images_per_s']:6.1f} img/s, p99 {result['latency_ms']['p99']:.0f} ms, "
                    f"errors {result['error_count']}"
                )
    summary = {
        name: {
            "images_per_request": SCENARIOS[name][1],
            "connections": results[0]["connections"],
            "req_per_s": statistics.median(r["req_per_s"] for r in results),
            "images_per_s": statistics.median(r["images_per_s"] for r in results),
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in results),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in results),
            "errors": sum(r["error_count"] for r in results),
        }
        for name, results in runs.items()
    }
    base = summary["classify"]
    for row in summary.values():
        row["req_vs_classify"] = row["req_per_s"] / base["req_per_s"]
        row["images_vs_classify"] = row["images_per_s"] / base["images_per_s"]
    results = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python benchmark/v2.py " + " ".join(sys.argv[1:]),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "model": args.model,
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "summary": summary,
        "runs": runs,
    }
    out = args.out or ROOT / "benchmark" / "results" / started.date().isoformat()
    write_results(out, "v2", results, markdown, plot)
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# torchrest: Open Inference Protocol vs /classify, {results['model']} ({results['date']})",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`. wrk, {results['seconds']:g} s per run, "
        f"{results['rounds']} rounds taken in turn (medians); req/s counts successful answers only.",
        "",
        "| client | images/request | connections | req/s | images/s | req/s vs /classify | images/s vs /classify "
        "| p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["summary"].items():
        lines.append(
            f"| {name} | {row['images_per_request']} | {row['connections']} | {row['req_per_s']:.1f} "
            f"| {row['images_per_s']:.1f} "
            f"| {100 * row['req_vs_classify']:.0f}% | {100 * row['images_vs_classify']:.0f}% | {row['p50_ms']:.0f} "
            f"| {row['p99_ms']:.0f} | {row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["summary"])
    rows = [results["summary"][name] for name in names]
    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    rate_axis.bar([i - 0.2 for i in range(len(names))], [r["req_per_s"] for r in rows], 0.4, label="requests/s")
    rate_axis.bar([i + 0.2 for i in range(len(names))], [r["images_per_s"] for r in rows], 0.4, label="images/s")
    rate_axis.set_xticks(range(len(names)), names)
    rate_axis.set(ylabel="per second", title="Successful throughput")
    rate_axis.legend()
    latency_axis.bar([i - 0.2 for i in range(len(names))], [r["p50_ms"] for r in rows], 0.4, label="p50")
    latency_axis.bar([i + 0.2 for i in range(len(names))], [r["p99_ms"] for r in rows], 0.4, label="p99")
    latency_axis.set_xticks(range(len(names)), names)
    latency_axis.set(ylabel="ms per request", title="Latency")
    latency_axis.legend()
    for axis in (rate_axis, latency_axis):
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle(f"{results['model']}: /v2 infer (binary BYTES) vs /classify, {results['machine']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
