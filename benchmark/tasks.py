"""More than classification, measured on this machine in one interleaved run (random weights wherever a
detector or segmenter appears: none can be fetched here).

    python benchmark/tasks.py [--rounds 2] [--duration 20] [--skip detect,embed,segment] [--out DIR]

detect   a network of YOLOv8n's size (benchmark/task_networks.py: 3.2 M parameters, 640 x 640, the dense
         layout (N, 84, 8400)), exported to ONNX. First the file alone in ONNX Runtime on every core at
         batch 1, 2, 4 and 8 (images/s: the limit a server can approach). Then, each round, in turn:
         torchrest (`serve --model detector.onnx --task detect --input-size 640 --normalize unit`) and the
         naive server (benchmark/baseline/naive_detector.py: FastAPI, the same file in ONNX Runtime, Pillow
         letterbox, NMS in numpy, one request per call), wrk uploading a photo at 1 and at 100 connections:
         req/s, p50, p99, and every answer's status (a 504 is a request past its deadline).
embed    `torchrest serve` (the default model), POST /embed beside POST /classify, at 1 and 100 connections.
segment  a segmenter (benchmark/task_networks.py, 512 x 512, 21 classes at 128 x 128), a 1-megapixel photo at
         one connection: the request's p50, and what its answer costs (the class map mapped back onto the
         1 MP image and written as a PNG in JSON: torchrest.tasks.segment, timed here on the same map).

Medians over the rounds. Writes <out>/tasks.{json,md,png}; needs wrk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench import bind
from harness import (
    ROOT,
    connection_bars,
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
from task_networks import export_onnx, parameters, random_detector, random_segmenter

PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"
CAT = ROOT / "tests" / "data" / "cat.jpg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each wrk run")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: detect, embed, segment")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    results: dict[str, Any] = {"platform": platform_name(), "rounds": args.rounds, "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="tasks-bench-") as scratch:
        folder = Path(scratch)
        if "detect" not in skip:
            results["detect"] = detect(folder, args.rounds, args.duration)
        if "embed" not in skip:
            results["embed"] = embed(args.rounds, args.duration)
        if "segment" not in skip:
            results["segment"] = segment(folder, args.duration)
    write_results(args.out, "tasks", results, markdown, plot)
    return 0


# -- detect ----------------------------------------------------------------------------------------------
def detect(folder: Path, rounds: int, duration: float) -> dict[str, Any]:
    network = random_detector()
    path = export_onnx(network, 640, folder / "detector.onnx")
    log(f"detect: a YOLOv8n-sized network ({parameters(network) / 1e6:.2f} M parameters) exported to {path.name}")
    alone = onnx_runtime_alone(path, 640)
    log("  ONNX Runtime alone (images/s by batch): " + ", ".join(f"{b}: {r:.1f}" for b, r in alone.items()))
    runs: dict[str, list[dict[str, Any]]] = {"torchrest": [], "naive FastAPI": []}
    commands = (("torchrest", serve_detector(path)), ("naive FastAPI", naive_detector(path)))
    for number in range(rounds):
        for name, command in commands:
            log(f"  round {number + 1}/{rounds}: {name}")
            runs[name].append(measure(command, "/detect", PHOTO, duration))
    return {"parameters": parameters(network), "onnx_runtime_alone": alone, "servers": medians(runs)}


def serve_detector(path: Path, extra: Sequence[str] = ()) -> list[str]:
    """`torchrest serve` for the detector file (port 0: `bench.bind` gives it one)."""
    return [
        *(sys.executable, "-m", "torchrest", "serve", "--model", str(path), "--task", "detect"),
        *("--input-size", "640", "--normalize", "unit", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"),
        *extra,
    ]


def naive_detector(path: Path, workers: int = 1) -> list[str]:
    """The naive server (benchmark/baseline/naive_detector.py) for the detector file, under gunicorn (port 0)."""
    return [
        *(sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers)),
        *("--timeout", "120", "--chdir", str(ROOT / "benchmark" / "baseline"), "--log-level", "warning"),
        *("-b", "127.0.0.1:0", "--env", f"BASELINE_MODEL={path}", "--env", "BASELINE_SIZE=640", "naive_detector:app"),
    ]


def onnx_runtime_alone(path: Path, size: int, seconds: float = 4.0) -> dict[int, float]:
    """Images/s of the file alone in ONNX Runtime on every core, by batch size (the median call)."""
    import onnxruntime as ort

    from torchrest.timing import median_call_s

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rates = {}
    for batch in (1, 2, 4, 8):
        pixels = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        rates[batch] = batch / median_call_s(lambda x: session.run(None, {name: x}), pixels, seconds)
    return rates


def measure(command: list[str], route: str, photo: Path, duration: float) -> dict[str, Any]:
    """One server: wrk at 1, then 100 connections, counting statuses."""
    command, port = bind(command)
    with serving(command, port, health="/health") as url:
        wrk(url + route, 1, 3, photo, "statuses.lua", env={"URL_PATH": route})  # warm-up
        one = wrk(url, 1, duration, photo, "statuses.lua", env={"URL_PATH": route})
        many = wrk(url, 100, duration, photo, "statuses.lua", env={"URL_PATH": route})
    return {"1": one, "100": many}


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each server's medians over the rounds, at each connection count."""
    out: dict[str, Any] = {}
    for name, rounds in runs.items():
        out[name] = {}
        for connections in ("1", "100"):
            taken = [r[connections] for r in rounds]
            out[name][connections] = {
                # answered: the 200s per second (a 503 answers quickly, and wrk counts it as a request)
                "req_per_s": statistics.median(t.get("statuses", {}).get("200", 0) / t["duration_s"] for t in taken),
                "all_per_s": statistics.median(t["req_per_s"] for t in taken),
                "p50_ms": statistics.median(t["latency_ms"]["p50"] for t in taken),
                "p99_ms": statistics.median(t["latency_ms"]["p99"] for t in taken),
                "statuses": merged(t.get("statuses", {}) for t in taken),
                "socket_errors": sum(t["error_count"] - t["errors"]["status"] for t in taken),
                "rounds": [t["req_per_s"] for t in taken],
            }
    return out


def merged(statuses: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in statuses:
        for status, count in counts.items():
            total[status] = total.get(status, 0) + count
    return total


# -- embed -----------------------------------------------------------------------------------------------
def embed(rounds: int, duration: float) -> dict[str, Any]:
    log("embed: the default model, /embed beside /classify")
    command, port = bind([sys.executable, "-m", "torchrest", "serve", "--host", "127.0.0.1", "--port", "0"])
    runs: dict[str, list[dict[str, Any]]] = {"/classify": [], "/embed": []}
    with serving(command, port) as url:
        for route in ("/classify", "/embed"):
            wrk(url, 8, 3, CAT, "statuses.lua", env={"URL_PATH": route})  # warm-up
        for number in range(rounds):
            for route in ("/classify", "/embed") if number % 2 == 0 else ("/embed", "/classify"):
                log(f"  round {number + 1}/{rounds}: {route}")
                one = wrk(url, 1, duration, CAT, "statuses.lua", env={"URL_PATH": route})
                many = wrk(url, 100, duration, CAT, "statuses.lua", env={"URL_PATH": route})
                runs[route].append({"1": one, "100": many})
    return medians(runs)


# -- segment ---------------------------------------------------------------------------------------------
def segment(folder: Path, duration: float) -> dict[str, Any]:
    from torchrest.tasks.base import Answer, Geometry
    from torchrest.tasks.segment import Segment, SegmentHead

    network = random_segmenter()
    path = export_onnx(network, 512, folder / "segmenter.onnx")
    photo = folder / "one-megapixel.jpg"
    Image.open(PHOTO).convert("RGB").resize((1155, 866), Image.Resampling.BICUBIC).save(photo, quality=90)
    log(f"segment: a {parameters(network) / 1e6:.2f} M-parameter segmenter, 512 x 512, a 1155 x 866 photo")
    command = [
        *(sys.executable, "-m", "torchrest", "serve", "--model", str(path), "--task", "segment"),
        *("--input-size", "512", "--normalize", "unit", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"),
    ]
    command, port = bind(command)
    with serving(command, port) as url:
        wrk(url, 1, 3, photo, "statuses.lua", env={"URL_PATH": "/segment"})
        request = wrk(url, 1, duration, photo, "statuses.lua", env={"URL_PATH": "/segment"})
    # the answer's own cost: the engine's 128 x 128 class map of a letterboxed 1155 x 866 image, mapped back
    # onto it and written as PNG in JSON, as the front-end does it for this request
    scale = 512 / 1155
    geometry = Geometry(1155, 866, scale, scale, 0.0, float((512 - round(866 * scale)) // 2))
    blocks = np.random.default_rng(0).integers(0, 21, (16, 16)).astype(np.uint8)
    class_map = blocks.repeat(8, axis=0).repeat(8, axis=1)  # regions, as a segmenter's map has them
    head = SegmentHead(0, 21, (512, 512))
    answer = Answer(class_map, -1, geometry)
    labels = [f"class_{i}" for i in range(21)]
    timings = []
    for _ in range(60):
        started = time.perf_counter()
        body, _ = Segment().http_body(answer, None, head, labels, "segmenter", "application/json")
        timings.append(time.perf_counter() - started)
    answer_ms = statistics.median(timings[10:]) * 1000
    p50 = request["latency_ms"]["p50"]
    log(f"  request p50 {p50:.1f} ms; its answer {answer_ms:.2f} ms ({answer_ms / p50:.1%}), {len(body)} bytes")
    return {
        "parameters": parameters(network),
        "request": {"req_per_s": request["req_per_s"], "p50_ms": p50, "p99_ms": request["latency_ms"]["p99"]},
        "answer_ms": answer_ms,
        "answer_share": answer_ms / p50,
        "answer_bytes": len(body),
        "statuses": request.get("statuses", {}),
    }


# -- report ----------------------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# More than classification",
        "",
        f"{results['platform']}; medians of {results['rounds']} interleaved rounds of {results['duration_s']:g} s "
        "(wrk). Detector and segmenter: random weights.",
        "",
    ]
    if "detect" in results:
        detected = results["detect"]
        alone = detected["onnx_runtime_alone"]
        best = max(alone.values())
        lines += ["## Detection (YOLOv8n-sized, 640 x 640, ONNX)", ""]
        lines += [
            "ONNX Runtime alone, images/s by batch: "
            + ", ".join(f"{b}: {r:.1f}" for b, r in alone.items())
            + f" (best {best:.1f})",
            "",
        ]
        rows = []
        for name, server in detected["servers"].items():
            for connections in ("1", "100"):
                point = server[connections]
                rows.append(
                    [
                        name,
                        connections,
                        f"{point['req_per_s']:.1f}",
                        f"{point['p50_ms']:.0f}",
                        f"{point['p99_ms']:.0f}",
                        ", ".join(f"{s}: {c}" for s, c in sorted(point["statuses"].items())),
                    ]
                )
        lines += markdown_table(["server", "connections", "req/s", "p50 ms", "p99 ms", "statuses"], rows)
        ours, naive = detected["servers"]["torchrest"], detected["servers"]["naive FastAPI"]
        lines += [
            "",
            f"- torchrest at 100 connections: {ratio(ours['100']['req_per_s'], best):.0%} of the file alone at "
            "its best batch; "
            f"{ratio(ours['100']['req_per_s'], naive['100']['req_per_s']):.2f}x the naive server's req/s; p99 "
            f"{ratio(ours['100']['p99_ms'], naive['100']['p99_ms']):.2f}x the naive server's",
            f"- at 1 connection: p50 {ratio(ours['1']['p50_ms'], naive['1']['p50_ms']):.2f}x the naive server's",
            "",
        ]
    if "embed" in results:
        embedded = results["embed"]
        lines += ["## /embed beside /classify (the default model)", ""]
        rows = []
        for connections in ("1", "100"):
            classify, embed_point = embedded["/classify"][connections], embedded["/embed"][connections]
            rows.append(
                [
                    connections,
                    f"{classify['req_per_s']:.1f}",
                    f"{embed_point['req_per_s']:.1f}",
                    f"{ratio(embed_point['req_per_s'], classify['req_per_s']):.2f}x",
                ]
            )
        lines += [*markdown_table(["connections", "/classify req/s", "/embed req/s", "ratio"], rows), ""]
    if "segment" in results:
        segmented = results["segment"]
        lines += [
            "## Segmentation's answer (1 MP photo, one connection)",
            "",
            f"request p50 {segmented['request']['p50_ms']:.1f} ms; the answer (mask back at 1155 x 866, PNG, JSON) "
            f"{segmented['answer_ms']:.2f} ms: {segmented['answer_share']:.1%} of it "
            f"({segmented['answer_bytes']} bytes)",
            "",
        ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    panels = [name for name in ("detect", "embed") if name in results]
    figure, axes = side_by_side(len(panels))
    for axis, name in zip(axes, panels, strict=False):
        connection_bars(axis, results[name]["servers"] if name == "detect" else results[name])
        axis.set_title("detection (YOLOv8n-sized, random weights)" if name == "detect" else "/embed beside /classify")
    save_figure(figure, axes, "More than classification", path)


if __name__ == "__main__":
    sys.exit(main())
