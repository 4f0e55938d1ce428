"""Feeding a model file what it takes, when that is not what the batcher builds.

The batcher builds (N, H, W, 3) uint8; torchrest's own artifacts take exactly that (normalisation inside).
A model file a user brings takes what its network takes: (N, 3, H, W) float, ImageNet-normalised, and
perhaps only a fixed batch size (exported without a dynamic batch dimension).

    (N, H, W, 3) uint8 -> Uint8Classifier(network): the stem in front of a torch network, in its graph
    (N, H, W, 3) uint8 -> float_nchw -> (N, 3, H, W) float32, (x/255 - mean) / std, for a compiled file
    run over N images -> in_fixed_batches(run, batch, B) -> chunks of B, the last one padded
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from torchrest.config import IMAGENET_MEAN, IMAGENET_STD

UINT8_NHWC = "uint8-nhwc"
FLOAT_NCHW = "float-nchw"


def normalisation(
    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, 3, 1, 1): uint8 x -> x * scale + shift is (x/255 - mean) / std."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)
    return scale, shift


_SCALE, _SHIFT = normalisation()


def float_nchw(pixels: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, contiguous, normalised as torchrest's stem does."""
    scale, shift = _SCALE.to(pixels.device), _SHIFT.to(pixels.device)
    return torch.addcmul(shift, pixels.permute(0, 3, 1, 2).float(), scale).contiguous()


class NormalizeUint8(nn.Module):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, channels-last in memory, (x/255 - mean) / std."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        scale, shift = normalisation(mean, std)
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


def in_fixed_batches(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, size: int) -> np.ndarray:
    """`run` takes exactly `size` images at a time: feed it `batch` in chunks, the last one padded with
    zeros, and return only the rows that were asked for."""
    if len(batch) == size:
        return run(batch)
    rows = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        if len(chunk) < size:
            chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        rows.append(run(chunk)[: len(batch) - start])
    return np.concatenate(rows)
