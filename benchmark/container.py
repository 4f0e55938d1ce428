"""What the container costs: torchrest in its image beside the same server run natively, in one run.

For each round (native and container alternate, so drift on a noisy machine hits both):
  - native: `torchrest serve` in a subprocess; container: `podman run` of the image, same model, the same
    cores (`--cpus` = this machine's), published on loopback;
  - wrk uploads the photo as multipart at each connection count.
Also: the image's size and what takes it, the container's cold start (run -> /v2/health/ready) and
resident memory after the runs. Writes benchmark/results/<date>/container.{json,md,png}.
Needs wrk and an image (`make image`).

    python benchmark/container.py [--image torchrest:latest] [--connections 1,32] [--duration 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from harness import (
    ROOT,
    free_port,
    log,
    platform_name,
    serving_process,
    torchrest_command,
    wait_until_ready,
    write_results,
    wrk,
)

SITE_PACKAGES = "/opt/torchrest/lib/python3.11/site-packages"


def engine(*args: str, timeout: float = 120) -> str:
    command = [*os.environ.get("CONTAINER_ENGINE", "podman").split(), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=timeout).stdout


@contextmanager
def container(image: str, cpus: int) -> Iterator[tuple[str, str, float]]:
    """Run the image (read-only root, `cpus` CPUs) on a free loopback port; yield (url, id, cold start s)."""
    port = free_port()
    started = time.monotonic()
    container_id = engine(
        *("run", "--detach", "--read-only", "--cpus", str(cpus), "--publish", f"127.0.0.1:{port}:8080", image),
        *("--log-level", "warning"),
    ).strip()
    url = f"http://127.0.0.1:{port}"

    def exited() -> str | None:
        running = engine("inspect", "--format", "{{.State.Running}}", container_id).strip() == "true"
        return None if running else f"container exited: {engine('logs', container_id)[-3000:]}"

    try:
        wait_until_ready(f"{url}/v2/health/ready", exited)
        yield url, container_id, time.monotonic() - started
    finally:
        engine("rm", "--force", "--time", "0", container_id)


def container_rss_mib(container_id: str) -> float:
    stats = json.loads(engine("stats", "--no-stream", "--format", "json", container_id))
    usage = stats[0]["mem_usage"].split("/")[0].strip()  # "612.3MB / 24GB"
    units = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "B": 1}
    for unit, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if usage.endswith(unit):
            return float(usage[: -len(unit)]) * factor / 1024**2
    raise ValueError(f"unreadable memory figure {usage!r}")


def process_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def image_contents(image: str) -> dict[str, Any]:
    """The image's size and the largest things in it (MiB)."""
    size_bytes = int(engine("image", "inspect", "--format", "{{.Size}}", image).strip())
    listing = engine(
        *("run", "--rm", "--read-only", "--entrypoint", "sh", image, "-c"),
        f"du -sm {SITE_PACKAGES}/* /usr /opt/torchrest | sort -rn | head -12",
    )
    largest = [
        (line.split("\t")[1].replace(SITE_PACKAGES + "/", ""), int(line.split("\t")[0]))
        for line in listing.splitlines()
    ]
    return {"size_bytes": size_bytes, "largest_mib": largest}


def measure(url: str, connections: list[int], seconds: float, photo: Path, who: str) -> list[dict[str, Any]]:
    wrk(url, 8, min(5.0, seconds), photo)  # warm-up
    runs = []
    for count in connections:
        result = wrk(url, count, seconds, photo)
        log(
            f"  {who:<9} {count:>3} conn: {result['req_per_s']:6.1f} req/s  p50 {result['latency_ms']['p50']:7.1f} ms"
            f"  p99 {result['latency_ms']['p99']:7.1f} ms  errors {result['error_count']}"
        )
        runs.append(result)
    return runs


def markdown(results: dict[str, Any]) -> str:
    image = results["image"]
    lines = [
        f"# torchrest in its container vs native, {results['date']}",
        "",
        f"Machine: {results['machine']}. Model: efficientnet_lite0 (built-in, real weights), torch eager. "
        f"Photo: `{results['photo']}`. Command: `{results['command']}`",
        "",
        f"Image `{image['tag']}`: **{image['size_bytes'] / 1e9:.2f} GB** ({image['size_bytes'] / 2**30:.2f} GiB). "
        f"Cold start (run -> ready), median of {len(results['cold_start_s'])}: "
        f"**{sorted(results['cold_start_s'])[len(results['cold_start_s']) // 2]:.1f} s**. "
        f"Resident memory after the runs: native {results['rss_mib']['native']:.0f} MiB, "
        f"container {results['rss_mib']['container']:.0f} MiB.",
        "",
        "| connections | native req/s | container req/s | container/native | native p99 ms | container p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['connections']} | {row['native_req_per_s']:.1f} | {row['container_req_per_s']:.1f} "
            f"| {row['ratio']:.0%} | {row['native_p99_ms']:.0f} | {row['container_p99_ms']:.0f} |"
        )
    lines += ["", "Largest parts of the image (MiB):", ""]
    lines += [f"- `{name}`: {mib}" for name, mib in image["largest_mib"]]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]
    labels = [f"{row['connections']} conn" for row in rows]
    x = range(len(rows))
    fig, axis = plt.subplots(figsize=(7, 4))
    axis.bar([i - 0.2 for i in x], [row["native_req_per_s"] for row in rows], 0.4, label="native")
    axis.bar([i + 0.2 for i in x], [row["container_req_per_s"] for row in rows], 0.4, label="container")
    axis.set_xticks(list(x), labels)
    axis.set(ylabel="req/s (median of rounds)", title=f"torchrest native vs container, {results['machine']}")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="torchrest:latest")
    parser.add_argument("--photo", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--connections", default="1,32")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/container.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    cpus = len(os.sched_getaffinity(0))
    connections = [int(count) for count in args.connections.split(",")]
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{cpus} cores, {platform_name()}",
        "photo": str(args.photo.relative_to(ROOT) if args.photo.is_relative_to(ROOT) else args.photo),
        "command": "python " + " ".join(sys.argv),
        "image": {"tag": args.image, **image_contents(args.image)},
        "cold_start_s": [],
        "rounds": [],
        "rss_mib": {},
    }
    log(f"image {args.image}: {results['image']['size_bytes'] / 1e9:.2f} GB")
    for number in range(1, args.rounds + 1):
        log(f"round {number}/{args.rounds}: native, then container, wrk at {args.connections} connections")
        port = free_port()
        command = torchrest_command("efficientnet_lite0", port, ["--log-level", "warning"])
        with serving_process(command, port) as (url, process):
            native = measure(url, connections, args.duration, args.photo, "native")
            results["rss_mib"]["native"] = process_rss_mib(process.pid)
        with container(args.image, cpus) as (url, container_id, cold_start_s):
            log(f"  container ready {cold_start_s:.1f} s after run")
            results["cold_start_s"].append(cold_start_s)
            contained = measure(url, connections, args.duration, args.photo, "container")
            results["rss_mib"]["container"] = container_rss_mib(container_id)
        results["rounds"].append({"native": native, "container": contained})
    results["summary"] = []
    for index, count in enumerate(connections):
        native_rates = [round_["native"][index]["req_per_s"] for round_ in results["rounds"]]
        container_rates = [round_["container"][index]["req_per_s"] for round_ in results["rounds"]]
        results["summary"].append(
            {
                "connections": count,
                "native_req_per_s": median(native_rates),
                "container_req_per_s": median(container_rates),
                "ratio": median(container_rates) / median(native_rates),
                "native_p99_ms": median([r["native"][index]["latency_ms"]["p99"] for r in results["rounds"]]),
                "container_p99_ms": median([r["container"][index]["latency_ms"]["p99"] for r in results["rounds"]]),
            }
        )
    out = args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat()
    write_results(out, "container", results, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
