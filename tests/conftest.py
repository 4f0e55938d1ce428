"""Shared fixtures: real servers in subprocesses on free ports, and the sample photos."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from filelock import FileLock

from torchrest.layout import Layout

DATA = Path(__file__).parent / "data"
PHOTOS = {name: (DATA / f"{name}.jpg").read_bytes() for name in ("cat", "coffee", "astronaut", "rocket")}
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}
STARTUP_TIMEOUT_S = 120
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# PyTorch has deprecated TorchScript: a torch.jit deprecation warning fails the suite, whether it is raised
# here (pyproject's filterwarnings) or in a server or tool a test starts (this variable, inherited), except
# in the tests marked legacy_torchscript, which check that a user's TorchScript file still loads.
TORCHSCRIPT_DEPRECATION = "`torch.jit."
os.environ["PYTHONWARNINGS"] = ",".join(
    filter(None, [os.environ.get("PYTHONWARNINGS"), f"error:{TORCHSCRIPT_DEPRECATION}:DeprecationWarning"])
)
with warnings.catch_warnings():  # torch's own: torch.utils.mkldnn declares TorchScript methods when imported
    warnings.simplefilter("ignore", DeprecationWarning)  # (by Inductor, which the AOTInductor tests compile with)
    import torch.utils.mkldnn  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("legacy_torchscript"):
            item.add_marker(pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:DeprecationWarning"))

    # the modules marked slow as a whole first, the longest first (`slow(seconds=N)`: about what it takes on
    # two cores): xdist (--dist loadscope) hands out modules in this order, which lets the workers finish together
    def serial_seconds(item: pytest.Item) -> float:
        marks = getattr(getattr(item, "module", None), "pytestmark", [])
        slow = [mark for mark in (marks if isinstance(marks, list) else [marks]) if mark.name == "slow"]
        return float(slow[0].kwargs.get("seconds", 1)) if slow else 0.0

    items.sort(key=serial_seconds, reverse=True)


def free_port() -> int:
    """A port nothing listened on a moment ago: only for an address that must stay closed, or a peer server
    that cannot bind port 0 itself (torchrest's own servers are started with --port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], object],
    timeout_s: float = 30.0,
    what: str | Callable[[], str] = "",
    every_s: float = 0.05,
) -> None:
    """Wait until `condition()` is true, checking every `every_s`; AssertionError after `timeout_s`, saying
    `what` (or what `what()` says then)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what() if callable(what) else what}")
        time.sleep(every_s)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    grpc_port: int | None = None  # with --grpc-port
    metrics_port: int | None = None  # with --metrics-port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


def torchrest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchrest", *args]


# the serving line of the log (torchrest.frontend.listeners.addresses): where the ports given as 0 ended up
SERVING_LINE = re.compile(
    r"torchrest serving (?:.*? )?on (https?)://(\S+?):(\d+)(?:; gRPC on port (\d+))?(?:; /metrics on port (\d+))?"
)


@contextlib.contextmanager
def running_server(
    tmp_dir: Path, *args: str, env: dict[str, str] | None = None, ready: Callable[[Server], bool] | None = None
) -> Iterator[Server]:
    """Start `torchrest serve ARGS` (its HTTP port 0 unless ARGS give one; `--grpc-port 0`, `--metrics-port 0`
    take free ones too), read the ports it bound from its log, wait (bounded) until `ready(server)` (default:
    /health says 200); stop it (SIGTERM, then SIGKILL) afterwards."""
    port_given = "--port" in args
    descriptor, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=tmp_dir)
    log_path = Path(name)
    with open(descriptor, "wb") as log_file:
        process = subprocess.Popen(
            torchrest_command("serve", *(() if port_given else ("--host", "127.0.0.1", "--port", "0")), *args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = Server("", process, log_path)
    try:
        found: list[re.Match[str]] = []

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            found[:] = [m for m in [SERVING_LINE.search(server.log())] if m]
            return bool(found)

        wait_for(serving, STARTUP_TIMEOUT_S, lambda: f"the serving line in the log:\n{server.log()}", every_s=0.02)
        scheme, host, port, grpc_port, metrics_port = found[0].groups()
        server.port = int(port)
        server.url = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{port}"
        server.grpc_port = int(grpc_port) if grpc_port else None
        server.metrics_port = int(metrics_port) if metrics_port else None
        wait_until_ready(server, ready)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_ready(server: Server, ready: Callable[[Server], bool] | None = None) -> None:
    def health() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        if ready is not None:
            return ready(server)
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
        return False

    wait_for(health, STARTUP_TIMEOUT_S, lambda: f"server ready:\n{server.log()}", every_s=0.1)


# --- what many tests need, built once per run and shared by every xdist worker ----------------------


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this run sees: the run's base temp under xdist, this session's without it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """`shared/name`, made by `build(folder)` by the first worker to ask (a file lock), read by the others."""
    root = shared_folder(tmp_path_factory)
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (root / f"{name}.built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (root / f"{name}.built").touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted forms of built-in models (torchrest.models.converted), one folder for the run: each is
    made by the first server that needs it and read by every later start; the user's own cache
    (~/.cache/torchrest) is kept out of it, so that a run starts as a fresh machine does."""
    folder = shared_folder(tmp_path_factory) / "model-cache"
    folder.mkdir(exist_ok=True)
    os.environ["TORCHREST_CACHE_DIR"] = os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder


def default_model_converted(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The default model's OpenVINO form in the run's cache, converted once (in this process, under a lock),
    so that two workers' first servers do not both convert it."""
    from torchrest.models.converted import convert

    folder = Path(os.environ["TORCHREST_CACHE_DIR"])
    with FileLock(str(shared_folder(tmp_path_factory) / "default-model.lock")):
        if not list(folder.glob("efficientnet_lite0-*.onnx")):
            convert("efficientnet_lite0", folder)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Server]:
    """The default model, default settings: what `make serve` runs."""
    default_model_converted(tmp_path_factory)
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="session")
def task_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The constructed detect, segment and embed models of tests/task_models.py (read only: copy to change),
    laid out for two cores as optimize would (batches of up to 8), so that the many servers of them time
    no batch sizes at start-up (the default model's servers do)."""
    from tests.task_models import write_task_repository

    layout = Layout(1, 2, 8).to_dict()
    return built_once(tmp_path_factory, "task-repository", lambda root: write_task_repository(root, layout=layout))


@pytest.fixture(scope="session")
def lite0_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """write_repository's lite0 and tiny, exported once for the run (read only: copy it to change it)."""
    return built_once(tmp_path_factory, "lite0-repository", write_repository)


@pytest.fixture(scope="session")
def task_server(tmp_path_factory: pytest.TempPathFactory, task_repository: Path) -> Iterator[Server]:
    """The task repository's models, one process."""
    with running_server(tmp_path_factory.mktemp("task-server"), "--model-repository", str(task_repository)) as running:
        yield running


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def write_model_folder(
    repository: Path,
    name: str,
    module: torch.nn.Module,
    labels: list[str],
    version: int = 1,
    size: int = 224,
    layout: Layout | None = None,
) -> Path:
    """A model folder as `torchrest optimize` writes one: the module exported with torch.export (it takes
    uint8 NHWC batches, any batch size) as <name>/<version>/model.pt2, labels.txt and config.json (with
    `layout`, the serving layout optimize chose: the server then times no batch sizes at start-up)."""
    from torchrest.models.repository import ModelConfig

    folder = repository / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    export_program(module, (2, size, size, 3), torch.uint8, folder / str(version) / "model.pt2")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    if not (folder / "config.json").exists():
        config = ModelConfig(
            name=name,
            backend="torch",
            artifact="1/model.pt2",
            crop_size=size,
            resize_size=size * 8 // 7,
            layout=layout.to_dict() if layout is not None else None,
        )
        config.write(folder / "config.json")
    return folder


def export_program(module: torch.nn.Module, shape: tuple[int, ...], dtype: torch.dtype, path: Path) -> Path:
    """`module` as a user exports it for torchrest: torch.export with a dynamic batch dimension, saved."""
    example = torch.zeros(shape, dtype=dtype)
    with torch.no_grad():
        program = torch.export.export(
            module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},)
        )
    torch.export.save(program, str(path))
    return path


TINY_LABELS = ["north", "east", "south", "west"]


class Tiny(torch.nn.Module):
    """uint8 NHWC -> 4 logits from the channel means; `bias` tells versions apart."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 4)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(4, 3))
            self.head.bias.fill_(bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(pixels.float().mean(dim=(1, 2)) / 255)


def write_repository(root: Path) -> Path:
    """A two-model repository: lite0 (EfficientNet-Lite0 with its published ImageNet weights, as an
    exported program) and tiny (4 classes, for load/unload round trips), each laid out as optimize lays
    them out on two cores (batches of up to 8 are what start-up timing chooses for lite0 on them)."""
    from torchrest.config import ServerConfig
    from torchrest.models.registry import load_model

    lite0 = load_model(ServerConfig())
    assert lite0.module is not None
    write_model_folder(root, "lite0", lite0.module, lite0.labels, layout=Layout(1, 2, 8))
    write_model_folder(root, "tiny", Tiny(0.0), TINY_LABELS, layout=Layout(1, 2, 32))
    return root


def admin_token_file(folder: Path) -> Path:
    """The admin token in a file, as a Kubernetes Secret mounts it (`--admin-token-file`)."""
    path = folder / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")
    return path
