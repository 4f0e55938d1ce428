"""The naive depth server a user writes first: FastAPI, the ONNX file in ONNX Runtime, called per request at
batch 1 inside the handler; Pillow's letterbox (benchmark/peers/detector.py's: aspect kept, centred, grey 114
around it), ImageNet normalisation in numpy, the map cropped to the image's region and resized back to the
original's size by Pillow (mode F, bilinear), written as a 16-bit PNG by Pillow at compression level 1, as
torchrest writes it (BASELINE_PNG_LEVEL says otherwise: Pillow's default, 6, costs about twice as long).
The answer is torchrest's /depth JSON (examples/tasks/depth.py): {"status", "model", "image": {"width",
"height"}, "min", "max", "depth": base64 PNG, 0 the map's min and 65535 its max}.

    BASELINE_MODEL=depth.onnx BASELINE_SIZE=256 gunicorn -k uvicorn_worker.UvicornWorker -w 1 \\
        -b 127.0.0.1:8000 --chdir benchmark/baseline naive_depth:app

FastAPI runs the sync handler in its thread pool; one ONNX Runtime session is shared by them (its `run` may
be called from several threads at once), each call on the session's threads (ONNX Runtime's default: every
core).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "peers"))
from detector import letterbox  # noqa: E402

MODEL = os.environ["BASELINE_MODEL"]
SIZE = int(os.environ.get("BASELINE_SIZE", "256"))
PNG_LEVEL = int(os.environ.get("BASELINE_PNG_LEVEL", "1"))
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)

session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name
NAME = Path(MODEL).stem
app = FastAPI()


@app.post("/depth")
def depth(image: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 - FastAPI's idiom
    pixels, placement = letterbox(image.file.read(), SIZE)  # (3, SIZE, SIZE), pixels / 255
    normalised = (pixels - MEAN) / STD
    small = session.run(None, {INPUT: normalised[None]})[0][0, 0]  # (h, w)
    # the image's region of the map (the letterbox's padding left out), back at the original's size
    per_input = small.shape[1] / SIZE, small.shape[0] / SIZE
    width, height = round(placement.width * placement.scale), round(placement.height * placement.scale)
    region = (
        round(placement.left * per_input[0]),
        round(placement.top * per_input[1]),
        round((placement.left + width) * per_input[0]),
        round((placement.top + height) * per_input[1]),
    )
    crop = Image.fromarray(small.astype(np.float32)).crop(region)  # mode F
    full = np.asarray(crop.resize((placement.width, placement.height), Image.Resampling.BILINEAR))
    low, high = float(full.min()), float(full.max())
    scale = 65535.0 / (high - low) if high > low else 0.0
    levels = ((full - low) * scale + 0.5).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return {
        "status": "success",
        "model": NAME,
        "image": {"width": placement.width, "height": placement.height},
        "min": low,
        "max": high,
        "depth": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
