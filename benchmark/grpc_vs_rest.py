"""gRPC beside REST on one server, in one run: images/s and latency through tritonclient.grpc (aio),
REST /v2 with binary tensors (tritonclient.http aio) and /classify multipart (aiohttp).

One server (`torchrest serve --grpc-port`, the default model); each client in a process of its own (the
gRPC and HTTP clients cannot share one, and the loop that drives them should not share the
orchestrator's). Closed loop: N calls in flight for `--duration` seconds, 1 image per call at 100 in
flight and 8 images per call at 12 in flight (as many images in flight, under the 256-place queue),
then one call at a time for the single-connection p50. Rounds alternate the clients; medians of
`--rounds`. Writes benchmark/results/<date>/grpc.{json,md,png}.

    python benchmark/grpc_vs_rest.py [--rounds 3] [--duration 15]

(Not benchmark/grpc.py: the benchmarks run with benchmark/ on sys.path, where that name would shadow the
grpc package itself.)

The clients are Python and run on the same cores as the server: each costs some CPU per call, which the
server's figures then lack (all three alike, to within the cost of their libraries).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "cat.jpg"
MODEL = "efficientnet_lite0"
CLIENTS = ("classify", "v2", "grpc")


# -- the client process ------------------------------------------------------------------------------
async def drive(kind: str, url: str, grpc_address: str, images: int, in_flight: int, seconds: float) -> dict[str, Any]:
    """Keep `in_flight` calls going for `seconds`; count images answered and each call's latency."""
    import aiohttp
    import numpy as np

    photo = PHOTO.read_bytes()
    batch = np.array([photo] * images, dtype=np.object_)
    latencies: list[float] = []
    errors = 0
    if kind == "grpc":
        import tritonclient.grpc.aio as grpcclient

        client: Any = grpcclient.InferenceServerClient(grpc_address)
        tensor = grpcclient.InferInput("image", [images], "BYTES")
        tensor.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput("labels")]

        async def call() -> None:
            await client.infer(MODEL, [tensor], outputs=outputs)

    elif kind == "v2":
        import tritonclient.http.aio as httpclient

        client = httpclient.InferenceServerClient(url.removeprefix("http://"), conn_limit=in_flight)
        tensor = httpclient.InferInput("image", [images], "BYTES")
        tensor.set_data_from_numpy(batch, binary_data=True)
        outputs = [httpclient.InferRequestedOutput("labels", binary_data=True)]

        async def call() -> None:
            await client.infer(MODEL, [tensor], outputs=outputs)

    else:
        client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight))

        async def call() -> None:
            form = aiohttp.FormData()
            form.add_field("image", photo, filename="cat.jpg", content_type="image/jpeg")
            async with client.post(f"{url}/classify", data=form) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(response.status)

    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                await call()
                latencies.append(time.monotonic() - started)
            except Exception:  # noqa: BLE001 - counted: an error is a figure here
                errors += 1

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.monotonic() - began
    await client.close()
    ordered = sorted(latencies) or [float("nan")]
    return {
        "client": kind,
        "images_per_call": images,
        "in_flight": in_flight,
        "calls": len(latencies),
        "errors": errors,
        "images_per_s": len(latencies) * images / elapsed,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def run_client(kind: str, url: str, grpc_address: str, images: int, in_flight: int, seconds: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--client", kind, url, grpc_address, str(images), str(in_flight), str(seconds)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


# -- the orchestrator --------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# torchrest: gRPC beside REST, {results['date']}",
        "",
        f"Machine: {results['machine']}. Model: {MODEL} (real weights), torch eager. Photo: tests/data/cat.jpg. "
        f"Medians of {results['rounds']} rounds. Command: `{results['command']}`",
        "",
        "| client | images per call | calls in flight | images/s | vs REST /v2 | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['client']} | {row['images_per_call']} | {row['in_flight']} | {row['images_per_s']:.1f} "
            f"| {row['vs_v2']:.0%} | {row['p50_ms']:.1f} | {row['p99_ms']:.0f} | {row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["summary"] if row["in_flight"] > 1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{row['client']}\n{row['images_per_call']} img x {row['in_flight']}" for row in rows]
    left.bar(labels, [row["images_per_s"] for row in rows], color=["#888", "#4477aa", "#ee6677"] * 2)
    left.set(ylabel="images/s (median)", title="Throughput, about 100 images in flight")
    single = [row for row in results["summary"] if row["in_flight"] == 1]
    right.bar(
        [row["client"] for row in single], [row["p50_ms"] for row in single], color=["#888", "#4477aa", "#ee6677"]
    )
    right.set(ylabel="p50 ms", title="One call at a time, 1 image")
    for axis in (left, right):
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(f"torchrest gRPC vs REST, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per client run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmark"))
    from harness import free_port, log, platform_name, serving_process, torchrest_command, write_results

    port, grpc_port = free_port(), free_port()
    command = torchrest_command(MODEL, port, ["--grpc-port", str(grpc_port), "--log-level", "warning"])
    plans = [(kind, 1, 100) for kind in CLIENTS] + [(kind, 8, 12) for kind in ("v2", "grpc")]
    plans += [(kind, 1, 1) for kind in CLIENTS]
    runs: dict[tuple[str, int, int], list[dict[str, Any]]] = {plan: [] for plan in plans}
    with serving_process(command, port) as (url, _):
        grpc_address = f"127.0.0.1:{grpc_port}"
        run_client("classify", url, grpc_address, 1, 8, 3.0)  # warm-up
        for number in range(1, args.rounds + 1):
            order = plans if number % 2 else list(reversed(plans))
            for kind, images, in_flight in order:
                result = run_client(kind, url, grpc_address, images, in_flight, args.duration)
                runs[(kind, images, in_flight)].append(result)
                log(
                    f"round {number}: {kind:<8} {images} img x {in_flight:>3}: {result['images_per_s']:6.1f} img/s  "
                    f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}"
                )
    summary = []
    for (kind, images, in_flight), measured in runs.items():
        summary.append(
            {
                "client": kind,
                "images_per_call": images,
                "in_flight": in_flight,
                "images_per_s": statistics.median(r["images_per_s"] for r in measured),
                "p50_ms": statistics.median(r["p50_ms"] for r in measured),
                "p99_ms": statistics.median(r["p99_ms"] for r in measured),
                "errors": sum(r["errors"] for r in measured),
            }
        )
    for row in summary:
        v2 = next(r for r in summary if r["client"] == "v2" and r["in_flight"] == row["in_flight"])
        row["vs_v2"] = row["images_per_s"] / v2["images_per_s"]
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "command": "python " + " ".join(sys.argv),
        "rounds": args.rounds,
        "runs": {f"{k[0]}-{k[1]}x{k[2]}": v for k, v in runs.items()},
        "summary": summary,
    }
    out = args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat()
    write_results(out, "grpc", results, markdown, plot)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        kind, url, grpc_address, images, in_flight, seconds = sys.argv[2:8]
        outcome = asyncio.run(drive(kind, url, grpc_address, int(images), int(in_flight), float(seconds)))
        print(json.dumps(outcome))
        raise SystemExit(0)
    raise SystemExit(main())
