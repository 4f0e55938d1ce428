"""Feeding a model file what it takes, when that is not what the batcher builds, and reading what it gives.

The batcher builds (N, H, W, 3) uint8; torchrest's own artifacts take exactly that (normalisation inside).
A model file a user brings takes what its network takes: (N, 3, H, W) float, normalised as its input spec
says (ImageNet's mean and std, or pixels / 255), and perhaps only a fixed batch size (exported without a
dynamic batch dimension). Every backend gives back all of a model's outputs, in order.

    (N, H, W, 3) uint8 -> Uint8Network(network): the stem in front of a torch network, in its graph
    (N, H, W, 3) uint8 -> float_nchw -> (N, 3, H, W) float32, (x/255 - mean) / std, for a compiled file
    run over N images -> in_fixed_batches(run, batch, B) -> chunks of B, the last one padded
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from torchrest.model_input import IMAGENET, NORMALIZATIONS

UINT8_NHWC = "uint8-nhwc"
FLOAT_NCHW = "float-nchw"

Outputs = tuple[np.ndarray, ...]  # a model's outputs for a batch, in order, each (N, ...)


def normalisation(normalize: str = IMAGENET) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, 3, 1, 1): uint8 x -> x * scale + shift is (x/255 - mean) / std."""
    mean, std = NORMALIZATIONS[normalize]
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)
    return scale, shift


_STEMS = {name: normalisation(name) for name in NORMALIZATIONS}


def float_nchw(pixels: torch.Tensor, normalize: str = IMAGENET) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, contiguous, normalised as torchrest's stem does: one
    transposing copy into the NCHW float tensor, then the scale and shift in place (a third of the time of
    normalising channels-last and copying that)."""
    scale, shift = _STEMS[normalize]
    scale, shift = scale.to(pixels.device), shift.to(pixels.device)
    out = torch.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=torch.float32, device=pixels.device)
    out.copy_(pixels.permute(0, 3, 1, 2))
    return out.mul_(scale).add_(shift)


class NormalizeUint8(nn.Module):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, channels-last in memory, (x/255 - mean) / std."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, normalize: str = IMAGENET) -> None:
        super().__init__()
        scale, shift = normalisation(normalize)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # permute is a view: the result has channels-last strides, which oneDNN convolutions prefer.
        return torch.addcmul(self.shift, pixels.permute(0, 3, 1, 2).to(self.scale.dtype), self.scale)


class Uint8Network(nn.Module):
    """Wraps a float NCHW network (eager, exported or TorchScript) so that it takes uint8 NHWC batches."""

    def __init__(self, network: nn.Module, normalize: str = IMAGENET) -> None:
        super().__init__()
        self.normalize = NormalizeUint8(normalize)
        self.network = network

    def forward(self, pixels: torch.Tensor) -> Any:
        return self.network(self.normalize(pixels))


def as_outputs(result: Any) -> Outputs:
    """What a model returned (a tensor or array, a tuple or list of them, or a dict of them, in order) ->
    its outputs as numpy arrays (floating point as float32)."""
    if isinstance(result, dict):
        result = list(result.values())
    parts = list(result) if isinstance(result, (tuple, list)) else [result]
    arrays = []
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().float().cpu() if part.is_floating_point() else part.detach().cpu()
            arrays.append(part.numpy())
        else:
            array = np.asarray(part)
            arrays.append(array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array)
    return tuple(arrays)


def in_fixed_batches(run: Callable[[np.ndarray], Outputs], batch: np.ndarray, size: int) -> Outputs:
    """`run` takes exactly `size` images at a time: feed it `batch` in chunks, the last one padded with
    zeros, and return only the rows that were asked for."""
    if len(batch) == size:
        return run(batch)
    parts: list[Sequence[np.ndarray]] = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        if len(chunk) < size:
            chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        parts.append([output[: len(batch) - start] for output in run(chunk)])
    return tuple(np.concatenate(outputs) for outputs in zip(*parts, strict=True))


class FirstOutputs(nn.Module):
    """A model's first `count` outputs only (one: that tensor alone), those its tasks read: a built-in
    classifier's logits without the features it also gives, unless it embeds too."""

    def __init__(self, model: nn.Module, count: int = 1) -> None:
        super().__init__()
        self.model = model
        self.count = count

    def forward(self, pixels: torch.Tensor) -> Any:
        result = self.model(pixels)
        if isinstance(result, dict):  # torchvision's segmenters: {"out": ..., "aux": ...}, in order
            result = list(result.values())
        if not isinstance(result, (tuple, list)):
            return result
        return result[0] if self.count == 1 else tuple(result[: self.count])
