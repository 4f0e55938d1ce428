"""The naive detection server a user writes first: FastAPI, the ONNX file in ONNX Runtime, called per request
at batch 1 inside the handler; Pillow's letterbox and class-aware NMS in numpy, as the usual recipes do it
(the boxes above the threshold, then for each class the greedy loop, one kept box at a time). That code is
benchmark/peers/detector.py, which the detection row's peers serve too.

    BASELINE_MODEL=detector.onnx BASELINE_SIZE=640 gunicorn -k uvicorn_worker.UvicornWorker -w 1 \\
        -b 127.0.0.1:8000 --chdir benchmark/baseline naive_detector:app

FastAPI runs the sync handler in its thread pool; one ONNX Runtime session is shared by them (its `run` may
be called from several threads at once), each call on the session's threads (ONNX Runtime's default: every
core).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastapi import FastAPI, File, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "peers"))
from detector import Detector, letterbox  # noqa: E402

SIZE = int(os.environ.get("BASELINE_SIZE", "640"))
detector = Detector(os.environ["BASELINE_MODEL"], threads=0)
app = FastAPI()


@app.post("/detect")
def detect(image: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 - FastAPI's idiom
    pixels, placement = letterbox(image.file.read(), SIZE)
    return {"status": "success", "detections": detector.detect(pixels[None], [placement])[0]}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
