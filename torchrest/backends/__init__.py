"""Backends run one loaded model on one device: (N, H, W, 3) uint8 -> (N, classes) float32 logits.

A new backend is one module here and one line in `BACKENDS`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from torchrest.backends.torch_backend import TorchBackend, resolve_device


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


BACKENDS = {"torch": TorchBackend}

__all__ = ["BACKENDS", "Backend", "TorchBackend", "resolve_device"]
