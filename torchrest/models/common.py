"""Pieces every built-in classifier shares: the uint8 NHWC input stem and the loaded-model record.

A model's forward takes the batch exactly as the batcher builds it, (N, H, W, 3) uint8, and does its own
normalisation, so pre-processing stays model-agnostic and the batch crosses to the device as bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from torchrest.backends import Backend, TorchBackend
from torchrest.config import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from torchrest.layout import Layout


class NormalizeUint8(nn.Module):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, channels-last in memory, (x/255 - mean) / std."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # permute is a view: the result has channels-last strides, which oneDNN convolutions prefer.
        return torch.addcmul(self.shift, pixels.permute(0, 3, 1, 2).to(self.scale.dtype), self.scale)


class Uint8Classifier(nn.Module):
    """Wraps a float NCHW network (eager or TorchScript) so that it takes uint8 NHWC batches."""

    def __init__(self, network: nn.Module, normalize: NormalizeUint8 | None = None) -> None:
        super().__init__()
        self.normalize = normalize or NormalizeUint8()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(pixels))


@dataclass(slots=True)
class LoadedModel:
    """A model ready for a backend: how to open one, plus what the API needs to describe it.

    Built-in and TorchScript models carry their uint8-input torch `module` (optimize starts from it);
    a model folder from a repository carries an `opener` for its artifact instead.
    """

    name: str
    module: nn.Module | None
    labels: list[str]
    input_spec: InputSpec
    pretrained: bool
    source: str
    metadata: dict[str, object] = field(default_factory=dict)
    opener: Callable[[str, int, int], Backend] | None = None  # (device, threads, instances) -> Backend
    layout: Layout | None = None  # the serving layout optimize measured best (config.json), if any

    @property
    def version(self) -> str:
        """The version served (a repository's version folder; 1 for built-in and TorchScript models)."""
        return str(self.metadata.get("version", "1"))

    def open_backend(self, device: str, threads: int, instances: int = 1) -> Backend:
        """One instance of this model on `device`, pinned to `threads` intra-op threads."""
        if self.opener is not None:
            return self.opener(device, threads, instances)
        assert self.module is not None, "a LoadedModel has a module or an opener"
        name = "torchscript" if self.metadata.get("format") == "torchscript" else "torch_eager"
        return TorchBackend(self.module, device=device, threads=threads, name=name)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "source": self.source,
            "classes": len(self.labels),
            "input": {"crop_size": self.input_spec.crop_size, "resize_size": self.input_spec.resize_size},
            **self.metadata,
        }
