"""obb: what is where, in rotated boxes (aerial photos, documents, parcels). Two layouts of a model's outputs,
told apart by their shapes:

    dense       one output (N, 4 + C + 1, A): for each of A candidates its centre x, centre y, width, height
                (input pixels), C class scores, then its angle in radians (the layout Ultralytics' -obb models
                export); the server does class-aware rotated NMS
    end-to-end  one output (N, K, 7): rows of centre x, centre y, width, height, score, class id, angle

Rotated boxes overlap by their probabilistic IoU (each box a 2-D Gaussian, 1 - the Hellinger distance of
the two: ProbIoU, Llerena et al. 2021, as Ultralytics judges them). NMS runs once per batch on the inference
thread, every image at once, as detect's does: the candidates above each image's threshold, then greedy
suppression iterated over the batch's overlap matrix to its fixed point. Per request: score_threshold
(0.25), iou_threshold (0.45), max_detections (100, at most 1000). The answer: (K, 7) rows of cx, cy, w, h,
angle, score, class in input pixels, most confident first; the front-end maps them to the original image
(its scale is the same along both axes for letterbox and crop; `--resize stretch` would skew the angles
and is refused).

    HTTP   POST /obb -> {"status", "model", "image": {"width", "height"}, "detections": [{"label", "class_id",
           "confidence", "box": {"center": [x, y], "size": [w, h], "angle": radians}, "corners": [[x, y] x 4]}]}
    v2     num_detections INT32 [n], boxes FP32 [n, K, 5] (cx, cy, w, h, angle), corners FP32 [n, K, 4, 2],
           scores FP32 [n, K], classes INT32 [n, K], labels BYTES [n, K]
    optimize   detect's gate on rotated boxes: fp32's matched by a candidate's of the same class with ProbIoU
           >= --box-iou for >= --min-box-match of them, at most --max-extra-boxes extra
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchrest.errors import ModelLoadError
from torchrest.tasks.base import (
    IMAGE_SIZE,
    Answer,
    Decoded,
    Geometry,
    Output,
    OutputShape,
    Rows,
    Schema,
    Task,
    json_answer,
    label,
    shown,
)
from torchrest.tasks.detect import (
    DetectGate,
    DetectOptions,
    detect_options,
    detection_tensors,
    most_confident,
    packed,
    query_parameters,
)
from torchrest.tasks.fidelity import Fidelity

NAME = "obb"
OUTPUTS = ("num_detections", "boxes", "corners", "scores", "classes", "labels")
EPS = 1e-7
BROKEN = "the model's rotated boxes for this image hold NaN or infinite values"


@dataclass(frozen=True, slots=True)
class DenseObbHead:
    """(N, 4 + C + 1, A) -> class-aware rotated NMS."""

    output: int
    classes: int
    candidates: int
    task = NAME
    layout = "dense"

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[DetectOptions]) -> list[Decoded]:
        predictions = torch.from_numpy(np.asarray(outputs[self.output][rows], dtype=np.float32))
        with torch.inference_mode():
            scores, order, chosen, finite = most_confident(predictions[:, 4:-1, :], options)
            picked = torch.cat((predictions[:, :4, :], predictions[:, -1:, :]), dim=1)  # cx, cy, w, h, angle
            boxes = picked.gather(2, order[:, None, :].expand(-1, 5, -1)).transpose(1, 2)  # (n, K, 5)
            finite &= (torch.isfinite(boxes).all(dim=2) | (scores == -torch.inf)).all(dim=1)
            kept = suppressed(boxes, scores, chosen, options)
        return packed(boxes, scores, chosen, kept, options, finite.tolist(), BROKEN)

    def describe(self) -> dict[str, object]:
        return {"layout": self.layout, "classes": self.classes, "candidates": self.candidates}


@dataclass(frozen=True, slots=True)
class EndToEndObbHead:
    """(N, K, 7) rows of cx, cy, w, h, score, class, angle -> thresholded, most confident first (no NMS)."""

    output: int
    rows: int
    task = NAME
    layout = "end-to-end"
    classes = -1

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[DetectOptions]) -> list[Decoded]:
        found = torch.from_numpy(np.asarray(outputs[self.output][rows], dtype=np.float32))
        threshold = torch.tensor([o.score_threshold for o in options], dtype=torch.float32)
        with torch.inference_mode():
            boxes = torch.cat((found[..., :4], found[..., 6:7]), dim=2)
            scores, classes = found[..., 4], found[..., 5].nan_to_num(-1.0).to(torch.int64)
            live = (scores > 0) & (scores > threshold[:, None])
            finite = (torch.isfinite(boxes).all(dim=2) | ~live).all(dim=1).tolist()
            scores = torch.where(live, scores, -torch.inf)
            scores, order = scores.sort(dim=1, descending=True)
            boxes = boxes.gather(1, order[..., None].expand(-1, -1, 5))
            classes = classes.gather(1, order)
        return packed(boxes, scores, classes, scores > -torch.inf, options, finite, BROKEN)

    def describe(self) -> dict[str, object]:
        return {"layout": self.layout, "rows": self.rows}


def covariances(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 5) cx, cy, w, h, angle -> each box's Gaussian covariance (a, b, c): [[a, c], [c, b]], the
    variances of a uniform box (w^2 / 12, h^2 / 12) turned by its angle."""
    along, across = boxes[..., 2].square() / 12, boxes[..., 3].square() / 12
    cos, sin = boxes[..., 4].cos(), boxes[..., 4].sin()
    return (
        along * cos.square() + across * sin.square(),
        along * sin.square() + across * cos.square(),
        (along - across) * cos * sin,
    )


def probiou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(n, p, 5) and (n, q, 5) rotated boxes -> (n, p, q) probabilistic IoU: 1 - the Hellinger distance of the
    boxes' Gaussians (from their Bhattacharyya distance), 1 for the same box, towards 0 far apart."""
    a1, b1, c1 = (part[:, :, None] for part in covariances(first))
    a2, b2, c2 = (part[:, None, :] for part in covariances(second))
    dx = first[:, :, None, 0] - second[:, None, :, 0]
    dy = first[:, :, None, 1] - second[:, None, :, 1]
    a, b, c = a1 + a2, b1 + b2, c1 + c2
    determinant = a * b - c.square()
    mahalanobis = (a * dy.square() + b * dx.square() - 2 * c * dx * dy) / (4 * determinant + EPS)
    own = (a1 * b1 - c1.square()).clamp(min=0) * (a2 * b2 - c2.square()).clamp(min=0)
    spread = 0.5 * torch.log(determinant / (4 * own.sqrt() + EPS) + EPS)
    bhattacharyya = (mahalanobis + spread).clamp(EPS, 100.0)
    return 1 - (1 - torch.exp(-bhattacharyya) + EPS).sqrt()


def suppressed(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, options: Sequence[DetectOptions]
) -> torch.Tensor:
    """Greedy class-aware rotated NMS over a batch: (n, K, 5) boxes sorted most confident first (-inf score:
    not a candidate) -> (n, K) kept. A box is kept when no kept, more confident box of its class overlaps it
    past its image's IoU threshold: iterated from "all kept" over the batch's overlap matrix (one batched
    product a step) until nothing changes, as many steps as the longest chain of overlaps."""
    n, count = scores.shape
    live = scores > -torch.inf
    if count == 0:
        return live
    threshold = torch.tensor([o.iou_threshold for o in options], dtype=torch.float32)
    earlier = torch.ones(count, count, dtype=torch.bool).triu(diagonal=1)  # [j, i]: j before i
    overlaps = (probiou(boxes, boxes) > threshold[:, None, None]) & earlier
    overlaps &= (classes[:, :, None] == classes[:, None, :]) & live[:, :, None]
    suppresses = overlaps.float()
    kept = live
    for _ in range(count):
        now = live & ~(torch.bmm(kept.float()[:, None, :], suppresses)[:, 0, :] > 0)
        if torch.equal(now, kept):
            break
        kept = now
    return kept


class ObbGate(DetectGate):
    """detect's gate (--min-box-match, --box-iou, --max-extra-boxes) on rotated boxes: fp32's matched by a
    candidate's of the same class with ProbIoU >= --box-iou."""

    columns = 5  # cx, cy, w, h, angle

    @staticmethod
    def overlap(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return probiou(torch.from_numpy(first)[None], torch.from_numpy(second)[None])[0].numpy().astype(np.float64)

    def harm(self, head: Any, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], read: range) -> float:
        return Fidelity.harm(self, head, reference, candidate, read)


def to_original(rows: np.ndarray, geometry: Geometry | None) -> np.ndarray:
    """(K, 7) rows in input pixels -> (K, 5) cx, cy, w, h, angle in the original's (one scale along both axes:
    the angle stands)."""
    boxes = np.array(rows[:, :5], dtype=np.float32)
    if geometry is not None:
        boxes[:, 0] = (boxes[:, 0] - geometry.left) / geometry.scale_x
        boxes[:, 1] = (boxes[:, 1] - geometry.top) / geometry.scale_y
        boxes[:, 2] /= geometry.scale_x
        boxes[:, 3] /= geometry.scale_y
    return boxes


def corners(boxes: np.ndarray) -> np.ndarray:
    """(K, 5) cx, cy, w, h, angle -> (K, 4, 2) the corners, turning with the angle from (-w/2, -h/2)."""
    cos, sin = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    half_w, half_h = boxes[:, 2:3] / 2, boxes[:, 3:4] / 2
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32)
    dx, dy = signs[None, :, 0] * half_w, signs[None, :, 1] * half_h  # (K, 4)
    x = boxes[:, 0:1] + dx * cos[:, None] - dy * sin[:, None]
    y = boxes[:, 1:2] + dx * sin[:, None] + dy * cos[:, None]
    return np.stack((x, y), axis=2).astype(np.float32)


class Obb(Task):
    name = NAME
    summary = "What is where, in rotated boxes: centre, size and angle in the original image's pixels"
    resize = "letterbox"
    normalize = "unit"  # the models that give rotated boxes are Ultralytics' -obb, trained on pixels / 255
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = OUTPUTS
    view = "boxes"  # drawn turned by their angle

    @property
    def fidelity(self) -> Fidelity:
        return ObbGate()

    def fit_refused(self, resize: str) -> str:
        if resize == "stretch":
            return "task obb cannot use --resize stretch: it would skew the boxes' angles (use letterbox or crop)"
        return ""

    def bind(
        self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]
    ) -> tuple[DenseObbHead | EndToEndObbHead, int]:
        shape = outputs[first] if first < len(outputs) else None
        if shape is not None and len(shape) == 2 and shape[1] == 7 and shape[0] != 7:
            return EndToEndObbHead(first, shape[0]), 1
        if shape is not None and len(shape) == 2 and 6 <= shape[0] <= shape[1]:
            return DenseObbHead(first, shape[0] - 5, shape[1]), 1
        raise ModelLoadError(
            "task obb expects one output (N, 4 + classes + 1, candidates) of centre, size, class scores and "
            f"angle, or one (N, K, 7) of cx, cy, w, h, score, class, angle; output {first} is {shown(shape)}"
        )

    def options(self, parameters: Mapping[str, object]) -> DetectOptions:
        return detect_options(parameters)

    def openapi(self) -> tuple[list[Schema], Schema]:
        point: Schema = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
        detection: Schema = {
            "type": "object",
            "required": ["label", "class_id", "confidence", "box", "corners"],
            "properties": {
                "label": {"type": "string"},
                "class_id": {"type": "integer"},
                "confidence": {"type": "number"},
                "box": {
                    "type": "object",
                    "required": ["center", "size", "angle"],
                    "properties": {"center": point, "size": point, "angle": {"type": "number"}},
                },
                "corners": {"type": "array", "items": point, "minItems": 4, "maxItems": 4},
            },
        }
        answer: Schema = {
            "type": "object",
            "required": ["image", "detections"],
            "properties": {"image": IMAGE_SIZE, "detections": {"type": "array", "items": detection}},
        }
        return query_parameters(), answer

    def http_body(
        self, answer: Answer, options: DetectOptions, head: Any, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        rows, geometry = answer.value, answer.geometry
        boxes = to_original(rows, geometry)
        points = corners(boxes)
        detections = [
            {
                "label": label(labels, class_id),
                "class_id": class_id,
                "confidence": round(float(score), 6),
                "box": {
                    "center": [round(float(box[0]), 2), round(float(box[1]), 2)],
                    "size": [round(float(box[2]), 2), round(float(box[3]), 2)],
                    "angle": round(float(box[4]), 6),
                },
                "corners": np.round(corner, 2).tolist(),
            }
            for box, corner, score, class_id in zip(
                boxes, points, rows[:, 5], rows[:, 6].astype(np.int64).tolist(), strict=True
            )
        ]
        size = {"width": geometry.width, "height": geometry.height} if geometry is not None else None
        return json_answer({"status": "success", "model": model, "image": size, "detections": detections})

    def v2_metadata(self, head: Any) -> list[dict[str, Any]]:
        return [
            {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
            {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 5]},
            {"name": "corners", "datatype": "FP32", "shape": [-1, -1, 4, 2]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "classes", "datatype": "INT32", "shape": [-1, -1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ]

    def v2_outputs(
        self, answers: list[Answer], options: DetectOptions, head: Any, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        tensors = detection_tensors(answers, labels, 5, lambda answer: to_original(answer.value, answer.geometry))
        boxes = tensors["boxes"][2]
        assert isinstance(boxes, np.ndarray)
        count, most = boxes.shape[:2]
        tensors["corners"] = ("FP32", [count, most, 4, 2], corners(boxes.reshape(-1, 5)).reshape(count, most, 4, 2))
        return [Output(name, *tensors[name], binary) for name, binary in wanted.items()]
