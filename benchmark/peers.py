"""torchrest beside the servers a PyTorch vision user would pick instead, fairly, in one command.

    python benchmark/peers.py [--quick] [--only mosec,litserve] [--rounds 3] [--rows torch,optimized,detect]
    python benchmark/peers.py --rows detect [--detector-folder model-repository/detector]
    python benchmark/peers.py --export-detector detector.pt2    (the detection row's network, for optimize)

Peers: mosec, LitServe, Ray Serve, KServe's ModelServer, BentoML, TorchServe and the naive FastAPI
baseline. Each peer's server is a short file in benchmark/peers/, written from its documentation, run
from its own virtual environment (.peers/<name>, installed from PyPI on first use, pinned below).

Fair by construction:
    - one model and one artifact per row: EfficientNet-Lite0 (published ImageNet weights) in torch eager
      fp32 (the same weights file), and the file `torchrest optimize` chose (OpenVINO); the detection row
      (below) one ONNX file;
    - the same pre-processing result (resize 256 antialiased, centre crop 224), each peer decoding
      with Pillow as its docs do; every server must answer "Egyptian cat" for cat.jpg first;
    - the same thread budget: each peer's inference processes x threads = the machine's cores;
    - each peer's settings (processes x threads, batch size) tuned over a small grid at 100
      connections first; the best is what is measured, and every grid point is recorded;
    - interleaved rounds (every server once, then again), medians; wrk at 1, 8, 32 and 100
      connections, then the open loop at 50% and 80% of that server's own capacity.

The detection row (`--rows detect`): a YOLOv8n-sized network (benchmark/task_networks.py, random weights
with BatchNorm calibrated on tests/data so that its boxes depend on the photo), 640 x 640, the dense layout
(N, 84, 8400), as one ONNX file. torchrest serves it (`serve --model detector.onnx --task detect`), and,
with --detector-folder, the model folder `torchrest optimize` wrote for that file; the naive FastAPI
server (benchmark/baseline/naive_detector.py), LitServe and mosec serve it in ONNX Runtime with Pillow's
letterbox and NMS in numpy (benchmark/peers/detector.py), batching as their docs show (the other peers
are not in this row). Every server's boxes for astronaut.jpg
must match the reference (ONNX Runtime in this process, same letterbox and NMS: as many boxes, the same
classes, IoU >= 0.9 each) before it is measured. Tuned over the same grid, then wrk at 1 and 100
connections (20 s each; --quick: 10 s, no tuning); req/s counts the 2xx answers only (torchrest answers
503 to what its queue would keep past the deadline).

Writes benchmark/results/<date>/peers.{json,md,png}. Needs wrk, python3.11 (for the peers'
environments) and Java 17 for TorchServe (apt-get install openjdk-17-jre-headless).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import baseline_command, bind, ensure_optimized
from harness import (
    ROOT,
    free_port,
    idle_latency_ms,
    latency_bars,
    log,
    markdown_table,
    platform_name,
    save_figure,
    serving,
    settle,
    torchrest_command,
    wrk,
)
from openloop import fetch, multipart_request, open_loop, post, raw_request
from task_networks import export_onnx, parameters, random_detector
from tasks import PHOTO as DETECT_PHOTO
from tasks import naive_detector, serve_detector

from torchrest.layout import splits  # processes x threads, as torchrest lays out instances

PEERS_DIR = ROOT / "benchmark" / "peers"
VENVS = ROOT / ".peers"
MODEL = "efficientnet_lite0"
EXPECTED = "Egyptian cat"
# Waiting for a server to drain what a run left queued ends here: BentoML's adaptive batcher keeps a
# longer wait for a while after a burst, so its lone requests stay slower than its idle latency.
SETTLE_LIMIT_S = 15.0
COMMON = ("torch==2.13.0", "openvino==2026.4.1", "numpy==2.4.6", "pillow==13.0.0")
ONNXRUNTIME = "onnxruntime==1.32.0"  # the detection row's runtime: the version torchrest's environment has
# The detector's BatchNorm statistics are measured on these (task_networks.random_detector)
DETECT_CALIBRATION = tuple(sorted((ROOT / "tests" / "data").glob("*.jpg")))
MIN_IOU = 0.9  # each box a server gives against the reference's


@dataclass(frozen=True)
class Settings:
    """How a server is laid out: inference processes x threads each, the batch cap and wait."""

    workers: int = 1
    threads: int = 1
    max_batch: int = 1
    wait_ms: int = 0

    def describe(self) -> str:
        batch = f", batch <= {self.max_batch}" + (f", wait {self.wait_ms} ms" if self.wait_ms else "")
        return f"{self.workers} x {self.threads} threads" + (batch if self.max_batch > 1 else "")


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]  # pinned PyPI requirements of its own environment (empty: ours)
    request: str  # multipart (curl -F), raw (the JPEG as the body), json or v2 (both base64 in JSON)
    path: str
    health: str
    grid: Callable[[int], list[Settings]]  # cores -> the settings tried
    command: Callable[[Settings, int, Path, str], tuple[list[str], dict[str, str]]]  # -> argv, env
    note: str = ""
    after_stop: Callable[[int], None] | None = None  # (port): what outlives the process group, stopped
    detects: bool = False  # serves the detection row too (PEER_TASK=detect; ONNXRUNTIME among its packages)


def batching_grid(wait_ms: int) -> Callable[[int], list[Settings]]:
    return lambda cores: [Settings(w, t, b, wait_ms) for w, t in splits(cores) for b in (2, 8)]


def peer_python(name: str) -> str:
    return str(VENVS / name / "bin" / "python")


def peer_env(settings: Settings, backend: str) -> dict[str, str]:
    return {
        "PEER_WORKERS": str(settings.workers),
        "PEER_THREADS": str(settings.threads),
        "PEER_MAX_BATCH": str(settings.max_batch),
        "PEER_WAIT_MS": str(settings.wait_ms),
        "PEER_BACKEND": backend,
        "OMP_NUM_THREADS": str(settings.threads),
    }


def mosec(settings: Settings, port: int, work: Path, backend: str) -> tuple[list[str], dict[str, str]]:
    argv = [peer_python("mosec"), "mosec_server.py", "--port", str(port), "--address", "127.0.0.1"]
    return [*argv, "--timeout", "30000"], peer_env(settings, backend) | {"PEER_DECODERS": "1"}


def litserve(settings: Settings, port: int, work: Path, backend: str) -> tuple[list[str], dict[str, str]]:
    return [peer_python("litserve"), "litserve_server.py"], peer_env(settings, backend) | {"PEER_PORT": str(port)}


def rayserve(settings: Settings, port: int, work: Path, backend: str) -> tuple[list[str], dict[str, str]]:
    env = peer_env(settings, backend) | {"PEER_PORT": str(port), "RAY_USAGE_STATS_ENABLED": "0"}
    return [peer_python("rayserve"), "rayserve_server.py"], env | {"RAY_TMPDIR": str(work)}


def stop_ray(port: int) -> None:
    """Ray's cluster processes outlive the driver's process group."""
    subprocess.run([str(VENVS / "rayserve" / "bin" / "ray"), "stop", "--force"], capture_output=True)


def kserve(settings: Settings, port: int, work: Path, backend: str) -> tuple[list[str], dict[str, str]]:
    argv = [peer_python("kserve"), "kserve_server.py", "--http_port", str(port), "--grpc_port", str(free_port())]
    return [*argv, "--workers", str(settings.workers), "--enable_grpc", "false"], peer_env(settings, backend)


def bentoml(settings: Settings, port: int, work: Path, backend: str) -> tuple[list[str], dict[str, str]]:
    argv = [str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "bentoml_service:ClassifierService"]
    env = peer_env(settings, backend) | {"BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    return [*argv, "--host", "127.0.0.1", "--port", str(port)], env


def torchserve(settings: Settings, port: int, work: Path, backend: str) -> tuple[list[str], dict[str, str]]:
    """The model archive (handler + classifier.py) and config.properties, then `torchserve --foreground`."""
    bin_dir = VENVS / "torchserve" / "bin"
    store = work / f"torchserve-{port}"
    store.mkdir()
    subprocess.run(
        [str(bin_dir / "torch-model-archiver"), "--model-name", MODEL, "--version", "1.0"]
        + ["--handler", str(PEERS_DIR / "torchserve_handler.py"), "--extra-files", str(PEERS_DIR / "classifier.py")]
        + ["--export-path", str(store), "--force"],
        check=True,
    )
    model = {
        "marName": f"{MODEL}.mar",
        "minWorkers": settings.workers,
        "maxWorkers": settings.workers,
        "batchSize": settings.max_batch,
        "maxBatchDelay": settings.wait_ms,
        "responseTimeout": 120,
    }
    properties = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{free_port()}",
        "metrics_address": f"http://127.0.0.1:{free_port()}",
        "model_store": str(store),
        "load_models": f"{MODEL}.mar",
        "models": json.dumps({MODEL: {"1.0": model}}),
        "disable_token_authorization": "true",
        "enable_envvars_config": "true",
        "default_workers_per_model": str(settings.workers),
        "job_queue_size": "1000",  # the default, 100, answers 503 to the 101st waiting request
    }
    (store / "config.properties").write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    argv = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth"]
    # TMPDIR: TorchServe keeps its pid file there, and refuses to start while an earlier one's remains.
    env = peer_env(settings, backend) | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(store)}
    env |= {"LOG_LOCATION": str(store), "METRICS_LOCATION": str(store)}
    return [*argv, "--model-store", str(store), "--ts-config", str(store / "config.properties")], env


def wait_for_torchserve_jvm(port: int) -> None:
    """TorchServe's JVM takes seconds to shut down after its launcher is gone."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", f"torchserve-{port}"]).returncode == 0:
        time.sleep(0.5)


PEERS: tuple[Peer, ...] = (
    Peer(
        "mosec",
        ("mosec==0.9.8", ONNXRUNTIME),
        "raw",
        "/classify",
        "/",
        batching_grid(10),
        mosec,
        "a decode process, then the batched inference processes",
        detects=True,
    ),
    Peer(
        "litserve",
        ("litserve==0.2.19", ONNXRUNTIME),
        "json",
        "/classify",
        "/health",
        batching_grid(10),
        litserve,
        "the image as base64 JSON: a multipart upload cannot reach its workers",
        detects=True,
    ),
    Peer(
        "rayserve",
        ("ray[serve]==2.60.0", "python-multipart==0.0.34"),
        "multipart",
        "/classify",
        "/-/healthz",
        batching_grid(10),
        rayserve,
        after_stop=stop_ray,
    ),
    Peer(
        "kserve",
        ("kserve==0.21.0",),
        "v2",
        f"/v2/models/{MODEL}/infer",
        "/v2/health/ready",
        lambda cores: [Settings(w, t) for w, t in splits(cores)],
        kserve,
        "no batching: the ModelServer has none (KServe batches in a Kubernetes sidecar)",
    ),
    Peer(
        "bentoml",
        ("bentoml==1.4.40",),
        "multipart",
        "/classify",
        "/readyz",
        batching_grid(0),
        bentoml,
        "adaptive batching: BentoML picks the wait itself",
    ),
    Peer(
        "torchserve",
        ("torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml==6.0.4"),
        "raw",
        f"/predictions/{MODEL}",
        "/ping",
        batching_grid(10),
        torchserve,
        after_stop=wait_for_torchserve_jvm,
    ),
)


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    connections: tuple[int, ...] = (1, 8, 32, 100)
    wrk_s: float = 5.0
    warm_up_s: float = 3.0
    open_loop_s: float = 5.0
    open_loop_shares: tuple[float, ...] = (0.5, 0.8)
    grid_s: float = 5.0  # each grid point at 100 connections (0: take the first point, no tuning)


FULL = Plan()
QUICK = Plan(rounds=1, wrk_s=2, warm_up_s=1, open_loop_s=2, grid_s=0)
# The detector runs about 11 images/s on 2 cores: at 100 connections a server is filling its queue for the
# first 9 s (the naive server, 40 requests at once on its thread pool, answers none for over 10 s), so each
# run is 20 s, grid points and --quick too (one round, no tuning: about 6 minutes)
DETECT_FULL = Plan(connections=(1, 100), wrk_s=20, warm_up_s=5, open_loop_shares=(), grid_s=20)
DETECT_QUICK = Plan(rounds=1, connections=(1, 100), wrk_s=20, warm_up_s=3, open_loop_shares=(), grid_s=0)


def label_check(body: bytes) -> str:
    """A classification row's answer: "Egyptian cat" for cat.jpg."""
    if EXPECTED.encode() not in body:
        raise ValueError(f"not {EXPECTED!r}: {body[:300]!r}")
    return EXPECTED


@dataclass
class Contender:
    """One server in one row, with the settings it is measured at."""

    name: str
    request: str
    path: str
    health: str
    start: Callable[[Settings, int, Path], tuple[list[str], dict[str, str], Path]]  # -> argv, env, cwd
    grid: list[Settings]
    settings: Settings = field(default_factory=Settings)
    note: str = ""
    describe: Callable[[Settings], str] = Settings.describe
    after_stop: Callable[[int], None] | None = None
    check: Callable[[bytes], str] = label_check  # a 200's body -> what was checked; ValueError if wrong


@dataclass
class Row:
    """One table of the report: its servers, how they are measured, the photo they are sent."""

    contenders: list[Contender]
    plan: Plan
    image: Path


def contenders(row: str, repository: Path, cores: int, only: set[str] | None) -> list[Contender]:
    """torchrest, the naive baseline and every peer, for row `torch` or `optimized`."""
    backend = "openvino" if row == "optimized" else "torch"

    def torchrest(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        if row == "optimized":  # the layout optimize measured, from config.json
            return torchrest_command(MODEL, port, ["--model-repository", str(repository)]), {}, ROOT
        layout = ["--instances", str(settings.workers), "--threads", str(settings.workers * settings.threads)]
        return torchrest_command(MODEL, port, [*layout, "--max-batch-size", str(settings.max_batch)]), {}, ROOT

    def naive(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        command = baseline_command(MODEL, settings.workers)
        if row == "optimized":
            app = command.index("naive_server:app")
            command[app:app] = ["--env", f"BASELINE_REPOSITORY={repository}"]
        return bind(command, port)[0], {}, ROOT

    def peer_start(peer: Peer) -> Callable[[Settings, int, Path], tuple[list[str], dict[str, str], Path]]:
        def start(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
            argv, env = peer.command(settings, port, work, backend)
            return argv, env | {"PEER_SOURCE": str(ROOT), **model_env(row, repository, work)}, PEERS_DIR

        return start

    if row == "optimized":
        layout = json.loads((repository / MODEL / "config.json").read_text())["layout"]
        ours = Contender(
            "torchrest",
            "multipart",
            "/classify",
            "/health",
            torchrest,
            [Settings(layout["instances"], layout["threads"], layout["max_batch_size"])],
            describe=lambda settings: f"config.json: {settings.describe()}",
            note="the layout `torchrest optimize` chose",
        )
    else:
        ours = Contender("torchrest", "multipart", "/classify", "/health", torchrest, batching_grid(0)(cores))
    everyone = [
        ours,
        naive_contender("/classify", naive, "the model called per request, in the handler"),
        *(
            Contender(
                p.name, p.request, p.path, p.health, peer_start(p), p.grid(cores), note=p.note, after_stop=p.after_stop
            )
            for p in PEERS
        ),
    ]
    return [c for c in everyone if only is None or c.name in only or c.name == "torchrest"]


def naive_contender(
    route: str, start: Callable[[Settings, int, Path], tuple[list[str], dict[str, str], Path]], note: str
) -> Contender:
    """The naive FastAPI server of a row: one or two gunicorn workers, each calling the model per request."""
    return Contender(
        "naive FastAPI",
        "multipart",
        route,
        "/health",
        start,
        [Settings(workers) for workers in (1, 2)],
        note=note,
        describe=lambda settings: f"{settings.workers} gunicorn worker(s)",
    )


def model_env(row: str, repository: Path, work: Path) -> dict[str, str]:
    if row == "optimized":
        config = json.loads((repository / MODEL / "config.json").read_text())
        artifact = repository / MODEL / config["artifact"]
        return {"PEER_MODEL": str(artifact), "PEER_LABELS": str(work / "labels.txt")}
    from torchrest.models.efficientnet_lite import published_lite0_weights

    return {"PEER_MODEL": str(published_lite0_weights()), "PEER_LABELS": str(work / "labels.txt")}


# -- the detection row -------------------------------------------------------------------------------------
OPTIMIZED_DETECTOR = "torchrest, optimized"


def detect_contenders(
    model: Path, folder: Path | None, cores: int, only: set[str] | None, reference: list[dict[str, Any]]
) -> list[Contender]:
    """torchrest serving the ONNX file (and, given, the folder `torchrest optimize` wrote for it), the naive
    server and the peers that serve a detector with their docs' code, each checked against `reference`."""
    check = boxes_check(reference)

    def torchrest(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        layout = ["--instances", str(settings.workers), "--threads", str(settings.workers * settings.threads)]
        return bind(serve_detector(model, [*layout, "--max-batch-size", str(settings.max_batch)]), port)[0], {}, ROOT

    def naive(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        return bind(naive_detector(model, settings.workers), port)[0], {}, ROOT

    def peer_start(peer: Peer) -> Callable[[Settings, int, Path], tuple[list[str], dict[str, str], Path]]:
        def start(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
            argv, env = peer.command(settings, port, work, "onnxruntime")
            return argv, env | {"PEER_TASK": "detect", "PEER_MODEL": str(model)}, PEERS_DIR

        return start

    everyone = [
        Contender(
            "torchrest", "multipart", "/detect", "/health", torchrest, batching_grid(0)(cores), note="the file as is"
        ),
        *([optimized_detector(folder)] if folder is not None else []),
        naive_contender("/detect", naive, "the file called per request, in the handler"),
        *(
            Contender(p.name, p.request, "/detect", p.health, peer_start(p), p.grid(cores), note=p.note)
            for p in PEERS
            if p.detects
        ),
    ]
    for contender in everyone:
        contender.check = check
    return [c for c in everyone if only is None or c.name in only or c.name.startswith("torchrest")]


def optimized_detector(folder: Path) -> Contender:
    """torchrest serving a model folder `torchrest optimize` wrote (config.json: the artifact, the task, the
    input and the layout it chose), as bench.py serves the classifier's: --model-repository and its name."""
    config = json.loads((folder / "config.json").read_text())
    layout = config.get("layout")
    chose = config.get("candidate") or config["backend"]

    def start(settings: Settings, port: int, work: Path) -> tuple[list[str], dict[str, str], Path]:
        return torchrest_command(folder.name, port, ["--model-repository", str(folder.parent)]), {}, ROOT

    if layout:
        settings = Settings(layout["instances"], layout["threads"], layout.get("max_batch_size") or 1)
        text = f"config.json: {chose}, " + settings.describe()
    else:
        settings, text = Settings(), f"config.json: {chose}, the server's own layout"
    return Contender(
        OPTIMIZED_DETECTOR,
        "multipart",
        "/detect",
        "/health",
        start,
        [settings],
        note=f"the folder `torchrest optimize` wrote ({folder})",
        describe=lambda _: text,
    )


def detection_model(path: Path) -> dict[str, Any]:
    """The detection row's network (random weights, BatchNorm calibrated on DETECT_CALIBRATION:
    task_networks.random_detector) written to `path`: ONNX, or a torch.export program where `path` ends in
    .pt2 (what `torchrest optimize` takes); what it is."""
    network = random_detector(calibration=DETECT_CALIBRATION)
    if path.suffix == ".pt2":
        import torch

        from torchrest.export import export_program

        torch.export.save(export_program(network, torch.rand(2, 3, 640, 640)), str(path))
    else:
        export_onnx(network, 640, path)
    return {
        "network": "YOLOv8n-sized, 640 x 640, dense layout (N, 84, 8400) (benchmark/task_networks.py)",
        "weights": "random (seed 0), BatchNorm statistics measured on "
        + ", ".join(photo.name for photo in DETECT_CALIBRATION),
        "parameters": parameters(network),
        "photo": DETECT_PHOTO.name,
    }


def reference_detections(model: Path, photo: Path) -> list[dict[str, Any]]:
    """The boxes every server must give for `photo`: ONNX Runtime in this process, with the letterbox and
    NMS the peers use (benchmark/peers/detector.py; torchrest's own are other code)."""
    sys.path.insert(0, str(PEERS_DIR))
    import detector

    pixels, placement = detector.letterbox(photo.read_bytes())
    found: list[dict[str, Any]] = detector.Detector(str(model)).detect(pixels[None], [placement])[0]
    return found


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes; two empty ones (a box clipped to the image's
    edge) overlap fully where they lie within a pixel of each other."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    if union > 0:
        return width * height / union
    return 1.0 if max(abs(p - q) for p, q in zip(a, b, strict=True)) < 1 else 0.0


def matched_boxes(found: list[dict[str, Any]], reference: list[dict[str, Any]], min_iou: float = MIN_IOU) -> str:
    """Whether `found` are the reference's detections: as many, and each reference box paired with a box of
    its class overlapping it by `min_iou` or more (the best one not paired yet; the order may differ where
    scores tie). What matched, or ValueError with the first mismatch."""
    if len(found) != len(reference):
        raise ValueError(f"{len(found)} boxes, the reference has {len(reference)}")
    free, worst = list(found), 1.0
    for wanted in reference:
        mine = [box for box in free if box["class_id"] == wanted["class_id"]]
        best = max(mine, key=lambda box: iou(box["box"], wanted["box"]), default=None)
        overlap = iou(best["box"], wanted["box"]) if best is not None else 0.0
        if best is None or overlap < min_iou:
            raise ValueError(
                f"no box of class {wanted['class_id']} overlaps {[round(v) for v in wanted['box']]} by "
                f"IoU >= {min_iou} (best {overlap:.2f})"
            )
        free.remove(best)
        worst = min(worst, overlap)
    classes = len({box["class_id"] for box in reference})
    return f"{len(reference)} boxes of {classes} classes, IoU >= {worst:.3f}"


def boxes_check(reference: list[dict[str, Any]]) -> Callable[[bytes], str]:
    """A detection row's answer check: the body's "detections" against the reference's."""

    def check(body: bytes) -> str:
        try:
            found = json.loads(body)["detections"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"no detections in {body[:300]!r}") from None
        return matched_boxes(found, reference)

    return check


def ensure_environment(peer: Peer) -> dict[str, str]:
    """.peers/<name>: a virtual environment with the peer's pinned packages; their installed versions."""
    venv, wanted = VENVS / peer.name, " ".join(COMMON + peer.packages)
    stamp = venv / ".spec"
    if not stamp.is_file() or stamp.read_text().strip() != wanted:
        log(f"  installing {peer.name} into {venv} ({wanted})")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([_python311(), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *COMMON, *peer.packages], check=True)
        stamp.write_text(wanted)
    listed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    names = {package.split("==")[0].split("[")[0] for package in COMMON + peer.packages}
    versions = {p["name"]: p["version"] for p in json.loads(listed) if p["name"].lower() in names}
    if peer.name == "torchserve" and shutil.which("java"):  # its front-end is Java
        shown = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
        versions["java"] = shown[0] if shown else "unknown"
    return versions


def _python311() -> str:
    return shutil.which("python3.11") or sys.executable


def request_bytes(contender: Contender, url: str, image: bytes) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    if contender.request in JSON_BODIES:
        return post("127.0.0.1", port, contender.path, "application/json", JSON_BODIES[contender.request](image))
    build = raw_request if contender.request == "raw" else multipart_request
    return build("127.0.0.1", port, image, contender.path)


def json_body(image: bytes) -> bytes:
    """LitServe's image input: {"image": "<base64>"}."""
    return json.dumps({"image": base64.b64encode(image).decode()}).encode()


def v2_json_body(image: bytes) -> bytes:
    """An Open Inference Protocol request in JSON: one BYTES element, the base64 JPEG."""
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor]}).encode()


JSON_BODIES: dict[str, Callable[[bytes], bytes]] = {"json": json_body, "v2": v2_json_body}


def wrk_args(contender: Contender, work: Path, image: Path) -> tuple[str, dict[str, str]]:
    """The wrk script for the contender's request (a JSON body is written to a file for body.lua)."""
    if contender.request in JSON_BODIES:
        body = work / f"body-{contender.request}-{image.stem}.json"
        if not body.is_file():
            body.write_bytes(JSON_BODIES[contender.request](image.read_bytes()))
        return "body.lua", {"URL_PATH": contender.path, "BODY_FILE": str(body)}
    return {"multipart": "upload.lua", "raw": "raw.lua"}[contender.request], {"URL_PATH": contender.path}


class Started:
    """A contender's server, up and giving the right answer for `image` (`checked` says what was checked)."""

    def __init__(self, contender: Contender, settings: Settings, work: Path, image: Path) -> None:
        self.contender, self.settings, self.work, self.image = contender, settings, work, image
        self.checked = ""

    def __enter__(self) -> str:
        self.port = port = free_port()
        argv, env, cwd = self.contender.start(self.settings, port, self.work)
        self._serving = serving(argv, port, env, cwd, self.contender.health)
        url = self._serving.__enter__()
        try:
            self.checked = check_answer(self.contender, url, self.image)
        except BaseException:
            self._serving.__exit__(*sys.exc_info())
            raise
        return url

    def __exit__(self, *exc: object) -> None:
        self._serving.__exit__(*exc)  # type: ignore[arg-type]
        if self.contender.after_stop is not None:
            self.contender.after_stop(self.port)


def check_answer(contender: Contender, url: str, image: Path, timeout_s: float = 180.0) -> str:
    """`image` must get the right answer, as `contender.check` says (retried while the server finishes
    loading); what was checked."""
    request = request_bytes(contender, url, image.read_bytes())
    deadline, answer = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = fetch(url, request, timeout_s=60)
        except (OSError, ValueError, TimeoutError) as exc:
            answer = f"{type(exc).__name__}: {exc}"
        else:
            if status != 200:
                answer = f"{status}: {body[:300]!r}"
            else:
                try:
                    return contender.check(body)
                except ValueError as exc:
                    answer = str(exc)
        time.sleep(1)
    raise RuntimeError(f"{contender.name} gave a wrong answer for {image.name}: {answer}")


def tune(contender: Contender, work: Path, image: Path, plan: Plan) -> list[dict[str, Any]]:
    """Each grid point at 100 connections; the contender's settings become the best one's."""
    if not plan.grid_s or len(contender.grid) == 1:
        contender.settings = contender.grid[0]
        return []
    script, env = wrk_args(contender, work, image)
    photo, points = image.read_bytes(), []
    for settings in contender.grid:
        text = contender.describe(settings)
        try:
            with Started(contender, settings, work, image) as url:
                request = request_bytes(contender, url, photo)
                wrk(url, 100, plan.warm_up_s, image, script, env)
                settle(url, photo, float("inf"), SETTLE_LIMIT_S, request)  # until one is answered
                run = wrk(url, 100, plan.grid_s, image, script, env)
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            points.append({"settings": asdict(settings), "text": text, "req_per_s": 0.0, "failed": _first_line(exc)})
            log(f"    {contender.name:<14} {text:<40} failed: {_first_line(exc)}")
            continue
        points.append(
            {"settings": asdict(settings), "text": text, "req_per_s": run["req_per_s"], "ok_per_s": answered(run)}
            | {"errors": run["error_count"], "refused": run["errors"]["status"]}
        )
        log(f"    {contender.name:<14} {text:<38} {answered(run):7.1f} 2xx/s, errors {run['error_count']}")
    working = [point for point in points if "failed" not in point]
    if not working:
        raise RuntimeError(f"{contender.name} failed at every setting: {points[0]['failed']}")
    # the most answers per second; a refusal (torchrest's 503 past the deadline) is no answer, a socket
    # error or time-out rules the point out
    best = max(working, key=lambda point: point["ok_per_s"] if point["errors"] == point["refused"] else -1.0)
    contender.settings = Settings(**best["settings"])
    return points


def measure(contender: Contender, work: Path, image: Path, plan: Plan) -> dict[str, Any]:
    """One round of one server: wrk at each connection count, then the open loop at shares of its capacity."""
    photo = image.read_bytes()
    script, env = wrk_args(contender, work, image)
    started = Started(contender, contender.settings, work, image)
    with started as url:
        request = request_bytes(contender, url, photo)
        wrk(url, 32, plan.warm_up_s, image, script, env)
        settle(url, photo, float("inf"), request=request)
        idle_ms = idle_latency_ms(url, photo, request)
        closed = []
        for count in plan.connections:
            run = wrk(url, count, plan.wrk_s, image, script, env)
            run["ok_per_s"] = answered(run)
            run["settle_s"] = settle(url, photo, idle_ms, SETTLE_LIMIT_S, request)
            closed.append(run)
        capacity = max(run["req_per_s"] for run in closed)
        opened = []
        for share in plan.open_loop_shares:
            run = open_loop(url, photo, share * capacity, plan.open_loop_s, request=request)
            run["share_of_capacity"] = share
            run["settle_s"] = settle(url, photo, idle_ms, SETTLE_LIMIT_S, request)
            opened.append(run)
    line = "  ".join(f"{run['connections']}c {run['ok_per_s']:.1f}" for run in closed)
    p50 = closed[0]["latency_ms"]["p50"]
    log(f"    {contender.name:<14} {line}  2xx/s; p50 at 1 conn {p50:.1f} ms; errors {_errors(closed, opened)}")
    return {
        "check": started.checked,
        "idle_latency_ms": idle_ms,
        "closed_loop": closed,
        "capacity_req_per_s": capacity,
        "open_loop": opened,
    }


def answered(run: dict[str, Any]) -> float:
    """A wrk run's 2xx answers per second (wrk counts a quick 503 as a request too)."""
    return (run["requests"] - run["errors"]["status"]) / run["duration_s"]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]


def _errors(closed: list[dict[str, Any]], opened: list[dict[str, Any]]) -> int:
    return sum(run["error_count"] for run in closed + opened)


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per connection count and open-loop share: the median of the rounds' req/s (and 2xx/s) and percentiles."""

    def med(runs: list[dict[str, Any]], rate_key: str) -> dict[str, Any]:
        out = {
            rate_key: statistics.median(run[rate_key] for run in runs),
            "latency_ms": {
                q: statistics.median(run["latency_ms"][q] for run in runs) for q in runs[0]["latency_ms"] if q != "max"
            },
            "errors": sum(run["error_count"] for run in runs),
            "timeouts": sum(run["errors"].get("timeout", 0) + run["errors"].get("TimeoutError", 0) for run in runs),
        }
        if "ok_per_s" in runs[0]:  # wrk's runs: the answers that were not 2xx, and the rate of those that were
            out["ok_per_s"] = statistics.median(run["ok_per_s"] for run in runs)
            out["refused"] = sum(run["errors"]["status"] for run in runs)
        return out

    closed = [
        {"connections": count} | med([r["closed_loop"][i] for r in rounds], "req_per_s")
        for i, count in enumerate(run["connections"] for run in rounds[0]["closed_loop"])
    ]
    opened = [
        {"share_of_capacity": share} | med([r["open_loop"][i] for r in rounds], "achieved_rate")
        for i, share in enumerate(run["share_of_capacity"] for run in rounds[0]["open_loop"])
    ]
    return {"closed_loop": closed, "open_loop": opened}


CLASSIFY_ROWS = ("torch", "optimized")
ROWS = (*CLASSIFY_ROWS, "detect")


def run(
    plan: Plan,
    repository: Path,
    image: Path,
    only: set[str] | None,
    quick: bool,
    names: tuple[str, ...] = ROWS,
    detector_folder: Path | None = None,
) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    results: dict[str, Any] = {"machine": f"{cores} cores, {platform_name()}", "plan": asdict(plan), "rows": {}}
    # others' work on the machine skews every figure (later readings would count this run's own servers)
    results["load_average"] = {"start": os.getloadavg()[0]}
    rows: dict[str, Row] = {}
    try:
        log("0/3 the models and the peers' environments")
        if any(name in CLASSIFY_ROWS for name in names):
            optimized = ensure_optimized(MODEL, repository, quick)
            if optimized["backend"] != "openvino":
                raise SystemExit(
                    f"optimize chose {optimized['backend']}: the peers' second row runs OpenVINO files only"
                )
            results |= {"model": MODEL, "optimized": optimized}
            from torchrest.models.labels import imagenet_labels

            (work / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n")
            for name in (name for name in CLASSIFY_ROWS if name in names):
                rows[name] = Row(contenders(name, repository, cores, only), plan, image)
        if "detect" in names:
            detect_plan = replace(DETECT_QUICK if quick else DETECT_FULL, rounds=plan.rounds)
            results["detector"] = detection_model(work / "detector.onnx")
            results["detector"]["folder"] = str(detector_folder) if detector_folder else None
            reference = reference_detections(work / "detector.onnx", DETECT_PHOTO)
            if not reference:  # a check on no boxes checks nothing
                raise SystemExit(f"the detector finds no box on {DETECT_PHOTO.name}: nothing to check the servers by")
            results["detector"]["reference"] = matched_boxes(reference, reference)
            log(f"  detector: {results['detector']['reference']} on {DETECT_PHOTO.name} (the reference)")
            contending = detect_contenders(work / "detector.onnx", detector_folder, cores, only, reference)
            rows["detect"] = Row(contending, detect_plan, DETECT_PHOTO)
            results["plans"] = {"detect": asdict(detect_plan)}
        serving = {contender.name for row in rows.values() for contender in row.contenders}
        results["versions"] = {p.name: ensure_environment(p) for p in PEERS if p.name in serving}
        results["versions"]["torchrest"] = _our_versions()
        log("1/3 tuning: every grid point at 100 connections")
        grids: dict[str, dict[str, Any]] = {name: {} for name in rows}
        failures: dict[str, dict[str, list[str]]] = {}
        for name, row in rows.items():
            for contender in list(row.contenders):
                try:
                    grids[name][contender.name] = tune(contender, work, row.image, row.plan)
                except RuntimeError as exc:
                    log(f"  {name:<9} {contender.name:<14} left out: {_first_line(exc)}")
                    failures.setdefault(name, {})[contender.name] = [_first_line(exc)]
                    row.contenders.remove(contender)
                    continue
                log(f"  {name:<9} {contender.name:<14} measured at {contender.describe(contender.settings)}")
        log(f"2/3 {plan.rounds} interleaved round(s): every server once per round")
        measured: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in rows}
        for number in range(1, plan.rounds + 1):
            for name, row in rows.items():
                log(f"  round {number}/{plan.rounds}, {name} row")
                for contender in row.contenders:
                    try:
                        result = measure(contender, work, row.image, row.plan)
                    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                        log(f"    {contender.name:<14} failed: {_first_line(exc)}")
                        failures.setdefault(name, {}).setdefault(contender.name, []).append(_first_line(exc))
                        continue
                    measured[name].setdefault(contender.name, []).append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log("3/3 medians and ratios")
    results["failures"] = failures
    for name, row in rows.items():
        results["rows"][name] = {
            c.name: {
                "settings": asdict(c.settings),
                "settings_text": c.describe(c.settings),
                "request": c.request,
                "note": c.note,
                "check": measured[name][c.name][0]["check"],
                "grid": grids[name][c.name],
                "rounds": measured[name][c.name],
                **median_round(measured[name][c.name]),
            }
            for c in row.contenders
            if measured[name].get(c.name)
        }
    results["aims"] = aims(results)
    return results


def _our_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torchrest", "torch", "openvino", "onnxruntime", "numpy", "pillow")}


def aims(results: dict[str, Any]) -> dict[str, Any]:
    """Per row: torchrest over the best peer at 100 connections (answers per second), and its p50 at 1
    connection over the quickest peer's; in the detection row the optimized folder's entry too, given."""
    out = {}
    for row, servers in results["rows"].items():
        peers = {name: s for name, s in servers.items() if not name.startswith("torchrest")}
        if "torchrest" not in servers or not peers:
            continue
        out[row] = _aim(servers["torchrest"], peers)
        if OPTIMIZED_DETECTOR in servers:
            out[row]["optimized"] = _aim(servers[OPTIMIZED_DETECTOR], peers)
    return out


def _aim(ours: dict[str, Any], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def at(server: dict[str, Any], connections: int) -> dict[str, Any]:
        return next(run for run in server["closed_loop"] if run["connections"] == connections)

    fastest = max(peers, key=lambda name: _rate(at(peers[name], 100)))
    quickest = min(peers, key=lambda name: at(peers[name], 1)["latency_ms"]["p50"])
    return {
        "best_peer_at_100": fastest,
        "throughput_ratio_at_100": _rate(at(ours, 100)) / _rate(at(peers[fastest], 100)),
        "best_peer_p50_at_1": quickest,
        "p50_ratio_at_1": at(ours, 1)["latency_ms"]["p50"] / at(peers[quickest], 1)["latency_ms"]["p50"],
    }


def _rate(run: dict[str, Any]) -> float:
    """A closed-loop run's answers per second (2xx; runs recorded before those were counted: all)."""
    return float(run.get("ok_per_s", run["req_per_s"]))


ROW_TITLES = {
    "torch": "torch eager fp32",
    "optimized": "the optimized file",
    "detect": "detection (YOLOv8n-sized ONNX, random weights)",
}


def _models(results: dict[str, Any]) -> str:
    """What a run served: the classifier, the detector, or both."""
    return " and ".join(name for name in (results.get("model"), "detector" if "detector" in results else None) if name)


def markdown(results: dict[str, Any]) -> str:
    intro = (
        f"Machine: {results['machine']}. Command: `{results['command']}` ({results['wall_s'] / 60:.1f} min). "
        f"Medians of {results['plan']['rounds']} interleaved round(s)."
    )
    if "load_average" in results:  # the machine's other work, as it stood
        intro += f" Load average (1 min) as it started: {results['load_average']['start']:.1f}."
    lines = [f"# torchrest and its peers: {_models(results)}, {results['date']}", "", intro, ""]
    if "optimized" in results:
        opt = results["optimized"]
        lines += [
            f"Classification rows: {results['model']}, torch eager fp32 (the published weights), and "
            f"{opt['candidate']} ({opt['artifact']}), the file `torchrest optimize` chose.",
            "",
        ]
    if "detector" in results:
        detector = results["detector"]
        lines += [
            f"Detection row: {detector['network']}, {detector['parameters'] / 1e6:.2f} M parameters, "
            f"{detector['weights']}. Photo: {detector['photo']}; the reference (ONNX Runtime in the benchmark's "
            f"process, Pillow letterbox, NMS in numpy): {detector['reference']}. Every server's boxes were "
            f"checked against it before it was measured (as many, same classes, IoU >= {MIN_IOU} each).",
            "",
        ]
    for row, servers in results["rows"].items():
        table = _detect_table(results, servers) if row == "detect" else _classify_table(results, servers)
        lines += [f"## {ROW_TITLES[row]}", "", *table, ""]
        if row in results["aims"]:
            for name, aim in (
                (None, results["aims"][row]),
                (OPTIMIZED_DETECTOR, results["aims"][row].get("optimized")),
            ):
                if aim is None:
                    continue
                lines += [
                    f"{name or 'torchrest'} at 100 connections: {aim['throughput_ratio_at_100']:.2f}x the best peer "
                    f"({aim['best_peer_at_100']}); p50 at 1 connection: {aim['p50_ratio_at_1']:.2f}x the quickest "
                    f"peer's ({aim['best_peer_p50_at_1']}).",
                    "",
                ]
        if row == "detect" and not results["detector"].get("folder"):
            lines += ["(No --detector-folder: torchrest served the ONNX file as is only.)", ""]
    for row, servers in results.get("failures", {}).items():
        for name, reasons in servers.items():
            lines += [f"{name} failed in {len(reasons)} round(s) of the {ROW_TITLES[row]} row: {reasons[0]}", ""]
    tried = [
        f"- {ROW_TITLES[row]}, {name}: " + "; ".join(f"{point['text']}: {_rate(point):.1f}" for point in server["grid"])
        for row, servers in results["rows"].items()
        for name, server in servers.items()
        if server["grid"]
    ]
    if tried:
        lines += ["## Settings tried (2xx answers/s at 100 connections)", "", *tried, ""]
    lines += ["## Versions", ""]
    lines += [
        f"- {name}: " + ", ".join(f"{p} {v}" for p, v in sorted(vs.items())) for name, vs in results["versions"].items()
    ]
    return "\n".join(lines) + "\n"


def _classify_table(results: dict[str, Any], servers: dict[str, Any]) -> list[str]:
    conns = [f"{c} conn req/s" for c in results["plan"]["connections"]]
    opens = [f"open {s:.0%} p50/p99 ms" for s in results["plan"]["open_loop_shares"]]
    header = ["server", "settings", "request", *conns, "p50 / p99 ms at 1 conn", *opens, "errors"]
    return markdown_table(header, [_row(name, server) for name, server in servers.items()])


def _row(name: str, server: dict[str, Any]) -> list[str]:
    closed, opened = server["closed_loop"], server["open_loop"]
    first = closed[0]["latency_ms"]
    return [
        name,
        server["settings_text"],
        server["request"],
        *(f"{run['req_per_s']:.1f}" for run in closed),
        f"{first['p50']:.1f} / {first['p99']:.1f}",
        *(f"{run['latency_ms']['p50']:.0f} / {run['latency_ms']['p99']:.0f}" for run in opened),
        str(sum(run["errors"] for run in closed + opened)),
    ]


def _detect_table(results: dict[str, Any], servers: dict[str, Any]) -> list[str]:
    """At each connection count: 2xx answers/s, p50 / p99 ms; the answers that were not 2xx (torchrest's
    503 past the deadline), the socket errors and time-outs."""
    connections = results["plans"]["detect"]["connections"]
    header = ["server", "settings", "request", "boxes vs reference"]
    for count in connections:
        header += [f"{count} conn 2xx/s", f"{count} conn p50 / p99 ms"]
    rows = []
    for name, server in servers.items():
        row = [name, server["settings_text"], server["request"], server["check"]]
        for run in server["closed_loop"]:
            latency = run["latency_ms"]
            row += [f"{_rate(run):.1f}", f"{_ms(latency['p50'])} / {_ms(latency['p99'])}" if _rate(run) else "none"]
        refused = sum(run.get("refused", 0) for run in server["closed_loop"])
        errors = sum(run["errors"] for run in server["closed_loop"]) - refused
        rows.append([*row, str(refused), str(errors)])
    return markdown_table([*header, "not 2xx", "errors"], rows)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["rows"].items())
    figure, axes = plt.subplots(2, len(rows), figsize=(7 * len(rows), 9), squeeze=False)
    for column, (row, servers) in enumerate(rows):
        rate_axis, latency_axis = axes[0][column], axes[1][column]
        for index, (name, server) in enumerate(servers.items()):
            runs = server["closed_loop"]
            ours = name.startswith("torchrest")
            rate_axis.plot(
                [r["connections"] for r in runs],
                [_rate(r) for r in runs],
                "o-" if ours else "o--",
                color=f"C{index}",
                linewidth=2.5 if ours else 1.2,
                label=name,
            )
        unit = "2xx/s" if row == "detect" else "req/s"
        rate_axis.set(xscale="log", xlabel="connections (wrk)", ylabel=unit, title=f"{ROW_TITLES[row]}: {unit}")
        rate_axis.set_ylim(bottom=0)
        if row == "detect":  # no open loop: the closed loop's connection counts
            points = [f"{run['connections']} conn" for run in next(iter(servers.values()))["closed_loop"]]
            latency_bars(latency_axis, {n: v["closed_loop"] for n, v in servers.items()}, points)
        else:
            points = ["1 conn"] + [f"open {s:.0%}" for s in results["plan"]["open_loop_shares"]]
            latency_bars(latency_axis, {n: [v["closed_loop"][0], *v["open_loop"]] for n, v in servers.items()}, points)
    title = f"torchrest and its peers, {_models(results)}, {results['machine']}"
    save_figure(figure, [axis for column in axes for axis in column], title, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round, no tuning: a smoke run")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)} (default: all)")
    parser.add_argument("--only", default=None, help="comma-separated peers (torchrest always runs)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repository", type=Path, default=ROOT / "model-repository")
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="rewrite peers.md and .png from this peers.json")
    parser.add_argument(
        "--detector-folder",
        type=Path,
        default=None,
        help="a model folder (config.json) `torchrest optimize` wrote for the --export-detector file: "
        "torchrest serves it too in the detection row",
    )
    parser.add_argument(
        "--export-detector",
        type=Path,
        default=None,
        help="write the detection row's network (ONNX; .pt2: a torch.export program, for `torchrest optimize`), exit",
    )
    args = parser.parse_args()
    if args.render:
        from harness import write_results

        write_results(args.render.parent, "peers", json.loads(args.render.read_text()), markdown, plot)
        return 0
    if args.export_detector:
        args.export_detector.parent.mkdir(parents=True, exist_ok=True)
        log(f"{args.export_detector}: {detection_model(args.export_detector)}")
        return 0
    names = tuple(name.strip() for name in args.rows.split(",") if name.strip())
    if not names or set(names) - set(ROWS):
        parser.error(f"--rows takes {', '.join(ROWS)}, got {args.rows!r}")
    if args.detector_folder and not (args.detector_folder / "config.json").is_file():
        parser.error(f"--detector-folder: no config.json in {args.detector_folder}")
    if shutil.which("wrk") is None:
        print("benchmark/peers.py: error: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    only = set(args.only.split(",")) if args.only else None
    started = dt.datetime.now()
    try:
        results = run(plan, args.repository, args.image, only, args.quick, names, args.detector_folder)
    except KeyboardInterrupt:
        log("interrupted: every server was stopped")
        return 130
    results["command"] = "python benchmark/peers.py " + " ".join(sys.argv[1:])
    results["date"] = started.isoformat(timespec="seconds")
    results["wall_s"] = (dt.datetime.now() - started).total_seconds()
    out = args.out or ROOT / "benchmark" / "results" / started.date().isoformat()
    from harness import write_results

    write_results(out, "peers", results, markdown, plot)
    log(f"done in {results['wall_s'] / 60:.1f} min")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
