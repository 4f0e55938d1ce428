"""The pipeline's own ceiling: what the server costs per request when the model costs next to nothing.

On a GPU a classifier takes well under a millisecond per image, so what bounds a server is its own work
per request (HTTP, multipart, JPEG decode, resize, hand-offs, JSON). This measures that on the CPU by
serving a near-free model (built here as TorchScript: a channel mean and one linear layer, 1000 classes):

  - torchrest from this tree with each of --workers (1 and 2 front-end processes by default), and with
    --base REF torchrest from that commit too (a `git worktree`, each server started from its own tree,
    the first row and the reference of every ratio), so a change shows as a ratio in one run;
  - the server's CPU time per answered request, all its processes together and each apart (from /proc);
  - the naive FastAPI + PyTorch baseline (benchmark/baseline/naive_server.py, one worker) on the same model;
  - wrk at 1, 8, 32 and 100 connections uploading cat.jpg as multipart, and a 12 MP photo at 8;
  - the event loop alone: a 16x16 JPEG (decode and resize next to nothing) at 100 connections;
  - decode + resize per photo on one core: this tree's fast path, the base commit's, Pillow's reference;
  - fidelity: the default model's answers on what this tree's pre-processing makes of the sample photos
    and of 400 random views of them, against the Pillow reference (resize 256, crop 224).

Writes benchmark/results/<date>/ceiling.{json,md,png}. Needs wrk and the bench extras.

    python benchmark/ceiling.py [--base REF] [--rounds 3] [--duration 10] [--connections 1,8,32,100]
                                [--workers 1,2] [--base-workers 1,2] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench import baseline_command, bind, make_large_photo
from harness import ROOT, cpu_per_request, log, platform_name, serving_process, torchrest_command, write_results, wrk
from PIL import Image

from torchrest.config import ServerConfig
from torchrest.model_input import InputSpec
from torchrest.models.registry import load_model
from torchrest.optimize.samples import encoded_views
from torchrest.tasks.classify import preprocessing_fidelity

PHOTO = ROOT / "tests" / "data" / "cat.jpg"
PHOTOS = [ROOT / "tests" / "data" / f"{name}.jpg" for name in ("cat", "coffee", "astronaut", "rocket")]
FIDELITY_VIEWS = 400

# Times one pre-processing function, as the tree it runs in has it (python -c in that tree), on one core:
# ms per image, the median of 5 rounds of 0.3 s each, by file. argv: the function, then the photos.
DECODE_TIMER = """
import json, statistics, sys, time, torch
torch.set_num_threads(1)
from torchrest import preprocess
from torchrest.model_input import InputSpec
spec, times = InputSpec(224, 256), {}
if sys.argv[1] == "reference_pixels":
    run = lambda data: preprocess.reference_pixels(data, spec)
else:
    run = lambda data: preprocess.decode_image(data, spec, 10**8)
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    run(data)
    rounds = []
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < 0.3:
            run(data)
            count += 1
        rounds.append((time.perf_counter() - started) / count * 1000)
    times[path] = statistics.median(rounds)
print(json.dumps(times))
"""


class NearFree(torch.nn.Module):
    """Normalised float NCHW (what a user's model file is fed) -> 1000 logits from the channel means: the
    model costs microseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 1000)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(pixels.mean(dim=(2, 3)))


def near_free_model(folder: Path) -> Path:
    """The near-free model as a user brings one: a torch.export program with a dynamic batch dimension."""
    path = folder / "near-free.pt2"
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", max=1024)
    with torch.no_grad():
        program = torch.export.export(NearFree().eval(), (torch.zeros((2, 3, 224, 224)),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def legacy_near_free_model(folder: Path) -> Path:
    """The same weights as TorchScript, for a base commit from before torchrest read .pt2 files."""
    path = folder / "near-free.pt"
    torch.manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that commit reads nothing else
        torch.jit.trace(NearFree().eval(), torch.zeros((1, 3, 224, 224))).save(str(path))
    return path


def model_for(tree: Path, model: Path | str, folder: Path) -> Path | str:
    """What a tree can serve: the near-free .pt2, or its TorchScript twin where the tree predates .pt2."""
    exported = str(model).endswith("near-free.pt2")
    return (
        legacy_near_free_model(folder) if exported and not (tree / "torchrest/backends/formats.py").exists() else model
    )


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
    name: str,
    command: list[str],
    connections: list[int],
    seconds: float,
    large: Path,
    cwd: Path | None = None,
    tiny: Path | None = None,
) -> dict[str, Any]:
    command, port = bind(command)
    runs = []
    with serving_process(command, port, cwd=cwd) as (url, process):

        def measured(count: int, photo: Path) -> dict[str, Any]:
            """One wrk run, with the server's CPU time per answered request (all its processes)."""
            with cpu_per_request(process.pid) as cpu:
                result = wrk(url, count, seconds, photo)
                cpu["requests"] = result["requests"] - result["errors"]["status"]
            return result | cpu

        wrk(url, 8, 3.0, PHOTO)  # warm-up
        for count in connections:
            result = measured(count, PHOTO)
            runs.append(result)
            latency = result["latency_ms"]
            log(
                f"  {name:<26} {count:>3} conn: {result['req_per_s']:7.1f} req/s  p50 {latency['p50']:6.1f} ms"
                f"  p99 {latency['p99']:7.1f} ms  CPU {result['cpu_ms_per_request']:.2f} ms/req"
                f"  errors {result['error_count']}"
            )
        big = wrk(url, 8, seconds, large)
        log(f"  {name:<26} 12 MP, 8 conn: {big['req_per_s']:6.1f} req/s  p50 {big['latency_ms']['p50']:6.1f} ms")
        loop_only = measured(100, tiny) if tiny else None
        if loop_only:
            log(
                f"  {name:<26} 16x16 JPEG, 100 conn (the front-end alone): {loop_only['req_per_s']:6.1f} req/s, "
                f"CPU {loop_only['cpu_ms_per_request']:.2f} ms/req ({_by_process(loop_only)})"
            )
    return {"name": name, "runs": runs, "large": big, "loop_only": loop_only}


def _by_process(run: dict[str, Any]) -> str:
    return ", ".join(f"{name.split(' ')[0]} {ms:.2f}" for name, ms in sorted(run["cpu_ms_by_process"].items()))


def markdown(results: dict[str, Any]) -> str:
    servers = results["servers"]
    reference = servers[0]
    lines = [
        f"# torchrest: the pipeline's ceiling ({results.get('model', 'near-free model')}), {results['date']}",
        "",
        f"Machine: {results['machine']}. Photo: tests/data/cat.jpg (multipart, as curl -F), and a 12 MP JPEG at 8 "
        f"connections. Command: `{results['command']}`",
        "",
        f"| server | connections | req/s (median) | each round | vs {reference['name']} | p50 ms | p99 ms "
        f"| CPU ms/req | CPU vs {reference['name']} | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for server in servers:
        for run, ref in zip(server["runs"], reference["runs"], strict=True):
            lines.append(
                f"| {server['name']} | {run['connections']} | {run['req_per_s']:.1f} | {_rounds(run)} "
                f"| {run['req_per_s'] / ref['req_per_s']:.2f}x | {run['latency_ms']['p50']:.1f} "
                f"| {run['latency_ms']['p99']:.1f} | {run['cpu_ms_per_request']:.2f} "
                f"| {run['cpu_ms_per_request'] / ref['cpu_ms_per_request']:.2f}x | {run['error_count']} |"
            )
        big = server["large"]
        ratio = big["req_per_s"] / reference["large"]["req_per_s"]
        lines.append(
            f"| {server['name']} | 12 MP x 8 | {big['req_per_s']:.1f} | {_rounds(big)} | {ratio:.2f}x "
            f"| {big['latency_ms']['p50']:.1f} | {big['latency_ms']['p99']:.1f} | | | {big['error_count']} |"
        )
    loop_rows = [server for server in servers if server.get("loop_only")]
    if loop_rows:
        lines += ["", "The front-end alone (a 16x16 JPEG: decode and resize next to nothing), 100 connections:", ""]
        lines += [
            f"- {row['name']}: {row['loop_only']['req_per_s']:.1f} req/s (rounds: {_rounds(row['loop_only'])}), "
            f"CPU {row['loop_only']['cpu_ms_per_request']:.2f} ms per request ({_by_process(row['loop_only'])})"
            for row in loop_rows
        ]
    decode = results["decode_ms"]
    names = list(next(iter(decode.values())))
    lines += [
        "",
        "Decode + resize + crop, one core, ms per image (median of rounds):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {who} | " + " | ".join(f"{times[n]:.2f}" for n in names) + " |" for who, times in decode.items()]
    fidelity = results["fidelity"]
    for what, label in (("photos", "the 4 sample photos"), ("views", f"{fidelity['views']['samples']} random views")):
        row = fidelity[what]
        lines.append(
            f"\nFidelity ({fidelity['model']}, this tree's pre-processing against the Pillow reference) on {label}: "
            f"top-1 agreement {row['top1_agreement']:.1%}, top-5 overlap {row['top5_overlap']:.1%}, "
            f"largest probability difference {row['max_probability_diff']:.3f}."
        )
    return "\n".join(lines) + "\n"


def _rounds(run: dict[str, Any]) -> str:
    return ", ".join(f"{rate:.0f}" for rate in run.get("rounds_req_per_s", [run["req_per_s"]]))


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
    parser.add_argument("--rounds", type=int, default=1, help="all servers once per round, interleaved; medians")
    parser.add_argument(
        "--workers", default="1,2", help="this tree's front-end counts to serve with (--workers), comma-separated"
    )
    parser.add_argument(
        "--model", default=None, help="serve this model instead of the near-free one (a real model loses nothing?)"
    )
    parser.add_argument(
        "--base-workers", default="", help="the base's front-end counts too (comma-separated; default: as it serves)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="leave the naive baseline out")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmark/ceiling.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    connections = [int(count) for count in args.connections.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="ceiling-"))
    model = near_free_model(folder) if args.model is None else args.model
    large = make_large_photo(PHOTO)
    tiny = make_tiny_photo(folder)
    quiet = ["--log-level", "warning", "--device", args.device]
    log("1/3 fidelity: the default model on this tree's pre-processing against the Pillow reference")
    fidelity = preprocessing_fidelity_report()
    log(f"  {fidelity['views']}")
    log("2/3 decode + resize, one core, ms per image")
    photos = [*PHOTOS, large]
    decode = {
        "this tree": decode_times(ROOT, photos),
        "Pillow reference": decode_times(ROOT, photos, "reference_pixels"),
    }
    log(f"3/3 servers: near-free model; wrk at {args.connections} connections, {args.duration:.0f} s each")
    counts = [int(count) for count in args.workers.split(",")]
    plans: list[tuple[str, list[str], Path | None, Path | None]] = [
        (
            f"torchrest --workers {count}",
            torchrest_command(str(model), 0, [*quiet, "--workers", str(count)]),
            None,
            tiny,
        )
        for count in counts
    ]
    with contextlib.ExitStack() as stack:
        if args.base:
            tree = stack.enter_context(worktree(args.base))
            decode[args.base] = decode_times(tree, photos)
            base_model = model_for(tree, model, folder)
            base_layouts = [["--workers", count] for count in args.base_workers.split(",") if count] or [[]]
            for layout in reversed(base_layouts):
                name = f"torchrest ({args.base}{', --workers ' + layout[1] if layout else ''})"
                plans.insert(0, (name, torchrest_command(str(base_model), 0, [*quiet, *layout]), tree, tiny))
        if not args.no_baseline:
            plans.append(("naive baseline", baseline_command(str(model), 1, args.device), None, None))
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plans}
        for round_number in range(1, args.rounds + 1):
            log(f"  round {round_number} of {args.rounds}")
            for name, command, cwd, small in plans:
                rounds[name].append(measure(name, command, connections, args.duration, large, cwd=cwd, tiny=small))
    servers = [median_of(name, measured) for name, measured in rounds.items()]
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "model": args.model or "near-free model",
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}"
        + (f", {torch.cuda.get_device_name(0)}" if args.device != "cpu" else ""),
        "command": "python " + " ".join(sys.argv),
        "fidelity": fidelity,
        "decode_ms": decode,
        "servers": servers,
    }
    write_results(
        args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat(), "ceiling", results, markdown, plot
    )
    return 0


def median_of(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's figures over the rounds: for each run, the round with the median req/s (its latencies
    with it), and every round's req/s beside it."""

    def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
        ranked = sorted(runs, key=lambda run: run["req_per_s"])
        return {**ranked[len(ranked) // 2], "rounds_req_per_s": [run["req_per_s"] for run in runs]}

    runs = [median_run([measured["runs"][i] for measured in rounds]) for i in range(len(rounds[0]["runs"]))]
    loop_only = [measured["loop_only"] for measured in rounds if measured["loop_only"]]
    return {
        "name": name,
        "runs": runs,
        "large": median_run([measured["large"] for measured in rounds]),
        "loop_only": median_run(loop_only) if loop_only else None,
    }


def make_tiny_photo(folder: Path) -> Path:
    """A 16x16 JPEG: decoding and resizing it costs next to nothing, so a server's rate on it is what its
    HTTP front-end and hand-offs alone can carry."""
    path = folder / "tiny.jpg"
    Image.open(PHOTO).convert("RGB").resize((16, 16)).save(path, quality=90)
    return path


def decode_times(tree: Path, photos: list[Path], function: str = "decode_image") -> dict[str, float]:
    """`function` of torchrest.preprocess (decode_image, or reference_pixels: Pillow's reference) as `tree`
    has it, ms per image on one core, by file name."""
    command = [sys.executable, "-c", DECODE_TIMER, function, *map(str, photos)]
    output = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=True).stdout
    times: dict[str, float] = json.loads(output.splitlines()[-1])
    named = {_photo_name(Path(path)): ms for path, ms in times.items()}
    log(f"  {tree.name} {function}: " + ", ".join(f"{name} {ms:.2f}" for name, ms in named.items()))
    return named


def _photo_name(path: Path) -> str:
    return path.name if path.parent == PHOTO.parent else "12 MP (4000x3000)"


def preprocessing_fidelity_report() -> dict[str, Any]:
    backend = load_model(ServerConfig()).open_backend("cpu", len(os.sched_getaffinity(0)))
    backend.prepare_thread()
    photos = [path.read_bytes() for path in PHOTOS]
    spec = InputSpec(224, 256)

    def logits(batch: np.ndarray) -> np.ndarray:
        return backend.run(batch)[0]

    on_photos = preprocessing_fidelity(logits, photos, spec)
    on_views = preprocessing_fidelity(logits, encoded_views(photos, FIDELITY_VIEWS, seed=7), spec)
    return {"model": "efficientnet_lite0", "photos": on_photos.to_dict(), "views": on_views.to_dict()}


if __name__ == "__main__":
    raise SystemExit(main())
