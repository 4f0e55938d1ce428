"""A task of one's own, measured on this machine in one interleaved run: what the public task interface
(torchrest.tasks.base.Task, loaded with `--task package.module:Class`) costs.

    python benchmark/own_task.py [--rounds 2] [--duration 15] [--skip depth,builtin] [--before d88d195] [--out DIR]

depth    examples/tasks/depth.py (class Depth, POST /depth) serving a light monocular depth network
         (benchmark/task_networks.py: 2.7 M parameters, random weights, (N, 3, 256, 256) -> (N, 1, 128, 128)),
         exported to ONNX once. Each round, in turn (the order alternating): torchrest (`serve --model
         depth.onnx --task examples.tasks.depth:Depth --input-size 256`, run from this tree so that
         `examples.tasks.depth` imports) and the naive server (benchmark/baseline/naive_depth.py: FastAPI, the
         same file in ONNX Runtime, Pillow letterbox, ImageNet normalisation in numpy, the map back at the
         photo's size by Pillow, a 16-bit PNG, one request per call); one answer of each checked first, then
         wrk uploading a photo at 1 and at 100 connections: req/s, p50, p99, statuses, torchrest / naive.
builtin  a built-in task, now loaded through the same interface, against the revision `--before` (default
         d88d195, before the interface): that revision checked out in a temporary git worktree and served by
         this venv's python from there (PYTHONPATH and cwd: the worktree; which package each tree imports is
         checked and logged), beside this working tree. Both trees share one cache folder for the default
         model's converted form (TORCHREST_CACHE_DIR), made by one start of each before anything is measured.
         Each round, the two trees in turn (before, after; the order alternating each round): classify on
         the default model (`torchrest serve`, POST /classify, the cat photo) and detect on a YOLOv8n-sized
         network (`serve --model detector.onnx --task detect --input-size 640 --normalize unit`, POST
         /detect, the astronaut photo), the commands benchmark/tasks.py runs, at 1 and 100 connections:
         req/s after / before, the aim at least 0.97 (within 3% of before, or faster).

Medians over the rounds. Writes <out>/own_task.{json,md,png}; needs wrk, git, and the bench extras.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import bind
from harness import (
    ROOT,
    connection_bars,
    grouped_bars,
    log,
    markdown_table,
    platform_name,
    save_figure,
    serving,
    side_by_side,
    write_results,
    wrk,
)
from PIL import Image
from task_networks import export_onnx, parameters, random_depth, random_detector
from tasks import CAT, PHOTO, medians, serve_detector

DEPTH_SERVERS = ("torchrest", "torchrest, optimized", "naive FastAPI")
OPTIMIZED = "torchrest, optimized"  # the same network through `torchrest optimize` (its fastest faithful backend)
CANDIDATES = "onnxruntime-fp32,openvino-fp32,openvino-bf16,openvino-int8"  # the CPU's quick ones (no compile)
TREES = ("before", "after")
WORKLOADS = {"classify": ("/classify", CAT), "detect": ("/detect", PHOTO)}
AIM = 0.03  # after / before within 3%


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each wrk run")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: depth, builtin")
    parser.add_argument("--before", default="d88d195", help="the git revision `builtin` compares this tree with")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if unknown := skip - {"depth", "builtin"}:
        parser.error(f"--skip: no part {', '.join(sorted(unknown))} (depth, builtin)")
    results: dict[str, Any] = {"platform": platform_name(), "rounds": args.rounds, "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="own-task-bench-") as scratch:
        folder = Path(scratch)
        if "depth" not in skip:
            results["depth"] = depth(folder, args.rounds, args.duration)
        if "builtin" not in skip:
            results["builtin"] = builtin(folder, args.rounds, args.duration, args.before)
    write_results(args.out, "own_task", results, markdown, plot)
    return 0


def measure(
    command: list[str], route: str, photo: Path, duration: float, env: dict[str, str], cwd: Path = ROOT
) -> dict[str, Any]:
    """One server (run in `cwd` with `env`): a warm-up, then wrk at 1 and at 100 connections, counting
    statuses (benchmark/tasks.py's measure, for a server of another tree)."""
    command, port = bind(command)
    with serving(command, port, env=env, cwd=cwd) as url:
        wrk(url + route, 1, 3, photo, "statuses.lua", env={"URL_PATH": route})  # warm-up
        one = wrk(url, 1, duration, photo, "statuses.lua", env={"URL_PATH": route})
        many = wrk(url, 100, duration, photo, "statuses.lua", env={"URL_PATH": route})
    return {"1": one, "100": many}


def with_path(folder: Path) -> dict[str, str]:
    """The environment's PYTHONPATH with `folder` first."""
    rest = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{folder}{os.pathsep}{rest}" if rest else str(folder)}


def upload(url: str, photo: Path) -> dict[str, Any]:
    """POST `photo` as the multipart field `image` (as curl -F image=@photo does); the JSON answer."""
    boundary = "----own-task-bench-5c1e"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{photo.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


# -- depth -----------------------------------------------------------------------------------------------
def depth(folder: Path, rounds: int, duration: float) -> dict[str, Any]:
    network = random_depth()
    path = export_onnx(network, 256, folder / "depth.onnx")
    log(f"depth: a {parameters(network) / 1e6:.2f} M-parameter depth network (random weights) exported to {path.name}")
    env = with_path(ROOT)  # examples.tasks.depth imports from this tree
    optimized, chosen = optimize_depth(network, folder, env)
    commands = {"torchrest": serve_depth(path), OPTIMIZED: optimized, "naive FastAPI": naive_depth(path)}
    answers = {name: check_depth(name, command, env) for name, command in commands.items()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in DEPTH_SERVERS}
    for number in range(rounds):
        for name in DEPTH_SERVERS if number % 2 == 0 else DEPTH_SERVERS[::-1]:
            log(f"  round {number + 1}/{rounds}: {name}")
            runs[name].append(measure(commands[name], "/depth", PHOTO, duration, env))
            log_point(runs[name][-1])
    servers = medians(runs)
    ours, naive = servers["torchrest"], servers["naive FastAPI"]
    ratios = {c: share(ours[c]["req_per_s"], naive[c]["req_per_s"]) for c in ("1", "100")}
    log("  torchrest / naive req/s: " + ", ".join(f"{times(r)} at {c} connection(s)" for c, r in ratios.items()))
    photo = list(Image.open(PHOTO).size)
    optimized_ratios = {c: share(servers[OPTIMIZED][c]["req_per_s"], naive[c]["req_per_s"]) for c in ("1", "100")}
    log("  optimized / naive req/s: " + ", ".join(f"{times(r)} at {c}" for c, r in optimized_ratios.items()))
    return {
        "parameters": parameters(network),
        "photo": photo,
        "answers": answers,
        "servers": servers,
        "ratios": ratios,
        "optimized": {"chosen": chosen, "ratios": optimized_ratios},
    }


def optimize_depth(network: Any, folder: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """The network as a user brings it to `torchrest optimize` (a .pt2), optimized for the depth task (its
    closeness gate) over CANDIDATES, and the command serving the folder it writes; and what it chose."""
    import torch

    example = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        program = torch.export.export(
            network.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},)
        )
    torch.export.save(program, str(folder / "depth.pt2"))
    out = folder / "optimized"
    command = [
        *(sys.executable, "-m", "torchrest", "optimize", "--model", str(folder / "depth.pt2")),
        *("--task", "examples.tasks.depth:Depth", "--input-size", "256", "--out", str(out)),
        *("--calibration", str(ROOT / "tests" / "data"), "--candidates", CANDIDATES),
        *("--batch-sizes", "1,2,4", "--seconds-per-point", "1", "--fidelity-samples", "200"),
    ]
    log(f"  torchrest optimize: {CANDIDATES}, judged by the depth task's closeness gate")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=1200, check=True)
    chosen = next(line for line in done.stdout.splitlines() if line.startswith("chose "))
    log(f"  {chosen}")
    serve = [
        *(sys.executable, "-m", "torchrest", "serve", "--model-repository", str(out)),
        *("--host", "127.0.0.1", "--port", "0", "--log-level", "warning"),
    ]
    return serve, chosen


def serve_depth(path: Path) -> list[str]:
    """`torchrest serve` for the depth file through the example task (port 0: `bench.bind` gives it one)."""
    return [
        *(sys.executable, "-m", "torchrest", "serve", "--model", str(path)),
        *("--task", "examples.tasks.depth:Depth", "--input-size", "256"),
        *("--host", "127.0.0.1", "--port", "0", "--log-level", "warning"),
    ]


def naive_depth(path: Path, workers: int = 1) -> list[str]:
    """The naive server (benchmark/baseline/naive_depth.py) for the depth file, under gunicorn (port 0), as
    benchmark/tasks.py serves the naive detector."""
    return [
        *(sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers)),
        *("--timeout", "120", "--chdir", str(ROOT / "benchmark" / "baseline"), "--log-level", "warning"),
        *("-b", "127.0.0.1:0", "--env", f"BASELINE_MODEL={path}", "--env", "BASELINE_SIZE=256", "naive_depth:app"),
    ]


def check_depth(name: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One answer of the server, checked: the keys of torchrest's /depth JSON and a 16-bit PNG at the photo's
    size. What it was, for the results."""
    command, port = bind(command)
    with serving(command, port, env=env) as url:
        answer = upload(url + "/depth", PHOTO)
    png = Image.open(io.BytesIO(base64.b64decode(answer.get("depth", ""))))
    found = {"keys": sorted(answer), "png": [png.mode, *png.size], "image": answer.get("image")}
    found |= {"min": answer.get("min"), "max": answer.get("max")}
    fits = set(answer) == {"status", "model", "image", "min", "max", "depth"} and answer["status"] == "success"
    if not fits or png.mode != "I;16" or png.size != Image.open(PHOTO).size:
        raise RuntimeError(f"{name}: an answer unlike torchrest's /depth: {found}")
    log(
        f"  {name} answers: a {png.mode} PNG of {png.size[0]} x {png.size[1]}, min {answer['min']:.4g}, "
        f"max {answer['max']:.4g}"
    )
    return found


def log_point(point: dict[str, Any]) -> None:
    one, many = point["1"], point["100"]
    log(
        f"    {one['req_per_s']:.1f} req/s at 1 connection (p50 {one['latency_ms']['p50']:.0f} ms), "
        f"{many['req_per_s']:.1f} at 100 (p99 {many['latency_ms']['p99']:.0f} ms)"
    )


# -- builtin ---------------------------------------------------------------------------------------------
def builtin(folder: Path, rounds: int, duration: float, before: str) -> dict[str, Any]:
    """This tree against `before`'s, checked out in a temporary worktree, on classify and detect."""
    commit = git("rev-parse", "--verify", f"{before}^{{commit}}").strip()
    worktree = folder / "before-tree"
    log(f"builtin: {before} ({commit[:12]}) in a temporary worktree, beside this working tree")
    git("worktree", "add", "--detach", str(worktree), commit)
    try:
        return compare_trees(folder, worktree, before, commit, rounds, duration)
    finally:
        git("worktree", "remove", "--force", str(worktree))
        log(f"  worktree {worktree} removed")


def compare_trees(
    folder: Path, worktree: Path, before: str, commit: str, rounds: int, duration: float
) -> dict[str, Any]:
    cache = folder / "cache"  # the default model's converted form, made once, read by both trees
    cache.mkdir()
    trees = {
        "before": (worktree, {**with_path(worktree), "TORCHREST_CACHE_DIR": str(cache)}),
        "after": (ROOT, {"TORCHREST_CACHE_DIR": str(cache)}),
    }
    imported = {}
    for name, (cwd, env) in trees.items():
        imported[name] = imported_from(cwd, env)
        log(f"  {name}: python -m torchrest imports {imported[name]}")
        if not Path(imported[name]).resolve().is_relative_to(cwd.resolve()):
            raise RuntimeError(f"the {name} tree's server would import {imported[name]}, not its own {cwd}")
    network = random_detector()
    detector = export_onnx(network, 640, folder / "detector.onnx")
    log(f"  a YOLOv8n-sized detector ({parameters(network) / 1e6:.2f} M parameters) exported to {detector.name}")
    commands = {"classify": serve_default(), "detect": serve_detector(detector)}
    served = {}
    for name, (cwd, env) in trees.items():  # the first start converts the default model; later ones read it
        started = time.monotonic()
        command, port = bind(commands["classify"])
        with serving(command, port, env=env, cwd=cwd) as url, urllib.request.urlopen(url + "/", timeout=10) as page:
            served[name] = json.loads(page.read()).get("backend")
        log(f"  {name}: the default model ready in {time.monotonic() - started:.1f} s (backend {served[name]})")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {work: {tree: [] for tree in TREES} for work in WORKLOADS}
    for number in range(rounds):
        order = TREES if number % 2 == 0 else TREES[::-1]
        for work, (route, photo) in WORKLOADS.items():
            for tree in order:
                cwd, env = trees[tree]
                log(f"  round {number + 1}/{rounds}: {work}, {tree}")
                runs[work][tree].append(measure(commands[work], route, photo, duration, env, cwd))
                log_point(runs[work][tree][-1])
    results: dict[str, Any] = {"before": before, "commit": commit, "imported": imported, "backend": served}
    results["detector_parameters"] = parameters(network)
    for work in WORKLOADS:
        points = medians(runs[work])
        ratios = {c: share(points["after"][c]["req_per_s"], points["before"][c]["req_per_s"]) for c in ("1", "100")}
        results[work] = {"servers": points, "ratios": ratios}
        log(f"  {work}: after / before req/s " + ", ".join(f"{times(r)} at {c}" for c, r in ratios.items()))
    return results


def git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def imported_from(cwd: Path, env: dict[str, str]) -> str:
    """Where `python -m torchrest` run in `cwd` with `env` finds the package (-c, as -m, puts cwd first on
    sys.path)."""
    probe = "import torchrest; print(torchrest.__file__)"
    command = [sys.executable, "-c", probe]
    return subprocess.run(
        command, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.strip()


def serve_default() -> list[str]:
    """`torchrest serve` of the default model, as benchmark/tasks.py's embed part starts it (port 0)."""
    return [sys.executable, "-m", "torchrest", "serve", "--host", "127.0.0.1", "--port", "0"]


# -- report ----------------------------------------------------------------------------------------------
def share(a: float, b: float) -> float | None:
    """a / b; None where b is 0 (a server that answered nothing in time: JSON has no infinity)."""
    return a / b if b else None


def times(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}x"


def rows_of(servers: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, server in servers.items():
        for connections in ("1", "100"):
            point = server[connections]
            statuses = ", ".join(f"{s}: {c}" for s, c in sorted(point["statuses"].items()))
            rows.append(
                [
                    name,
                    connections,
                    f"{point['req_per_s']:.1f}",
                    f"{point['p50_ms']:.0f}",
                    f"{point['p99_ms']:.0f}",
                    statuses + (f"; socket errors {point['socket_errors']}" if point["socket_errors"] else ""),
                ]
            )
    return rows


HEADER = ["server", "connections", "req/s", "p50 ms", "p99 ms", "statuses"]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# A task of one's own",
        "",
        f"{results['platform']}; medians of {results['rounds']} interleaved rounds of {results['duration_s']:g} s "
        "(wrk). Depth and detector networks: random weights.",
        "",
    ]
    if "depth" in results:
        measured = results["depth"]
        lines += [
            "## Depth through `--task examples.tasks.depth:Depth` (256 x 256, ONNX, random weights)",
            "",
            f"A {measured['parameters'] / 1e6:.1f} M-parameter encoder-decoder; the astronaut photo "
            f"({measured['photo'][0]} x {measured['photo'][1]}) "
            "to POST /depth: a 16-bit PNG of the map at the photo's size in JSON. Both write the PNG at zlib "
            "level 1 (torchrest with zlib's run-length strategy; Pillow's default level, 6, would cost the naive "
            "server about twice as long). `torchrest` serves the ONNX file as it is (ONNX Runtime, as the naive "
            "server); `torchrest, optimized` serves what `torchrest optimize` made of the same network brought as "
            f"a .pt2, over {CANDIDATES} ({measured['optimized']['chosen']}). The random network's map is nearly "
            "flat (its range below), so its closeness gate checks little: bf16 or INT8 on a trained depth model "
            "must pass it on real photos.",
            "",
            *markdown_table(HEADER, rows_of(measured["servers"])),
            "",
            "- torchrest / naive req/s: "
            + "; ".join(
                f"{times(r)} at {c} connection{'s' if c != '1' else ''}" for c, r in measured["ratios"].items()
            ),
            "- torchrest, optimized / naive req/s: "
            + "; ".join(
                f"{times(r)} at {c} connection{'s' if c != '1' else ''}"
                for c, r in measured["optimized"]["ratios"].items()
            ),
            "",
        ]
    if "builtin" in results:
        compared = results["builtin"]
        lines += [
            f"## Built-in tasks through the public interface: this tree against {compared['before']} "
            f"({compared['commit'][:12]})",
            "",
            f"Both served by the same python, each from its own tree (before: {compared['imported']['before']}; "
            f"after: {compared['imported']['after']}); the default model's converted form (backend "
            f"{compared['backend'].get('after')}) made once and shared. Aim: after / before req/s at least "
            f"{1 - AIM:.2f} (within {AIM:.0%} of before, or faster).",
            "",
        ]
        rows = []
        for work in WORKLOADS:
            for connections in ("1", "100"):
                before, after = (compared[work]["servers"][tree][connections] for tree in TREES)
                part = compared[work]["ratios"][connections]
                rows.append(
                    [
                        work,
                        connections,
                        f"{before['req_per_s']:.1f}",
                        f"{after['req_per_s']:.1f}",
                        times(part, 3),
                        f"{before['p50_ms']:.0f} / {after['p50_ms']:.0f}",
                        f"{before['p99_ms']:.0f} / {after['p99_ms']:.0f}",
                        "n/a" if part is None else "yes" if part >= 1 - AIM else "no",
                    ]
                )
        header = ["task", "connections", "before req/s", "after req/s", "after / before", "p50 ms", "p99 ms"]
        lines += [*markdown_table([*header, f"within {AIM:.0%}"], rows), ""]
        lines += [
            "The classify rows: the default model, the cat photo; the detect rows: a YOLOv8n-sized network "
            "(640 x 640, --normalize unit), the astronaut photo. Statuses of every run:",
            "",
        ]
        for work in WORKLOADS:
            lines += [f"### {work}", "", *markdown_table(HEADER, rows_of(compared[work]["servers"])), ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    panels = [name for name in ("depth", "builtin") if name in results]
    figure, axes = side_by_side(len(panels))
    for axis, name in zip(axes, panels, strict=False):
        if name == "depth":
            connection_bars(axis, results["depth"]["servers"])
            axis.set_title("depth via --task examples.tasks.depth:Depth (random weights)")
        else:
            compared = results["builtin"]
            groups = [f"{work} @ {c}" for work in WORKLOADS for c in ("1", "100")]
            series = {
                f"{tree} ({compared['before']})" if tree == "before" else "after (this tree)": [
                    compared[work]["servers"][tree][c]["req_per_s"] for work in WORKLOADS for c in ("1", "100")
                ]
                for tree in TREES
            }
            grouped_bars(axis, groups, series, "req/s (log)")
            axis.set_yscale("log")
            axis.set_title("built-in tasks: before and after the public interface")
    save_figure(figure, axes, "A task of one's own", path)


if __name__ == "__main__":
    sys.exit(main())
