"""Model files users bring: a torch.export program (.pt2), an AOTInductor package, ONNX, and legacy
TorchScript, served by real servers and compared with the built-in model they were made from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import PHOTOS, Server, export_program, running_server, torchrest_command
from tests.helpers import clients

pytestmark = pytest.mark.slow(seconds=85)
ROOT = Path(__file__).parent.parent


def lite0_network() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, as a user holds it: float NCHW in, logits out."""
    from torchrest.config import ModelSource
    from torchrest.models.registry import load_model

    module = load_model(ModelSource("efficientnet_lite0")).module
    assert module is not None
    return module.network  # type: ignore[no-any-return]


class Small(torch.nn.Module):
    """A small user's classifier (4 classes), quick to compile with AOTInductor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def compile_package(module: torch.nn.Module, side: int, path: Path, dynamic: bool = True) -> Path:
    example = torch.zeros((2, 3, side, side))
    shapes = ({0: torch.export.Dim("batch", max=64)},) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=shapes)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    return export_program(lite0_network(), (2, 3, 224, 224), torch.float32, folder / "lite0.pt2")


@pytest.fixture(scope="module")
def served_file(tmp_path_factory: pytest.TempPathFactory, lite0_file: Path) -> Iterator[tuple[Server, int]]:
    with running_server(tmp_path_factory.mktemp("served"), "--model", str(lite0_file), "--grpc-port", "0") as s:
        assert s.grpc_port is not None
        yield s, s.grpc_port


def top5(server: Server, photo: bytes, model: str | None = None) -> list[tuple[str, float]]:
    params = {"top_k": 5} | ({"model": model} if model else {})
    response = httpx.post(f"{server.url}/classify", files={"image": photo}, params=params, timeout=60)
    assert response.status_code == 200, response.text
    return [(row["label"], row["confidence"]) for row in response.json()["top_k"]]


def test_an_exported_program_answers_as_the_eager_model_over_classify_v2_and_grpc(
    served_file: tuple[Server, int], server: Server
) -> None:
    import tritonclient.http as http_client

    exported, grpc_port = served_file
    for name, photo in PHOTOS.items():
        eager, mine = top5(server, photo), top5(exported, photo)
        assert [label for label, _ in mine] == [label for label, _ in eager], name
        assert [score for _, score in mine] == pytest.approx([score for _, score in eager], abs=1e-4), name
    described = httpx.get(exported.url, timeout=10).json()
    assert described["model"]["format"] == "exported-program" and "deprecated" not in described["model"]

    http = http_client.InferenceServerClient(exported.url.removeprefix("http://"))
    tensor = http_client.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PHOTOS["cat"]], dtype=np.object_))
    result = http.infer("lite0", [tensor], outputs=[http_client.InferRequestedOutput("labels")])
    assert result.as_numpy("labels")[0][0].decode() == top5(server, PHOTOS["cat"])[0][0]

    over_grpc = clients("answers", f"127.0.0.1:{grpc_port}", "lite0")
    assert over_grpc["ready"]
    for name, photo in PHOTOS.items():
        eager = top5(server, photo)
        assert over_grpc[name]["labels"][0] == eager[0][0], name


def test_an_aoti_package_serves_with_instances_at_once(tmp_path: Path) -> None:
    """Each instance has its own container (the package's library opened apart): two run at once and
    answer what the exported program answers; the server runs it with two instances under load."""
    from torchrest.backends.aoti_backend import open_aoti

    package = compile_package(Small(), 64, tmp_path / "small.pt2")
    program = export_program(Small(), (2, 3, 64, 64), torch.float32, tmp_path / "small-exported.pt2")
    options = {"crop": "64", "pixels": "float-nchw"}
    instances = [open_aoti(package, device="cpu", threads=1, options=options) for _ in range(2)]
    assert instances[0]._lib._handle != instances[1]._lib._handle  # type: ignore[attr-defined]
    assert all(instance.batch == 0 for instance in instances)  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (1, 5, 16)]
    from torchrest.backends.torch_backend import open_torch

    reference = open_torch(program, device="cpu", threads=1, options={"channels_last": "false"})
    expected = [reference.run(batch) for batch in batches]
    answers: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(2)

    def run(index: int) -> None:
        instances[index].prepare_thread()
        start.wait()
        answers[index] = [instances[index].run(batch) for batch in batches * 20]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        for got, want in zip(answers[index], expected * 20, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4)

    labels = tmp_path / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    args = ("--model", str(package), "--labels", str(labels), "--input-size", "64", "--instances", "2")
    with running_server(tmp_path, *args) as served:
        described = httpx.get(served.url, timeout=10).json()
        assert described["backend"] == "aoti" and described["batching"]["instances"] == 2
        with httpx.Client(base_url=served.url, timeout=60) as client:
            replies = []
            burst = [threading.Thread(target=lambda: replies.append(top_label(client))) for _ in range(24)]
            for thread in burst:
                thread.start()
            for thread in burst:
                thread.join()
        assert len(replies) == 24 and set(replies) <= {"north", "east", "south", "west"}
        assert len(set(replies)) == 1  # the same photo, the same answer from either instance


def top_label(client: httpx.Client) -> str:
    response = client.post("/classify", files={"image": PHOTOS["cat"]})
    assert response.status_code == 200, response.text
    return str(response.json()["prediction"]["label"])


def test_an_aoti_package_compiled_for_a_fixed_batch_is_fed_in_chunks(tmp_path: Path) -> None:
    from torchrest.backends.aoti_backend import open_aoti

    package = compile_package(Small(), 64, tmp_path / "fixed.pt2", dynamic=False)  # batch 2, always
    backend = open_aoti(package, device="cpu", threads=1, options={"input": "64x64", "pixels": "float-nchw"})
    assert backend.batch == 2  # type: ignore[attr-defined]
    program = export_program(Small(), (2, 3, 64, 64), torch.float32, tmp_path / "dynamic.pt2")
    from torchrest.backends.torch_backend import open_torch

    reference = open_torch(program, device="cpu", threads=1, options={"channels_last": "false"})
    batch = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(backend.run(batch), reference.run(batch), atol=1e-4)


def test_a_package_compiled_for_another_cpu_falls_back_to_the_portable_program_or_fails_in_one_line(
    tmp_path: Path,
) -> None:
    """optimize's AOTInductor folder records the torch that compiled it and keeps the exported program
    beside the package; a package whose metadata names a CPU feature this one lacks is not run."""
    from torchrest.models.repository import ModelConfig

    folder = tmp_path / "repository" / "small"
    (folder / "1").mkdir(parents=True)
    compile_package(Small(), 64, folder / "1" / "model.pt2")
    export_program(Small(), (2, 3, 64, 64), torch.float32, folder / "1" / "exported.pt2")
    (folder / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    foreign = {"torch": "2.99.0", "portable": "exported.pt2", "pixels": "float-nchw", "batch": "0"}
    config = ModelConfig(name="small", backend="aoti", artifact="1/model.pt2", crop_size=64, resize_size=72)
    config.backend_options.update(foreign)
    config.write(folder / "config.json")
    with running_server(tmp_path, "--model-repository", str(tmp_path / "repository")) as served:
        assert httpx.get(served.url, timeout=10).json()["backend"] == "aoti-portable"
        assert top_label(httpx.Client(base_url=served.url, timeout=60)) in {"north", "east", "south", "west"}
        assert "compiled with torch 2.99.0, this is torch" in served.log()
        assert "serving the portable exported.pt2 instead" in served.log()

    (folder / "1" / "exported.pt2").unlink()
    with zipfile.ZipFile(folder / "1" / "model.pt2") as package:  # metadata for a CPU with an ISA none has
        name = next(n for n in package.namelist() if n.endswith("wrapper_metadata.json"))
        metadata = json.loads(package.read(name))
    rewritten = tmp_path / "rewritten.pt2"
    with zipfile.ZipFile(folder / "1" / "model.pt2") as old, zipfile.ZipFile(rewritten, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == name:
                # what it was compiled for here (AVX2 or AVX512: whichever this machine has), and one ISA no CPU has
                isa = f"{metadata.get('AOTI_CPU_ISA', '')} AMX_FP8_FUTURE".strip()
                data = json.dumps(metadata | {"AOTI_CPU_ISA": isa}).encode()
            new.writestr(item, data)
    rewritten.replace(folder / "1" / "model.pt2")
    config.backend_options.pop("torch")
    config.write(folder / "config.json")
    # a subprocess: the load fails after the port is open (one process loads its models while serving)
    result = subprocess.run(
        torchrest_command("serve", "--model-repository", str(tmp_path / "repository"), "--port", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "does not fit this machine: compiled for a CPU with AMX_FP8_FUTURE, which this one lacks" in result.stderr


def test_an_onnx_file_is_served_directly(tmp_path: Path) -> None:
    network = Small().eval()
    path = tmp_path / "small.onnx"
    with torch.no_grad():
        torch.onnx.export(network, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=True, external_data=False)
    # a fixed batch of 1 (no dynamic dimension): the server feeds it one image at a time
    labels = tmp_path / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    with running_server(tmp_path, "--model", str(path), "--labels", str(labels), "--input-size", "64") as served:
        described = httpx.get(served.url, timeout=10).json()
        assert described["backend"] == "onnxruntime" and described["model"]["format"] == "onnx"
        with httpx.Client(base_url=served.url, timeout=60) as client:
            labels_seen = {top_label(client) for _ in range(4)}
        assert len(labels_seen) == 1


@pytest.mark.legacy_torchscript
def test_a_torchscript_file_still_loads_and_says_it_is_deprecated(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.jit.trace(Small().eval(), torch.zeros((1, 3, 64, 64))).save(str(path))
    labels = tmp_path / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    with running_server(tmp_path, "--model", str(path), "--labels", str(labels), "--input-size", "64") as served:
        described = httpx.get(served.url, timeout=10).json()
        assert described["model"]["format"] == "torchscript"
        assert described["model"]["deprecated"].startswith("TorchScript is deprecated by PyTorch")
        assert top_label(httpx.Client(base_url=served.url, timeout=60)) in {"north", "east", "south", "west"}
        assert "TorchScript is deprecated by PyTorch" in served.log()


def test_the_readme_lines_that_export_a_model_work(tmp_path: Path) -> None:
    """The README's export snippet, run as written, makes a .pt2 the server serves with its command."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    subprocess.run([sys.executable, "-c", code.group(1)], cwd=tmp_path, check=True, timeout=300)
    command = re.search(r"```sh\n(torchrest serve [^\n#]*)", section)
    assert command is not None and command.group(1).split()[2:4] == ["--model", "model.pt2"]
    with running_server(tmp_path, "--model", str(tmp_path / "model.pt2")) as served:
        response = httpx.post(f"{served.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60)
        assert response.status_code == 200, response.text
        assert httpx.get(served.url, timeout=10).json()["model"]["format"] == "exported-program"


def test_a_compiled_module_runs_each_batch_padded_to_its_bucket(tmp_path: Path) -> None:
    """torch.compile over fixed batch buckets (what the CUDA candidate does with CUDA graphs), here on the
    CPU without them: any batch size answers as the exported program does."""
    from torchrest.backends.torch_backend import open_torch

    program = export_program(Small(), (2, 3, 64, 64), torch.float32, tmp_path / "small.pt2")
    plain = open_torch(program, device="cpu", threads=1, options={"channels_last": "false"})
    options = {"channels_last": "false", "compile": "default", "buckets": "1,4"}
    compiled = open_torch(program, device="cpu", threads=1, options=options)
    assert compiled.buckets == (1, 4)
    rng = np.random.default_rng(2)
    for size in (1, 3, 6):
        batch = rng.integers(0, 256, (size, 64, 64, 3), dtype=np.uint8)
        np.testing.assert_allclose(compiled.run(batch), plain.run(batch), atol=1e-4)
