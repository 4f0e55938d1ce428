"""Served throughput beside the offline limit, measured in one run on this machine.

For each model (torch eager, or with --model-repository the folder `torchrest optimize` wrote):
  1. offline: decode + pre-process + model in a tight loop, one process, the server's thread budget, at
     each batch size; the best is the limit a server could reach; batch 1 gives the single-image latency;
  2. served: `torchrest serve` in a subprocess, wrk uploading the photo as multipart (as curl -F does) at
     1, 8 and 100 connections.
Writes benchmark/results/<date>/core.{json,md,png}. Needs wrk (apt-get install wrk).

    python benchmark/core.py [--models resnet18,efficientnet_lite0] [--duration 15] [--quick]
                             [--model-repository DIR --stem core-optimized]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from harness import ROOT, free_port, log, offline, platform_name, serving, torchrest_command, wrk

from torchrest.config import ServerConfig
from torchrest.layout import serving_layout
from torchrest.models.repository import load_from_repository
from torchrest.optimize.serving import in_process_throughput


def served(model_name: str, image: Path, connections: list[int], seconds: float, extra: list[str]) -> list[dict]:
    runs = []
    port = free_port()
    with serving(torchrest_command(model_name, port, extra), port) as url:
        wrk(url, 8, min(5.0, seconds), image)  # warm-up: allocator, oneDNN primitives for bigger batches
        for count in connections:
            result = wrk(url, count, seconds, image)
            log(
                f"  served  {model_name} {count:>3} conn: {result['req_per_s']:7.1f} req/s  "
                f"p50 {result['latency_ms']['p50']:7.1f} ms  p99 {result['latency_ms']['p99']:7.1f} ms  "
                f"errors {result['error_count']}"
            )
            runs.append(result)
    return runs


def in_process(repository: Path, name: str, image: bytes, seconds: float) -> dict[str, Any]:
    """The model as `serve` would lay it out (its config.json layout on this machine's thread budget),
    driven in process by torchrest's own runtime with full batches: the served figure's ceiling
    without HTTP, measured in this run."""
    config = ServerConfig(model=name, model_repository=repository)
    model = load_from_repository(repository, name)
    layout, _ = serving_layout(model.layout, config.total_threads)
    backends = [model.open_backend("cpu", layout.threads, layout.instances) for _ in range(layout.instances)]
    rate = in_process_throughput(
        backends, model.input_spec, [image], config.total_threads, layout.max_batch_size, seconds
    )
    log(f"  in process {name} ({layout.describe()}): {rate:7.1f} img/s")
    return {"layout": layout.to_dict(), "in_process_img_per_s": rate}


def write_report(results: dict[str, Any], out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    backends = ", ".join(sorted({model["offline"]["backend"] for model in results["models"].values()}))
    lines = [
        f"# torchrest core benchmark, {results['date']}",
        "",
        f"Machine: {results['machine']}. Image: `{results['image']}`. Backend: {backends}. "
        f"Command: `{results['command']}`",
        "",
        "| model | offline img/s (best batch) | in process img/s (layout) | bs1 latency ms | connections "
        "| served req/s | served/offline | served/in process | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in results["models"].items():
        off = model["offline"]
        inside = off.get("in_process_img_per_s")
        layout = off.get("layout")
        shown = "-"
        if inside and layout:
            shown = f"{inside:.1f} ({layout['instances']} x {layout['threads']}, cap {layout['max_batch_size']})"
        for run in model["served"]:
            of_inside = f"{run['req_per_s'] / inside:.0%}" if inside else "-"
            lines.append(
                f"| {name} | {off['best_img_per_s']:.1f} (bs {off['best_batch_size']}) | {shown} "
                f"| {off['single_image_latency_ms_p50']:.1f} | {run['connections']} | {run['req_per_s']:.1f} "
                f"| {run['req_per_s'] / off['best_img_per_s']:.0%} | {of_inside} | {run['latency_ms']['p50']:.1f} "
                f"| {run['latency_ms']['p99']:.1f} | {run['error_count']} |"
            )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(results, out / f"{stem}.png", backends)


def plot(results: dict[str, Any], path: Path, backends: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, model in models.items():
        conns = [run["connections"] for run in model["served"]]
        axes[0].plot(conns, [run["req_per_s"] for run in model["served"]], "o-", label=f"{name} served")
        axes[0].axhline(
            model["offline"]["best_img_per_s"],
            linestyle="--",
            linewidth=1,
            color=axes[0].lines[-1].get_color(),
            label=f"{name} offline limit",
        )
        p50 = [run["latency_ms"]["p50"] for run in model["served"]]
        p99 = [run["latency_ms"]["p99"] for run in model["served"]]
        line = axes[1].plot(conns, p50, "o-", label=f"{name} p50")[0]
        axes[1].plot(conns, p99, "s--", color=line.get_color(), label=f"{name} p99")
    axes[0].set(xscale="log", xlabel="connections", ylabel="req/s", title="Throughput vs connections")
    axes[1].set(xscale="log", yscale="log", xlabel="connections", ylabel="latency ms", title="Latency percentiles")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"torchrest, {backends}, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,efficientnet_lite0")
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    parser.add_argument("--offline-seconds", type=float, default=4.0, help="seconds per offline batch size")
    parser.add_argument("--connections", default="1,8,100")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--server-args", default="", help="extra flags for torchrest serve")
    parser.add_argument("--quick", action="store_true", help="short runs (5 s wrk, 2 s offline)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--model-repository", type=Path, default=None, help="serve models `torchrest optimize` wrote")
    parser.add_argument("--stem", default="core", help="result file names: <stem>.json, .md, .png")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/core.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.offline_seconds = 5.0, 2.0
    image_bytes = args.image.read_bytes()
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform_name()}",
        "image": str(args.image.relative_to(ROOT) if args.image.is_relative_to(ROOT) else args.image),
        "command": "python " + " ".join(sys.argv),
        "models": {},
    }
    for name in args.models.split(","):
        log(f"{name}: offline decode + model, batch sizes {args.batch_sizes}")
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        off = offline(name, image_bytes, sizes, args.offline_seconds, args.model_repository)
        if args.model_repository:
            off |= in_process(args.model_repository, name, image_bytes, args.duration)
        log(f"{name}: served, wrk at {args.connections} connections, {args.duration:.0f} s each")
        extra = args.server_args.split()
        if args.model_repository:
            extra += ["--model-repository", str(args.model_repository)]
        runs = served(name, args.image, [int(c) for c in args.connections.split(",")], args.duration, extra)
        results["models"][name] = {"offline": off, "served": runs}
        for run in runs:
            run["ratio_to_offline"] = run["req_per_s"] / off["best_img_per_s"]
            if "in_process_img_per_s" in off:
                run["ratio_to_in_process"] = run["req_per_s"] / off["in_process_img_per_s"]
    out = args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat()
    write_report(results, out, args.stem)
    print((out / f"{args.stem}.md").read_text())
    log(f"wrote {out}/{args.stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
