"""The naive detection server a user writes first: FastAPI, the ONNX file in ONNX Runtime, called per request
at batch 1 inside the handler; Pillow's letterbox and class-aware NMS in numpy, as the usual recipes do it
(the boxes above the threshold, then for each class the greedy loop, one kept box at a time).

    BASELINE_MODEL=detector.onnx BASELINE_SIZE=640 gunicorn -k uvicorn_worker.UvicornWorker -w 1 \\
        -b 127.0.0.1:8000 --chdir benchmark/baseline naive_detector:app

FastAPI runs the sync handler in its thread pool; one ONNX Runtime session is shared by them (its `run` may
be called from several threads at once), each call on the session's threads.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image, ImageOps

SIZE = int(os.environ.get("BASELINE_SIZE", "640"))
session = ort.InferenceSession(os.environ["BASELINE_MODEL"], providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name
app = FastAPI()


def letterbox(image: Image.Image) -> tuple[np.ndarray, float, int, int]:
    """Resize to fit SIZE x SIZE keeping the aspect, pad with grey 114; (1, 3, S, S) float / 255, the scale
    and the padding."""
    scale = min(SIZE / image.width, SIZE / image.height)
    width, height = round(image.width * scale), round(image.height * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (114, 114, 114))
    left, top = (SIZE - width) // 2, (SIZE - height) // 2
    canvas.paste(image.resize((width, height), Image.Resampling.BILINEAR), (left, top))
    pixels = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return pixels, scale, left, top


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order = scores.argsort()[::-1]
    kept = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        best = order[0]
        kept.append(int(best))
        x1 = np.maximum(boxes[best, 0], boxes[order[1:], 0])
        y1 = np.maximum(boxes[best, 1], boxes[order[1:], 1])
        x2 = np.minimum(boxes[best, 2], boxes[order[1:], 2])
        y2 = np.minimum(boxes[best, 3], boxes[order[1:], 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / (areas[best] + areas[order[1:]] - inter + 1e-9)
        order = order[1:][iou <= threshold]
    return kept


@app.post("/detect")
def detect(image: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 - FastAPI's idiom
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(image.file.read()))).convert("RGB")
    pixels, scale, left, top = letterbox(picture)
    prediction = session.run(None, {INPUT: pixels})[0][0]  # (4 + C, A)
    scores = prediction[4:].max(axis=0)
    classes = prediction[4:].argmax(axis=0)
    keep = scores > 0.25
    centres, scores, classes = prediction[:4, keep].T, scores[keep], classes[keep]
    boxes = np.concatenate((centres[:, :2] - centres[:, 2:] / 2, centres[:, :2] + centres[:, 2:] / 2), axis=1)
    detections = []
    for class_id in np.unique(classes):
        mine = np.flatnonzero(classes == class_id)
        for index in nms(boxes[mine], scores[mine], 0.45):
            detections.append((float(scores[mine[index]]), int(class_id), boxes[mine[index]]))
    detections.sort(key=lambda d: -d[0])
    answer = []
    for score, class_id, box in detections[:100]:
        x1, y1, x2, y2 = (box - [left, top, left, top]) / scale
        answer.append({"class_id": class_id, "confidence": score, "box": [float(x1), float(y1), float(x2), float(y2)]})
    return {"status": "success", "detections": answer}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
