"""The load benchmark: torchrest (torch eager, and the model `torchrest optimize` chose) side by side
with the naive FastAPI + PyTorch baseline and with the machine's offline limit, in one run.

    1. offline limit: decode + pre-process + model in a tight loop at each batch size, per backend;
    2. each server in turn (torchrest optimized, torchrest eager, the baseline with the better of 1 or 2
       gunicorn workers): warm-up, then wrk (closed loop) at 1, 8, 32 and 100 connections;
    3. open loop at 50% and 80% of that server's measured capacity (latency from the scheduled send);
    4. a 12-megapixel JPEG at 8 connections;
    5. results.json, results.md and results.png in benchmark/results/<date>/.

    python benchmark/bench.py [--model resnet18] [--quick] [--repository model-repository]

Needs wrk (apt-get install wrk) and the bench extras (fastapi, gunicorn, uvicorn-worker). When the
repository lacks the model, `torchrest optimize` runs first on tests/data (a short candidate list).
Every server is stopped at the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    free_port,
    idle_latency_ms,
    latency_bars,
    log,
    markdown_table,
    offline,
    platform_name,
    save_figure,
    serving,
    settle,
    torchrest_command,
    write_results,
    wrk,
)
from openloop import open_loop
from PIL import Image


@dataclass(frozen=True)
class Plan:
    connections: tuple[int, ...] = (1, 8, 32, 100)
    wrk_s: float = 15.0
    warm_up_s: float = 5.0
    open_loop_s: float = 15.0
    open_loop_shares: tuple[float, ...] = (0.5, 0.8)
    large_s: float = 15.0
    large_connections: int = 8
    offline_s: float = 3.0
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    pick_s: float = 8.0  # per run when choosing 1 or 2 baseline workers (0: take 1 worker, no choice)


FULL = Plan()
QUICK = Plan(wrk_s=3, warm_up_s=2, open_loop_s=4, large_s=3, offline_s=1.5, batch_sizes=(1, 8), pick_s=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repository", type=Path, default=ROOT / "model-repository")
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--quick", action="store_true", help="short runs: under 3 minutes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: every server and the offline limit run there")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if missing := _missing_tools():
        print(f"benchmark/bench.py: error: {missing}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the servers as Ctrl-C does
    plan = QUICK if args.quick else FULL
    started = dt.datetime.now()
    out = args.out or ROOT / "benchmark" / "results" / started.date().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args.model, args.repository, args.image, plan, args.quick, args.device)
    except KeyboardInterrupt:
        log("interrupted: every server was stopped")
        return 130
    results["command"] = "python benchmark/bench.py " + " ".join(sys.argv[1:])
    results["date"] = started.isoformat(timespec="seconds")
    results["wall_s"] = (dt.datetime.now() - started).total_seconds()
    write_results(out, "results", results, markdown, plot)
    log(f"done in {results['wall_s'] / 60:.1f} min")
    return 0


def run(model: str, repository: Path, image: Path, plan: Plan, quick: bool, device: str = "cpu") -> dict[str, Any]:
    optimized = ensure_optimized(model, repository, quick, device)
    photo = image.read_bytes()
    large = make_large_photo(image)
    log("1/4 offline limit: decode + pre-process + model, tight loop")
    limits = {
        "torch eager": offline(model, photo, list(plan.batch_sizes), plan.offline_s, device=device),
        "optimized": offline(model, photo, list(plan.batch_sizes), plan.offline_s, repository, device),
    }
    log("2/4 choosing the baseline's worker count (1 or 2: the higher peak at 8 or 100 connections)")
    workers = pick_baseline_workers(model, image, plan, device)
    on = ["--device", device]
    servers = {
        "torchrest optimized": (
            torchrest_command(model, 0, ["--model-repository", str(repository), *on]),
            "optimized",
        ),
        "torchrest eager": (torchrest_command(model, 0, on), "torch eager"),
        f"baseline ({workers} worker{'s' if workers > 1 else ''})": (baseline_command(model, workers, device), None),
    }
    results: dict[str, Any] = {
        "model": model,
        "device": device,
        "machine": f"{_cores()} cores, {platform_name()}" + (f", {_gpu_name()}" if device != "cpu" else ""),
        "image": str(image.relative_to(ROOT) if image.is_relative_to(ROOT) else image),
        "large_image": f"{Image.open(large).size[0]}x{Image.open(large).size[1]} JPEG",
        "optimized": optimized,
        "offline": limits,
        "plan": plan.__dict__,
        "servers": {},
    }
    log("3/4 servers, one after another")
    for name, (command, limit_key) in servers.items():
        results["servers"][name] = measure_server(name, command, image, large, plan)
        results["servers"][name]["offline_limit"] = limits[limit_key]["best_img_per_s"] if limit_key else None
    large.unlink()
    log("4/4 ratios")
    add_ratios(results)
    return results


def ensure_optimized(model: str, repository: Path, quick: bool, device: str = "cpu") -> dict[str, Any]:
    config = repository / model / "config.json"
    if not config.is_file():
        log(f"no {config}: running torchrest optimize first")
        if device != "cpu":
            candidates = "torch-fp16,tensorrt"
        elif quick:
            candidates = "openvino-fp32"
        else:
            candidates = "onnxruntime-fp32,openvino-fp32,onnxruntime-int8,openvino-int8"
        command = [
            *(sys.executable, "-m", "torchrest", "optimize", "--model", model, "--out", str(repository)),
            *("--calibration", str(ROOT / "tests" / "data"), "--candidates", candidates, "--device", device),
            *("--batch-sizes", "1,8,32", "--seconds-per-point", "0.3" if quick else "1"),
        ]
        subprocess.run(command, check=True, cwd=ROOT)
    chosen = json.loads(config.read_text())
    return {key: chosen[key] for key in ("candidate", "backend", "precision", "artifact")}


def make_large_photo(image: Path) -> Path:
    """A 12-megapixel (4000x3000) JPEG made from the sample photo, as a phone camera would send."""
    path = Path(tempfile.mkstemp(suffix=".jpg")[1])
    Image.open(image).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def baseline_command(model: str, workers: int, device: str = "cpu") -> list[str]:
    return [
        *(sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers)),
        *("--chdir", str(ROOT / "benchmark" / "baseline"), "--timeout", "120", "--log-level", "warning"),
        "--env",
        f"BASELINE_MODEL={model}",
        "--env",
        f"BASELINE_DEVICE={device}",
        "--env",
        f"PYTHONPATH={ROOT}",
        "-b",
        "127.0.0.1:0",
        "naive_server:app",
    ]


def bind(command: list[str], port: int = 0) -> tuple[list[str], int]:
    """Give the command `port` (default: a free one) as torchrest's --port or gunicorn's -b."""
    port = port or free_port()
    command = [part.replace("127.0.0.1:0", f"127.0.0.1:{port}") for part in command]
    if "--port" in command:
        command[command.index("--port") + 1] = str(port)
    return command, port


def pick_baseline_workers(model: str, image: Path, plan: Plan, device: str = "cpu") -> int:
    if not plan.pick_s:
        log("  --quick: 1 worker, without measuring 2")
        return 1
    best: tuple[float, int] = (-1.0, 1)
    for workers in (1, 2):
        command, port = bind(baseline_command(model, workers, device))
        with serving(command, port) as url:
            wrk(url, 8, plan.warm_up_s, image)
            rates = []
            for count in (8, 100):
                settle(url, image.read_bytes(), float("inf"))
                rates.append(wrk(url, count, plan.pick_s, image)["req_per_s"])
            rate = max(rates)
        log(f"  baseline with {workers} worker(s): {rate:.1f} req/s (the better of 8 and 100 connections)")
        best = max(best, (rate, workers))
    return best[1]


def measure_server(name: str, command: list[str], image: Path, large: Path, plan: Plan) -> dict[str, Any]:
    command, port = bind(command)
    log(f"  {name}: starting")
    photo = image.read_bytes()
    with serving(command, port) as url:
        wrk(url, 8, plan.warm_up_s, image)
        settle(url, photo, float("inf"))
        idle_ms = idle_latency_ms(url, photo)

        def after(run: dict[str, Any]) -> dict[str, Any]:
            run["settle_s"] = settle(url, photo, idle_ms)
            return run

        closed = []
        for count in plan.connections:
            result = after(wrk(url, count, plan.wrk_s, image))
            closed.append(result)
            log(f"  {name:<26} {count:>3} conn: {_line(result)}")
        capacity = max(run["req_per_s"] for run in closed)
        opened = []
        for share in plan.open_loop_shares:
            result = after(open_loop(url, photo, share * capacity, plan.open_loop_s))
            result["share_of_capacity"] = share
            opened.append(result)
            log(
                f"  {name:<26} open loop {share:.0%} ({share * capacity:.1f} req/s): "
                f"{result['achieved_rate']:.1f} req/s  p50 {result['latency_ms']['p50']:.0f} ms  "
                f"p99 {result['latency_ms']['p99']:.0f} ms  errors {result['error_count']}"
            )
        large_run = wrk(url, plan.large_connections, plan.large_s, large)
        log(f"  {name:<26} 12 MP, {plan.large_connections} conn: {_line(large_run)}")
    return {
        "idle_latency_ms": idle_ms,
        "closed_loop": closed,
        "capacity_req_per_s": capacity,
        "open_loop": opened,
        "large_photo": large_run,
    }


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def add_ratios(results: dict[str, Any]) -> None:
    servers = results["servers"]
    baseline = next(server for name, server in servers.items() if name.startswith("baseline"))
    base_by_conn = {run["connections"]: run["req_per_s"] for run in baseline["closed_loop"]}
    for server in servers.values():
        for run in server["closed_loop"]:
            run["ratio_to_baseline"] = (
                run["req_per_s"] / base_by_conn[run["connections"]] if base_by_conn.get(run["connections"]) else None
            )
            limit = server["offline_limit"]
            run["ratio_to_offline"] = run["req_per_s"] / limit if limit else None
        p50_at_1 = next(run["latency_ms"]["p50"] for run in server["closed_loop"] if run["connections"] == 1)
        for run in server["open_loop"]:
            run["p99_over_p50_at_1_conn"] = run["latency_ms"]["p99"] / p50_at_1


def markdown(results: dict[str, Any]) -> str:
    opt = results["optimized"]
    lines = [
        f"# torchrest load benchmark: {results['model']}, {results['date']}",
        "",
        f"Machine: {results['machine']}. Photo: `{results['image']}` (multipart upload, as `curl -F`). "
        f"Optimized model: {opt['candidate']} ({opt['backend']}, {opt['precision']}). "
        f"Command: `{results['command']}` ({results['wall_s'] / 60:.1f} min).",
        "",
        "Offline limit (decode + pre-process + model, one process, best batch size): "
        + "; ".join(
            f"{name} ({limit['backend']}) {limit['best_img_per_s']:.1f} img/s at batch {limit['best_batch_size']}"
            for name, limit in results["offline"].items()
        )
        + ".",
        "",
        "Both ends (the quiet hours and the busy ones):",
        "",
        *markdown_table(["server", "p50 ms at 1 conn", "p99 ms at 1 conn", "req/s at 100 conn"], _both_ends(results)),
        "",
        "Closed loop (wrk):",
        "",
        *markdown_table(
            ["server", "connections", "req/s", *PERCENTILES, "errors", "timeouts", "vs baseline", "vs offline"],
            [
                [name, str(run["connections"]), f"{run['req_per_s']:.1f}", *_percentiles(run)]
                + [str(run["error_count"]), str(run["errors"]["timeout"])]
                + [_ratio(run["ratio_to_baseline"], "x"), _ratio(run["ratio_to_offline"], "%")]
                for name, server in results["servers"].items()
                for run in server["closed_loop"]
            ],
        ),
        "",
        "Open loop (fixed request rate; latency from each scheduled send):",
        "",
        *markdown_table(
            ["server", "share of capacity", "target req/s", "achieved req/s", *PERCENTILES, "errors"]
            + ["p99 / p50 at 1 conn"],
            [
                [name, f"{run['share_of_capacity']:.0%}", f"{run['target_rate']:.1f}", f"{run['achieved_rate']:.1f}"]
                + [*_percentiles(run), str(run["error_count"]), f"{run['p99_over_p50_at_1_conn']:.2f}"]
                for name, server in results["servers"].items()
                for run in server["open_loop"]
            ],
        ),
        "",
        f"Large photo ({results['large_image']}, wrk, {results['plan']['large_connections']} connections):",
        "",
        *markdown_table(
            ["server", "req/s", *PERCENTILES, "errors"],
            [
                [name, f"{server['large_photo']['req_per_s']:.1f}", *_percentiles(server["large_photo"])]
                + [str(server["large_photo"]["error_count"])]
                for name, server in results["servers"].items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


PERCENTILES = ["p50 ms", "p90 ms", "p99 ms"]


def _both_ends(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, server in results["servers"].items():
        by_count = {run["connections"]: run for run in server["closed_loop"]}
        one, busy = by_count.get(1), by_count.get(100)
        rows.append(
            [
                name,
                f"{one['latency_ms']['p50']:.1f}" if one else "-",
                f"{one['latency_ms']['p99']:.1f}" if one else "-",
                f"{busy['req_per_s']:.1f}" if busy else "-",
            ]
        )
    return rows


def _percentiles(run: dict[str, Any]) -> list[str]:
    return [f"{run['latency_ms'][q]:.1f}" for q in ("p50", "p90", "p99")]


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(13, 5))
    for name, server in results["servers"].items():
        runs = server["closed_loop"]
        line = rate_axis.plot([r["connections"] for r in runs], [r["req_per_s"] for r in runs], "o-", label=name)[0]
        if server["offline_limit"]:
            rate_axis.axhline(server["offline_limit"], color=line.get_color(), linestyle="--", linewidth=1)
    rate_axis.set(xscale="log", xlabel="connections (wrk, closed loop)", ylabel="req/s", title="Throughput")
    rate_axis.text(0.01, 0.01, "dashed: offline limit of that backend", transform=rate_axis.transAxes, fontsize=8)
    points = ["1 conn"] + [f"open {share:.0%}" for share in results["plan"]["open_loop_shares"]] + ["100 conn"]
    latency_bars(
        latency_axis,
        {
            name: [server["closed_loop"][0], *server["open_loop"], server["closed_loop"][-1]]
            for name, server in results["servers"].items()
        },
        points,
    )
    title = f"torchrest vs naive FastAPI + PyTorch, {results['model']}, {results['machine']}"
    save_figure(figure, [rate_axis, latency_axis], title, path)


def _missing_tools() -> str | None:
    if shutil.which("wrk") is None:
        return "wrk not found (apt-get install wrk)"
    try:
        import fastapi  # noqa: F401
        import gunicorn  # noqa: F401
        import uvicorn_worker  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is missing: pip install -e '.[bench]' (make install-dev)"
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _line(run: dict[str, Any]) -> str:
    return (
        f"{run['req_per_s']:7.1f} req/s  p50 {run['latency_ms']['p50']:7.1f} ms  "
        f"p99 {run['latency_ms']['p99']:7.1f} ms  errors {run['error_count']}"
    )


def _ratio(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if kind == "x" else f"{value:.0%}"


if __name__ == "__main__":
    raise SystemExit(main())
