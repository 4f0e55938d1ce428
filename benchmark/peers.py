"""torchrest beside the servers a PyTorch vision user would pick instead, fairly, in one command.

    python benchmark/peers.py [--quick] [--only mosec,litserve] [--rounds 3]

Peers: mosec, LitServe, Ray Serve, KServe's ModelServer, BentoML, TorchServe and the naive FastAPI
baseline. Each peer's server is a short file in benchmark/peers/, written from its documentation, run
from its own virtual environment (.peers/<name>, installed from PyPI on first use, pinned below).

Fair by construction:
    - two rows, one model (EfficientNet-Lite0, published ImageNet weights) and one artifact per row:
      torch eager fp32 (the same weights file), and the file `torchrest optimize` chose (OpenVINO);
    - the same pre-processing result (resize 256 antialiased, centre crop 224), each peer decoding
      with Pillow as its docs do; every server must answer "Egyptian cat" for cat.jpg first;
    - the same thread budget: each peer's inference processes x threads = the machine's cores;
    - each peer's settings (processes x threads, batch size) tuned over a small grid at 100
      connections first; the best is what is measured, and every grid point is recorded;
    - interleaved rounds (every server once, then again), medians; wrk at 1, 8, 32 and 100
      connections, then the open loop at 50% and 80% of that server's own capacity.

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

from torchrest.layout import splits  # processes x threads, as torchrest lays out instances

PEERS_DIR = ROOT / "benchmark" / "peers"
VENVS = ROOT / ".peers"
MODEL = "efficientnet_lite0"
EXPECTED = "Egyptian cat"
# Waiting for a server to drain what a run left queued ends here: BentoML's adaptive batcher keeps a
# longer wait for a while after a burst, so its lone requests stay slower than its idle latency.
SETTLE_LIMIT_S = 15.0
COMMON = ("torch==2.13.0", "openvino==2026.4.1", "numpy==2.4.6", "pillow==13.0.0")


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
        ("mosec==0.9.8",),
        "raw",
        "/classify",
        "/",
        batching_grid(10),
        mosec,
        "a decode process, then the batched inference processes",
    ),
    Peer(
        "litserve",
        ("litserve==0.2.19",),
        "json",
        "/classify",
        "/health",
        batching_grid(10),
        litserve,
        "the image as base64 JSON: a multipart upload cannot reach its workers",
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
        Contender(
            "naive FastAPI",
            "multipart",
            "/classify",
            "/health",
            naive,
            [Settings(workers) for workers in (1, 2)],
            note="the model called per request, in the handler",
            describe=lambda settings: f"{settings.workers} gunicorn worker(s)",
        ),
        *(
            Contender(
                p.name, p.request, p.path, p.health, peer_start(p), p.grid(cores), note=p.note, after_stop=p.after_stop
            )
            for p in PEERS
        ),
    ]
    return [c for c in everyone if only is None or c.name in only or c.name == "torchrest"]


def model_env(row: str, repository: Path, work: Path) -> dict[str, str]:
    if row == "optimized":
        config = json.loads((repository / MODEL / "config.json").read_text())
        artifact = repository / MODEL / config["artifact"]
        return {"PEER_MODEL": str(artifact), "PEER_LABELS": str(work / "labels.txt")}
    from torchrest.models.efficientnet_lite import published_lite0_weights

    return {"PEER_MODEL": str(published_lite0_weights()), "PEER_LABELS": str(work / "labels.txt")}


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


def wrk_args(contender: Contender, work: Path) -> tuple[str, dict[str, str]]:
    """The wrk script for the contender's request (a JSON body is written to a file for body.lua)."""
    if contender.request in JSON_BODIES:
        body = work / f"body-{contender.request}.json"
        return "body.lua", {"URL_PATH": contender.path, "BODY_FILE": str(body)}
    return {"multipart": "upload.lua", "raw": "raw.lua"}[contender.request], {"URL_PATH": contender.path}


class Started:
    """A contender's server, up and answering the right label."""

    def __init__(self, contender: Contender, settings: Settings, work: Path, image: bytes) -> None:
        self.contender, self.settings, self.work, self.image = contender, settings, work, image

    def __enter__(self) -> str:
        self.port = port = free_port()
        argv, env, cwd = self.contender.start(self.settings, port, self.work)
        self._serving = serving(argv, port, env, cwd, self.contender.health)
        url = self._serving.__enter__()
        try:
            check_answer(self.contender, url, self.image)
        except BaseException:
            self._serving.__exit__(*sys.exc_info())
            raise
        return url

    def __exit__(self, *exc: object) -> None:
        self._serving.__exit__(*exc)  # type: ignore[arg-type]
        if self.contender.after_stop is not None:
            self.contender.after_stop(self.port)


def check_answer(contender: Contender, url: str, image: bytes, timeout_s: float = 180.0) -> None:
    """cat.jpg must come back as "Egyptian cat" (retried while the server finishes loading)."""
    deadline, answer = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = fetch(url, request_bytes(contender, url, image), timeout_s=60)
        except (OSError, ValueError, TimeoutError) as exc:
            answer = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200 and EXPECTED.encode() in body:
                return
            answer = f"{status}: {body[:300]!r}"
        time.sleep(1)
    raise RuntimeError(f"{contender.name} did not answer {EXPECTED!r} for cat.jpg: {answer}")


def tune(contender: Contender, work: Path, image: Path, plan: Plan) -> list[dict[str, Any]]:
    """Each grid point at 100 connections; the contender's settings become the best one's."""
    if not plan.grid_s or len(contender.grid) == 1:
        contender.settings = contender.grid[0]
        return []
    script, env = wrk_args(contender, work)
    photo, points = image.read_bytes(), []
    for settings in contender.grid:
        text = contender.describe(settings)
        try:
            with Started(contender, settings, work, photo) as url:
                request = request_bytes(contender, url, photo)
                wrk(url, 100, plan.warm_up_s, image, script, env)
                settle(url, photo, float("inf"), SETTLE_LIMIT_S, request)  # until one is answered
                run = wrk(url, 100, plan.grid_s, image, script, env)
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            points.append({"settings": asdict(settings), "text": text, "req_per_s": 0.0, "failed": _first_line(exc)})
            log(f"    {contender.name:<14} {text:<40} failed: {_first_line(exc)}")
            continue
        points.append(
            {"settings": asdict(settings), "text": text, "req_per_s": run["req_per_s"], "errors": run["error_count"]}
        )
        log(f"    {contender.name:<14} {text:<38} {run['req_per_s']:7.1f} req/s, errors {run['error_count']}")
    working = [point for point in points if "failed" not in point]
    if not working:
        raise RuntimeError(f"{contender.name} failed at every setting: {points[0]['failed']}")
    best = max(working, key=lambda point: point["req_per_s"] if not point["errors"] else -1.0)
    contender.settings = Settings(**best["settings"])
    return points


def measure(contender: Contender, work: Path, image: Path, plan: Plan) -> dict[str, Any]:
    """One round of one server: wrk at each connection count, then the open loop at shares of its capacity."""
    photo = image.read_bytes()
    script, env = wrk_args(contender, work)
    with Started(contender, contender.settings, work, photo) as url:
        request = request_bytes(contender, url, photo)
        wrk(url, 32, plan.warm_up_s, image, script, env)
        settle(url, photo, float("inf"), request=request)
        idle_ms = idle_latency_ms(url, photo, request)
        closed = []
        for count in plan.connections:
            run = wrk(url, count, plan.wrk_s, image, script, env)
            run["settle_s"] = settle(url, photo, idle_ms, SETTLE_LIMIT_S, request)
            closed.append(run)
        capacity = max(run["req_per_s"] for run in closed)
        opened = []
        for share in plan.open_loop_shares:
            run = open_loop(url, photo, share * capacity, plan.open_loop_s, request=request)
            run["share_of_capacity"] = share
            run["settle_s"] = settle(url, photo, idle_ms, SETTLE_LIMIT_S, request)
            opened.append(run)
    line = "  ".join(f"{run['connections']}c {run['req_per_s']:.0f}" for run in closed)
    p50 = closed[0]["latency_ms"]["p50"]
    log(f"    {contender.name:<14} {line}  req/s; p50 at 1 conn {p50:.1f} ms; errors {_errors(closed, opened)}")
    return {"idle_latency_ms": idle_ms, "closed_loop": closed, "capacity_req_per_s": capacity, "open_loop": opened}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]


def _errors(closed: list[dict[str, Any]], opened: list[dict[str, Any]]) -> int:
    return sum(run["error_count"] for run in closed + opened)


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per connection count and open-loop share: the median of the rounds' req/s and percentiles."""

    def med(runs: list[dict[str, Any]], rate_key: str) -> dict[str, Any]:
        return {
            rate_key: statistics.median(run[rate_key] for run in runs),
            "latency_ms": {
                q: statistics.median(run["latency_ms"][q] for run in runs) for q in runs[0]["latency_ms"] if q != "max"
            },
            "errors": sum(run["error_count"] for run in runs),
            "timeouts": sum(run["errors"].get("timeout", 0) + run["errors"].get("TimeoutError", 0) for run in runs),
        }

    closed = [
        {"connections": count} | med([r["closed_loop"][i] for r in rounds], "req_per_s")
        for i, count in enumerate(run["connections"] for run in rounds[0]["closed_loop"])
    ]
    opened = [
        {"share_of_capacity": share} | med([r["open_loop"][i] for r in rounds], "achieved_rate")
        for i, share in enumerate(run["share_of_capacity"] for run in rounds[0]["open_loop"])
    ]
    return {"closed_loop": closed, "open_loop": opened}


def run(plan: Plan, repository: Path, image: Path, only: set[str] | None, quick: bool) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    log("0/3 the optimized model and the peers' environments")
    optimized = ensure_optimized(MODEL, repository, quick)
    if optimized["backend"] != "openvino":
        raise SystemExit(f"optimize chose {optimized['backend']}: the peers' second row runs OpenVINO files only")
    versions = {p.name: ensure_environment(p) for p in PEERS if only is None or p.name in only}
    versions["torchrest"] = _our_versions()
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    from torchrest.models.labels import imagenet_labels

    (work / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n")
    for kind, body in JSON_BODIES.items():
        (work / f"body-{kind}.json").write_bytes(body(image.read_bytes()))
    rows = {row: contenders(row, repository, cores, only) for row in ("torch", "optimized")}
    results: dict[str, Any] = {
        "model": MODEL,
        "machine": f"{cores} cores, {platform_name()}",
        "optimized": optimized,
        "plan": asdict(plan),
        "versions": versions,
        "rows": {},
    }
    try:
        log(f"1/3 tuning: every grid point at 100 connections for {plan.grid_s:.0f} s")
        grids: dict[str, dict[str, Any]] = {row: {} for row in rows}
        failures: dict[str, dict[str, list[str]]] = {}
        for row, everyone in rows.items():
            for contender in list(everyone):
                try:
                    grids[row][contender.name] = tune(contender, work, image, plan)
                except RuntimeError as exc:
                    log(f"  {row:<9} {contender.name:<14} left out: {_first_line(exc)}")
                    failures.setdefault(row, {})[contender.name] = [_first_line(exc)]
                    everyone.remove(contender)
                    continue
                log(f"  {row:<9} {contender.name:<14} measured at {contender.describe(contender.settings)}")
        log(f"2/3 {plan.rounds} interleaved round(s): every server once per round")
        measured: dict[str, dict[str, list[dict[str, Any]]]] = {row: {} for row in rows}
        for number in range(1, plan.rounds + 1):
            for row, everyone in rows.items():
                log(f"  round {number}/{plan.rounds}, {row} row")
                for contender in everyone:
                    try:
                        result = measure(contender, work, image, plan)
                    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                        log(f"    {contender.name:<14} failed: {_first_line(exc)}")
                        failures.setdefault(row, {}).setdefault(contender.name, []).append(_first_line(exc))
                        continue
                    measured[row].setdefault(contender.name, []).append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log("3/3 medians and ratios")
    results["failures"] = failures
    for row, everyone in rows.items():
        results["rows"][row] = {
            c.name: {
                "settings": asdict(c.settings),
                "settings_text": c.describe(c.settings),
                "request": c.request,
                "note": c.note,
                "grid": grids[row][c.name],
                "rounds": measured[row][c.name],
                **median_round(measured[row][c.name]),
            }
            for c in everyone
            if measured[row].get(c.name)
        }
    results["aims"] = aims(results)
    return results


def _our_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torchrest", "torch", "openvino", "numpy", "pillow")}


def aims(results: dict[str, Any]) -> dict[str, Any]:
    """Per row: torchrest over the best peer at 100 connections, and its p50 at 1 connection over theirs."""
    out = {}
    for row, servers in results["rows"].items():
        ours, peers = servers["torchrest"], {name: s for name, s in servers.items() if name != "torchrest"}
        if not peers:
            continue

        def at(server: dict[str, Any], connections: int) -> dict[str, Any]:
            return next(run for run in server["closed_loop"] if run["connections"] == connections)

        fastest = max(peers, key=lambda name: at(peers[name], 100)["req_per_s"])
        quickest = min(peers, key=lambda name: at(peers[name], 1)["latency_ms"]["p50"])
        out[row] = {
            "best_peer_at_100": fastest,
            "throughput_ratio_at_100": at(ours, 100)["req_per_s"] / at(peers[fastest], 100)["req_per_s"],
            "best_peer_p50_at_1": quickest,
            "p50_ratio_at_1": at(ours, 1)["latency_ms"]["p50"] / at(peers[quickest], 1)["latency_ms"]["p50"],
        }
    return out


ROW_TITLES = {"torch": "torch eager fp32", "optimized": "the optimized file"}


def markdown(results: dict[str, Any]) -> str:
    opt = results["optimized"]
    lines = [
        f"# torchrest and its peers: {results['model']}, {results['date']}",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}` ({results['wall_s'] / 60:.1f} min). "
        f"Medians of {results['plan']['rounds']} interleaved round(s). Rows: torch eager fp32 (the published "
        f"weights), and {opt['candidate']} ({opt['artifact']}), the file `torchrest optimize` chose.",
        "",
    ]
    for row, servers in results["rows"].items():
        lines += [
            f"## {ROW_TITLES[row]}",
            "",
            *markdown_table(_header(results), [_row(n, s) for n, s in servers.items()]),
            "",
        ]
        if row in results["aims"]:
            aim = results["aims"][row]
            lines += [
                f"torchrest at 100 connections: {aim['throughput_ratio_at_100']:.2f}x the best peer "
                f"({aim['best_peer_at_100']}); p50 at 1 connection: {aim['p50_ratio_at_1']:.2f}x the quickest "
                f"peer's ({aim['best_peer_p50_at_1']}).",
                "",
            ]
    for row, servers in results.get("failures", {}).items():
        for name, reasons in servers.items():
            lines += [f"{name} failed in {len(reasons)} round(s) of the {ROW_TITLES[row]} row: {reasons[0]}", ""]
    lines += ["## Settings tried (req/s at 100 connections)", ""]
    for row, servers in results["rows"].items():
        for name, server in servers.items():
            if server["grid"]:
                tried = "; ".join(f"{point['text']}: {point['req_per_s']:.1f}" for point in server["grid"])
                lines.append(f"- {ROW_TITLES[row]}, {name}: {tried}")
    lines += ["", "## Versions", ""]
    lines += [
        f"- {name}: " + ", ".join(f"{p} {v}" for p, v in sorted(vs.items())) for name, vs in results["versions"].items()
    ]
    return "\n".join(lines) + "\n"


def _header(results: dict[str, Any]) -> list[str]:
    conns = [f"{c} conn req/s" for c in results["plan"]["connections"]]
    opens = [f"open {s:.0%} p50/p99 ms" for s in results["plan"]["open_loop_shares"]]
    return ["server", "settings", "request", *conns, "p50 / p99 ms at 1 conn", *opens, "errors"]


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
            style = "o-" if name == "torchrest" else "o--"
            rate_axis.plot(
                [r["connections"] for r in runs],
                [r["req_per_s"] for r in runs],
                style,
                color=f"C{index}",
                linewidth=2.5 if name == "torchrest" else 1.2,
                label=name,
            )
        rate_axis.set(xscale="log", xlabel="connections (wrk)", ylabel="req/s", title=f"{ROW_TITLES[row]}: req/s")
        rate_axis.set_ylim(bottom=0)
        points = ["1 conn"] + [f"open {s:.0%}" for s in results["plan"]["open_loop_shares"]]
        latency_bars(latency_axis, {n: [v["closed_loop"][0], *v["open_loop"]] for n, v in servers.items()}, points)
    title = f"torchrest and its peers, {results['model']}, {results['machine']}"
    save_figure(figure, [axis for column in axes for axis in column], title, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round, no tuning: a smoke run")
    parser.add_argument("--only", default=None, help="comma-separated peers (torchrest always runs)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repository", type=Path, default=ROOT / "model-repository")
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="rewrite peers.md and .png from this peers.json")
    args = parser.parse_args()
    if args.render:
        from harness import write_results

        write_results(args.render.parent, "peers", json.loads(args.render.read_text()), markdown, plot)
        return 0
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
        results = run(plan, args.repository, args.image, only, args.quick)
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
