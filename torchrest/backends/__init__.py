"""Backends run one loaded model on one device: (N, H, W, 3) uint8 -> (N, classes) float32 logits.

A new backend is one module here and one line in `BACKENDS` (how to open its artifact from a model folder).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from torchrest.backends.openvino_backend import OpenVINOBackend, open_openvino
from torchrest.backends.ort_backend import OnnxRuntimeBackend, open_onnxruntime
from torchrest.backends.torch_backend import TorchBackend, open_torchscript, resolve_device


class Backend(Protocol):
    """One loaded model on one device. The batch is uint8 NHWC; normalisation is the model's business."""

    name: str
    device: str

    def prepare_thread(self) -> None:
        """Called once on the inference thread that will call `run` (thread budget, device)."""

    def input_buffer(self, max_batch_size: int, size: int) -> np.ndarray:
        """A reusable (max_batch_size, size, size, 3) uint8 buffer the runtime copies requests into."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, classes) float32 logits."""


# artifact path, device, threads, backend options (from config.json) -> a loaded Backend
Opener = Callable[..., Backend]
BACKENDS: dict[str, Opener] = {
    "torch": open_torchscript,
    "onnxruntime": open_onnxruntime,
    "openvino": open_openvino,
}


def missing_package(*names: str) -> str | None:
    """None when every package can be imported, else which is not installed (without importing it)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed"
    return None


def open_backend(kind: str, path: Path, *, device: str, threads: int, options: dict[str, str]) -> Backend:
    return BACKENDS[kind](path, device=device, threads=threads, options=options)


__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "missing_package",
    "open_backend",
    "resolve_device",
]
