"""What every peer server serves: the same model and the same pre-processing, whatever server wraps it.

Each peer (one file beside this one) imports this module from its own virtual environment, so it needs
only torch, openvino, numpy and Pillow. `benchmark/peers.py` says what to load through the environment:

    PEER_BACKEND   torch (the eager EfficientNet-Lite0 with the published weights) or openvino
    PEER_MODEL     the weights file (torch) or the artifact `torchrest optimize` wrote (openvino)
    PEER_LABELS    a text file, one class name per line
    PEER_THREADS   intra-op threads of each model instance
    PEER_SOURCE    the torchrest checkout, whose `torchrest.models.efficientnet_lite` builds the network

Pre-processing is torchvision's recipe done with Pillow, as the peers' own examples do: decode, resize
the shorter side to 256 (Pillow's bilinear, antialiased), centre-crop 224. Both models take the batch as
(N, 224, 224, 3) uint8 and normalise inside, as torchrest's do.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

RESIZE, CROP = 256, 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def preprocess(data: bytes) -> np.ndarray:
    """JPEG (or any Pillow format) bytes -> (224, 224, 3) uint8 RGB."""
    return resize_crop(Image.open(io.BytesIO(data)))


def resize_crop(image: Image.Image) -> np.ndarray:
    """A decoded (or lazily decoding) Pillow image -> (224, 224, 3) uint8 RGB."""
    image = image.convert("RGB")
    scale = RESIZE / min(image.size)
    width, height = max(RESIZE, round(image.width * scale)), max(RESIZE, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - CROP) // 2, (height - CROP) // 2
    return np.asarray(image.crop((left, top, left + CROP, top + CROP)))


class Classifier:
    """One model instance; `classify(batch)` -> [(label, confidence)] per row of a uint8 NHWC batch."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or int(os.environ.get("PEER_THREADS", "1"))
        self.backend = os.environ.get("PEER_BACKEND", "torch")
        self.labels = Path(os.environ["PEER_LABELS"]).read_text().splitlines()
        model = Path(os.environ["PEER_MODEL"])
        self._run = self._open_openvino(model) if self.backend == "openvino" else self._open_torch(model)

    def __reduce__(self) -> tuple[type[Classifier], tuple[int]]:
        """Pickled (KServe's --workers spawns processes with the model objects): reopened from the
        environment in the new process."""
        return Classifier, (self.threads,)

    def classify(self, batch: np.ndarray) -> list[tuple[str, float]]:
        logits = self._run(np.ascontiguousarray(batch))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        return [(self.labels[i], float(probabilities[row, i])) for row, i in enumerate(best)]

    def _open_torch(self, weights: Path):  # type: ignore[no-untyped-def]
        import torch

        # The architecture is torchrest's (it matches the published weights' names); only torch is imported.
        sys.path.insert(0, os.environ["PEER_SOURCE"])
        from torchrest.models.efficientnet_lite import efficientnet_lite0

        torch.set_num_threads(self.threads)
        network = efficientnet_lite0(len(self.labels))
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        network.eval()
        mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD).view(1, 3, 1, 1) * 255

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
                return network((pixels - mean) / std).numpy()

        return run

    def _open_openvino(self, artifact: Path):  # type: ignore[no-untyped-def]
        import openvino as ov

        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        compiled = core.compile_model(core.read_model(str(artifact)), "CPU", config)
        request = compiled.create_infer_request()

        def run(batch: np.ndarray) -> np.ndarray:
            return np.asarray(request.infer({0: batch})[compiled.output(0)])

        return run


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))
