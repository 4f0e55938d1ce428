"""The pipeline's own ceiling: what the server costs per request when the model costs next to nothing.

On a GPU a classifier takes well under a millisecond per image, so what bounds a server is its own work
per request (HTTP, multipart, JPEG decode, resize, hand-offs, JSON). This measures that on the CPU by
serving a near-free model (built here as TorchScript: a channel mean and one linear layer, 1000 classes):

  - torchrest from this tree, and with --base REF torchrest from that commit too (a `git worktree`, each
    server started from its own tree), so a change shows as a ratio in one run;
  - the naive FastAPI + PyTorch baseline (benchmark/baseline/naive_server.py, one worker) on the same model;
  - wrk at 1, 8, 32 and 100 connections uploading cat.jpg as multipart, and a 12 MP photo at 8.

Writes benchmark/results/<date>/ceiling.{json,md,png}. Needs wrk and the bench extras.

    python benchmark/ceiling.py [--base REF] [--duration 10] [--connections 1,8,32,100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from bench import baseline_command, bind, make_large_photo
from harness import ROOT, log, platform_name, serving, torchrest_command, write_results, wrk

PHOTO = ROOT / "tests" / "data" / "cat.jpg"


class NearFree(torch.nn.Module):
    """Normalised float NCHW (what a TorchScript file is fed) -> 1000 logits from the channel means: the
    model costs microseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 1000)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(pixels.mean(dim=(2, 3)))


def near_free_model(folder: Path) -> Path:
    path = folder / "near-free.pt"
    torch.manual_seed(0)
    with torch.no_grad():
        traced = torch.jit.trace(NearFree().eval(), torch.zeros((1, 3, 224, 224)))
    traced.save(str(path))
    return path


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A checkout of `ref` beside this one, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="torchrest-base-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref], check=True, capture_output=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def measure(
    name: str, command: list[str], connections: list[int], seconds: float, large: Path, cwd: Path | None = None
) -> dict[str, Any]:
    command, port = bind(command)
    runs = []
    with serving(command, port, cwd=cwd) as url:
        wrk(url, 8, 3.0, PHOTO)  # warm-up
        for count in connections:
            result = wrk(url, count, seconds, PHOTO)
            runs.append(result)
            latency = result["latency_ms"]
            log(
                f"  {name:<22} {count:>3} conn: {result['req_per_s']:7.1f} req/s  p50 {latency['p50']:6.1f} ms"
                f"  p99 {latency['p99']:7.1f} ms  errors {result['error_count']}"
            )
        big = wrk(url, 8, seconds, large)
        log(f"  {name:<22} 12 MP, 8 conn: {big['req_per_s']:6.1f} req/s  p50 {big['latency_ms']['p50']:6.1f} ms")
    return {"name": name, "runs": runs, "large": big}


def markdown(results: dict[str, Any]) -> str:
    servers = results["servers"]
    reference = servers[0]
    lines = [
        f"# torchrest: the pipeline's ceiling (near-free model), {results['date']}",
        "",
        f"Machine: {results['machine']}. Photo: tests/data/cat.jpg (multipart, as curl -F), and a 12 MP JPEG at 8 "
        f"connections. Command: `{results['command']}`",
        "",
        "| server | connections | req/s | vs " + reference["name"] + " | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for server in servers:
        for run, ref in zip(server["runs"], reference["runs"], strict=True):
            lines.append(
                f"| {server['name']} | {run['connections']} | {run['req_per_s']:.1f} "
                f"| {run['req_per_s'] / ref['req_per_s']:.2f}x | {run['latency_ms']['p50']:.1f} "
                f"| {run['latency_ms']['p99']:.1f} | {run['error_count']} |"
            )
        big = server["large"]
        ratio = big["req_per_s"] / reference["large"]["req_per_s"]
        lines.append(
            f"| {server['name']} | 12 MP x 8 | {big['req_per_s']:.1f} | {ratio:.2f}x "
            f"| {big['latency_ms']['p50']:.1f} | {big['latency_ms']['p99']:.1f} | {big['error_count']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for server in results["servers"]:
        conns = [run["connections"] for run in server["runs"]]
        left.plot(conns, [run["req_per_s"] for run in server["runs"]], "o-", label=server["name"])
        right.plot(conns, [run["latency_ms"]["p50"] for run in server["runs"]], "o-", label=server["name"])
    left.set(xscale="log", xlabel="connections", ylabel="req/s", title="Near-free model: requests/s")
    right.set(xscale="log", yscale="log", xlabel="connections", ylabel="p50 ms", title="Median latency")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"torchrest's own ceiling, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="also serve torchrest from this commit (git ref)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,8,32,100")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where every server runs the model")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/ceiling.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    connections = [int(count) for count in args.connections.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="ceiling-"))
    model = near_free_model(folder)
    large = make_large_photo(PHOTO)
    quiet = ["--log-level", "warning", "--device", args.device]
    servers = []
    log(f"near-free model at {model}; wrk at {args.connections} connections, {args.duration:.0f} s each")
    servers.append(
        measure("torchrest (this tree)", torchrest_command(str(model), 0, quiet), connections, args.duration, large)
    )
    if args.base:
        with worktree(args.base) as tree:
            servers.append(
                measure(
                    f"torchrest ({args.base})",
                    torchrest_command(str(model), 0, quiet),
                    connections,
                    args.duration,
                    large,
                    cwd=tree,
                )
            )
    baseline = baseline_command(str(model), 1, args.device)
    servers.append(measure("naive baseline", baseline, connections, args.duration, large))
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}"
        + (f", {torch.cuda.get_device_name(0)}" if args.device != "cpu" else ""),
        "command": "python " + " ".join(sys.argv),
        "servers": servers,
    }
    write_results(
        args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat(), "ceiling", results, markdown, plot
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
