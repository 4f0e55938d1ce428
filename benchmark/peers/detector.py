"""What the detection row's servers other than torchrest serve (the peers and the naive FastAPI server): one
ONNX file of the dense layout (N, 4 + C, A) in ONNX Runtime, Pillow's letterbox and class-aware NMS in
numpy, as the usual recipes for a YOLOv8-style output write them. Needs only numpy, Pillow and onnxruntime.

    PEER_MODEL     the ONNX file: (N, 3, 640, 640) float pixels / 255 in
    PEER_THREADS   intra-op threads of the session (0: ONNX Runtime's default, every core)

Each image's answer is what torchrest's /detect gives, less the labels: {"detections": [{"class_id",
"confidence", "box": [x1, y1, x2, y2]}, ...]}, most confident first, the boxes in the original image's
pixels and clipped to it, with torchrest's defaults (score over 0.25, IoU over 0.45 suppresses, 100 at most).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SIZE = 640
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS = 0.25, 0.45, 100
FILL = 114  # the grey Ultralytics pads with


class Placement(NamedTuple):
    """Where an image went in the input: the scale, the padding's left and top, the image's own size."""

    scale: float
    left: int
    top: int
    width: int
    height: int


def letterbox(data: bytes, size: int = SIZE) -> tuple[np.ndarray, Placement]:
    """An encoded image -> (3, size, size) float32 pixels / 255 (resized to fit, aspect kept, centred, grey
    around it) and where it went."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    scale = min(size / image.width, size / image.height)
    width, height = round(image.width * scale), round(image.height * scale)
    canvas = Image.new("RGB", (size, size), (FILL, FILL, FILL))
    left, top = (size - width) // 2, (size - height) // 2
    canvas.paste(image.resize((width, height), Image.Resampling.BILINEAR), (left, top))
    pixels = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return pixels, Placement(scale, left, top, image.width, image.height)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS over (K, 4) x1y1x2y2 boxes: the most confident left is kept, every box overlapping it by
    more than `threshold` dropped, until none is left. The indices kept, most confident first."""
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


def detections(prediction: np.ndarray, placement: Placement) -> list[dict[str, Any]]:
    """One image's (4 + C, A) output -> its answer: the candidates over the threshold, NMS within each class,
    the most confident MAX_DETECTIONS mapped back onto the image."""
    class_scores = prediction[4:]
    scores, classes = class_scores.max(axis=0), class_scores.argmax(axis=0)
    keep = scores > SCORE_THRESHOLD
    centres, scores, classes = prediction[:4, keep].T, scores[keep], classes[keep]
    boxes = np.concatenate((centres[:, :2] - centres[:, 2:] / 2, centres[:, :2] + centres[:, 2:] / 2), axis=1)
    found = []
    for class_id in np.unique(classes):
        mine = np.flatnonzero(classes == class_id)
        found += [
            (float(scores[mine[i]]), int(class_id), boxes[mine[i]])
            for i in nms(boxes[mine], scores[mine], IOU_THRESHOLD)
        ]
    found.sort(key=lambda detection: -detection[0])
    offset = np.array([placement.left, placement.top] * 2, np.float32)
    bounds = np.array([placement.width, placement.height] * 2, np.float32)
    answer = []
    for score, class_id, box in found[:MAX_DETECTIONS]:
        original = np.clip((box - offset) / placement.scale, 0, bounds)
        answer.append({"class_id": class_id, "confidence": score, "box": [float(v) for v in original]})
    return answer


class Detector:
    """One ONNX Runtime session; `detect(pixels, placements)` -> each image's detections."""

    def __init__(self, model: str | None = None, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "0")) if threads is None else threads
        path = model or os.environ["PEER_MODEL"]
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def detect(self, pixels: np.ndarray, placements: Sequence[Placement]) -> list[list[dict[str, Any]]]:
        """(N, 3, S, S) float32 pixels, one call -> each image's detections."""
        predictions = self.session.run(None, {self.input: np.ascontiguousarray(pixels)})[0]
        return [
            detections(prediction, placement) for prediction, placement in zip(predictions, placements, strict=True)
        ]
