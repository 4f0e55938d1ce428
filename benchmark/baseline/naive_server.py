"""The naive baseline the seed measured against: FastAPI + PyTorch, the model called per request at
batch 1, inside the request handler. Same model, weights and pre-processing as torchrest, so the
comparison isolates how the two serve, not what they compute.

    BASELINE_MODEL=resnet18 [BASELINE_DEVICE=cuda] gunicorn -k uvicorn_worker.UvicornWorker -w 1 \\
        -b 127.0.0.1:8000 --chdir benchmark/baseline naive_server:app

On a GPU (BASELINE_DEVICE=cuda) it does what a first GPU server does: the fp32 model on the device, each
request's tensor copied there and its answer back, one at a time.

FastAPI runs the sync handler in its thread pool, so concurrent requests each call the model with
torch's default thread count: that oversubscription is what a first FastAPI server does.

BASELINE_REPOSITORY=model-repository serves the model file `torchrest optimize` wrote there instead
(through its runtime, ONNX Runtime or OpenVINO), one request at a time: a runtime's infer request is not
to be shared between threads, and a first server takes a lock rather than a pool of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile

from torchrest.backends.torch_backend import eval_mode
from torchrest.config import ServerConfig
from torchrest.models.registry import load_model
from torchrest.models.repository import load_from_repository
from torchrest.preprocess import decode_image

config = ServerConfig(model=os.environ.get("BASELINE_MODEL", "resnet18"))
device = torch.device(os.environ.get("BASELINE_DEVICE", "cpu"))
repository = os.environ.get("BASELINE_REPOSITORY")
loaded = load_from_repository(Path(repository), config.model or "") if repository else load_model(config)
app = FastAPI()


def open_model() -> Callable[[np.ndarray], torch.Tensor]:
    """pixels (H, W, 3) uint8 -> logits (1, classes)."""
    if repository:
        backend = loaded.open_backend(str(device), torch.get_num_threads())
        lock = threading.Lock()

        def run_file(pixels: np.ndarray) -> torch.Tensor:
            with lock:
                return torch.from_numpy(np.array(backend.run(pixels[None])[0]))

        return run_file
    assert loaded.module is not None
    network = eval_mode(loaded.module).to(device)

    def run_module(pixels: np.ndarray) -> torch.Tensor:
        logits, _ = network(torch.from_numpy(pixels).unsqueeze(0).to(device))  # and the features, unused
        return logits

    return run_module


model = open_model()


@app.post("/classify")
def classify(image: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 - FastAPI's idiom
    pixels = decode_image(image.file.read(), loaded.input_spec, config.max_image_pixels)
    with torch.inference_mode():
        probabilities = torch.softmax(model(pixels), dim=1)[0].cpu()
    confidence, index = probabilities.max(dim=0)
    return {"status": "success", "prediction": {"label": loaded.labels[int(index)], "confidence": float(confidence)}}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
