"""Start-up failures: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import (
    PHOTOS,
    TINY_LABELS,
    Tiny,
    export_program,
    running_server,
    write_model_folder,
)
from tests.helpers import assert_one_line_failure, run_cli, start


def test_unknown_model_name() -> None:
    assert_one_line_failure(start("--model", "resnet999"), "unknown model 'resnet999'")


def test_missing_weights_file(tmp_path: Path) -> None:
    assert_one_line_failure(
        start("--model", "resnet18", "--weights", str(tmp_path / "no.pth")), "weights file not found"
    )


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint"])
def test_corrupt_weights_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    assert_one_line_failure(start("--model", "resnet18", "--weights", str(path)), "not a PyTorch state dict")


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx", "model.pt"])
def test_corrupt_model_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 nope")
    assert_one_line_failure(start("--model", str(path)), "is not a model file torchrest reads")


def test_exported_program_for_another_image_size(tmp_path: Path) -> None:
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = export_program(network, (2, 3, 64, 64), torch.float32, tmp_path / "small.pt2")
    assert_one_line_failure(start("--model", str(path)), "takes 64x64 images: serve it with --input-size 64")


def test_optimize_help() -> None:
    result = run_cli("optimize", "--help")
    assert result.returncode == 0, result.stderr
    assert "--max-accuracy-drop" in result.stdout and "0.5%" in result.stdout


def test_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_failure(start("--host", "127.0.0.1", "--port", str(port)), "cannot listen")


def test_bad_option_value() -> None:
    assert_one_line_failure(start("--max-batch-size", "-1"), "--max-batch-size cannot be negative")


def test_help_lists_options_with_env_names() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert "--max-batch-size" in result.stdout and "TORCHREST_MAX_BATCH_SIZE" in result.stdout


def test_model_name_renames_one_model_only(tmp_path: Path) -> None:
    for name in ("north", "south"):
        write_model_folder(tmp_path, name, Tiny(0.0), TINY_LABELS)
    result = start("--model-repository", str(tmp_path), "--model-name", "compass")
    assert_one_line_failure(result, "--model-name names one model")


def test_model_with_a_repository_serves_that_model_alone(tmp_path: Path) -> None:
    """`--model NAME` picks one model of the repository (the others stay loadable), and GET / says which
    model /classify answers with; a name the repository lacks is a one-line error."""
    for name in ("north", "south"):
        write_model_folder(tmp_path / "repository", name, Tiny(0.0), TINY_LABELS)
    repository = str(tmp_path / "repository")
    with running_server(tmp_path, "--model-repository", repository, "--model", "south") as server:
        info = httpx.get(f"{server.url}/", timeout=10).json()
        assert info["default_model"] == "south" and [m["name"] for m in info["models"]] == ["south"]
        assert (
            httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=30).json()["model"] == "south"
        )
        index = {row["name"]: row["state"] for row in httpx.get(f"{server.url}/v2/repository/index").json()}
        assert index == {"south": "READY", "north": "UNAVAILABLE"}
    assert_one_line_failure(start("--model-repository", repository, "--model", "west"), "--model 'west' is not in")
