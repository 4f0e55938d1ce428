"""Backends run one loaded model on one device: (N, H, W, 3) uint8 -> the model's outputs (torchrest.tasks
reads them: logits, features, boxes, class scores).

A new backend is one module here, declaring its `KIND` (name, opener, /v2 platform, KServe format,
packages), and one line in `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from torchrest.backends import aoti_backend, openvino_backend, ort_backend, torch_backend
from torchrest.backends.inputs import Outputs
from torchrest.backends.kind import BackendKind, missing_package
from torchrest.backends.openvino_backend import OpenVINOBackend
from torchrest.backends.ort_backend import OnnxRuntimeBackend
from torchrest.backends.torch_backend import TorchBackend, resolve_device


class Backend(Protocol):
    """One loaded model on one device. The batch is uint8 NHWC; normalisation is the model's business."""

    name: str
    device: str

    def prepare_thread(self) -> None:
        """Called once on the inference thread that will call `run` (thread budget, device)."""

    def input_buffer(self, max_batch_size: int, size: tuple[int, int]) -> np.ndarray:
        """A reusable (max_batch_size, height, width, 3) uint8 buffer the runtime copies requests into."""

    def run(self, batch: np.ndarray) -> Outputs:
        """(N, H, W, 3) uint8 -> the model's outputs, in order, each (N, ...) (floating point as float32)."""

    def alone(self, threads: int) -> Callable[[np.ndarray], Outputs] | None:
        """`run` on `threads` threads (the model's whole budget), for a batch that runs while the other
        instances are idle; None when it cannot. Called on the instance's thread, once."""


BACKENDS: dict[str, BackendKind] = {
    kind.name: kind for kind in (torch_backend.KIND, aoti_backend.KIND, ort_backend.KIND, openvino_backend.KIND)
}


def open_backend(kind: str, path: Path, *, device: str, threads: int, options: dict[str, str]) -> Backend:
    """Open a model folder's artifact with the backend its config.json names."""
    backend: Backend = BACKENDS[kind].open(path, device=device, threads=threads, options=options)
    return backend


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendKind",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "Outputs",
    "TorchBackend",
    "missing_package",
    "open_backend",
    "resolve_device",
]
