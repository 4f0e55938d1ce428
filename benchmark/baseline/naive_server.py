"""The naive baseline the seed measured against: FastAPI + PyTorch, the model called per request at
batch 1, inside the request handler. Same model, weights and pre-processing as torchrest, so the
comparison isolates how the two serve, not what they compute.

    BASELINE_MODEL=resnet18 [BASELINE_DEVICE=cuda] gunicorn -k uvicorn_worker.UvicornWorker -w 1 \\
        -b 127.0.0.1:8000 --chdir benchmark/baseline naive_server:app

On a GPU (BASELINE_DEVICE=cuda) it does what a first GPU server does: the fp32 model on the device, each
request's tensor copied there and its answer back, one at a time.

FastAPI runs the sync handler in its thread pool, so concurrent requests each call the model with
torch's default thread count: that oversubscription is what a first FastAPI server does.
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI, File, UploadFile

from torchrest.config import ServerConfig
from torchrest.models.registry import load_model
from torchrest.preprocess import decode_image

config = ServerConfig(model=os.environ.get("BASELINE_MODEL", "resnet18"))
device = torch.device(os.environ.get("BASELINE_DEVICE", "cpu"))
model = load_model(config)
assert model.module is not None
network = model.module.eval().to(device)
app = FastAPI()


@app.post("/classify")
def classify(image: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 - FastAPI's idiom
    pixels = decode_image(image.file.read(), model.input_spec, config.max_image_pixels)
    with torch.inference_mode():
        probabilities = torch.softmax(network(torch.from_numpy(pixels).unsqueeze(0).to(device)), dim=1)[0].cpu()
    confidence, index = probabilities.max(dim=0)
    return {"status": "success", "prediction": {"label": model.labels[int(index)], "confidence": float(confidence)}}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
