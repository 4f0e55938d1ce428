"""Backends run one loaded model on one device: (N, H, W, 3) uint8 -> (N, classes) float32 logits.

A new backend is one module here and one line in `BACKENDS` (how to open its artifact from a model folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from torchrest.backends.openvino_backend import OpenVINOBackend, open_openvino, openvino_available
from torchrest.backends.ort_backend import OnnxRuntimeBackend, open_onnxruntime, ort_available
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


def open_backend(kind: str, path: Path, *, device: str, threads: int, options: dict[str, str]) -> Backend:
    return BACKENDS[kind](path, device=device, threads=threads, options=options)


__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "open_backend",
    "openvino_available",
    "ort_available",
    "resolve_device",
]
