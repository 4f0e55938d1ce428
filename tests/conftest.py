"""Shared fixtures: real servers in subprocesses on free ports, and the sample photos."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

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
# the default model's converted form (torchrest.models.converted): made once per run, read by later starts;
# the user's own cache (~/.cache/torchrest) is kept out of it, so that a run starts as a fresh machine does
os.environ["TORCHREST_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchrest-test-cache-")
os.environ["XDG_CACHE_HOME"] = os.environ["TORCHREST_CACHE_DIR"]

with warnings.catch_warnings():  # torch's own: torch.utils.mkldnn declares TorchScript methods when imported
    warnings.simplefilter("ignore", DeprecationWarning)  # (by Inductor, which the AOTInductor tests compile with)
    import torch.utils.mkldnn  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("legacy_torchscript"):
            item.add_marker(pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:DeprecationWarning"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


def torchrest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchrest", *args]


@contextlib.contextmanager
def running_server(tmp_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start `torchrest serve ARGS` on a free port (with `env` added to the environment), wait (bounded)
    until /health says ready."""
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            torchrest_command("serve", "--host", "127.0.0.1", "--port", str(port), *args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model, default settings: what `make serve` runs."""
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="session")
def task_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The constructed detect, segment and embed models of tests/task_models.py, one process."""
    from tests.task_models import write_task_repository

    repository = write_task_repository(tmp_path_factory.mktemp("task-repository"))
    with running_server(tmp_path_factory.mktemp("task-server"), "--model-repository", str(repository)) as running:
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
    repository: Path, name: str, module: torch.nn.Module, labels: list[str], version: int = 1, size: int = 224
) -> Path:
    """A model folder as `torchrest optimize` writes one: the module exported with torch.export (it takes
    uint8 NHWC batches, any batch size) as <name>/<version>/model.pt2, labels.txt and config.json."""
    from torchrest.config import ModelConfig

    folder = repository / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    export_program(module, (2, size, size, 3), torch.uint8, folder / str(version) / "model.pt2")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    if not (folder / "config.json").exists():
        config = ModelConfig(
            name=name, backend="torch", artifact="1/model.pt2", crop_size=size, resize_size=size * 8 // 7
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
    exported program) and tiny (4 classes, for load/unload round trips)."""
    from torchrest.config import ServerConfig
    from torchrest.models.registry import load_model

    lite0 = load_model(ServerConfig())
    assert lite0.module is not None
    write_model_folder(root, "lite0", lite0.module, lite0.labels)
    write_model_folder(root, "tiny", Tiny(0.0), TINY_LABELS)
    return root


def admin_token_file(folder: Path) -> Path:
    """The admin token in a file, as a Kubernetes Secret mounts it (`--admin-token-file`)."""
    path = folder / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")
    return path
