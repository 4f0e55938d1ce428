"""detect: what is where. Two layouts of a detector's outputs are served, told apart by their shapes:

    dense     one output (N, 4 + C, A): for each of A candidates its centre x, centre y, width, height (input
              pixels), then C class scores (the layout Ultralytics exports); the server does class-aware NMS
    post-NMS  boxes (N, K, 4) x1, y1, x2, y2 (input pixels), scores (N, K), class ids (N, K), and optionally
              a count (N,); rows past the count or with a score <= 0 are padding
    end-to-end one output (N, K, 6): rows of x1, y1, x2, y2 (input pixels), score, class id, as YOLO26 and
              RT-DETR-style exports give them (NMS done, or none needed); thresholded and capped, no NMS

Per request: score_threshold (0.25), iou_threshold (0.45), max_detections (100, at most 1000). NMS runs once
per batch on the inference thread, vectorised over the batch's images with torch (each image its own
thresholds): the candidates above the threshold (the MAX_CANDIDATES most confident of each image), then
greedy suppression settled a block of candidates at a time (`suppressed_boxes`), not a loop per box.
The answer: (K, 6) rows of x1, y1, x2, y2, score, class, most confident first, in input pixels; the
front-end maps the boxes to the original image.

    HTTP   POST /detect -> {"status", "model", "image": {"width", "height"}, "detections": [{"label",
           "class_id", "confidence", "box": [x1, y1, x2, y2]}, ...]}
    v2     num_detections INT32 [n], boxes FP32 [n, K, 4], scores FP32 [n, K], classes INT32 [n, K],
           labels BYTES [n, K] (K the most any image of the request has; the rest padded with zeros and "")
    optimize   fp32's boxes (default thresholds) matched by a box of the same class with IoU >= --box-iou for
           >= --min-box-match of them, and no more than --max-extra-boxes unmatched boxes (per fp32 box)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from torchrest.errors import InvalidModelOutput, ModelLoadError, TorchrestError
from torchrest.tasks.base import (
    IMAGE_SIZE,
    Answer,
    Decoded,
    Output,
    OutputShape,
    Rows,
    Schema,
    Task,
    json_answer,
    label,
    number,
    shown,
)
from torchrest.tasks.fidelity import Bound, BoundValues, Fidelity, Verdict, relative_l2

NAME = "detect"
OUTPUTS = ("num_detections", "boxes", "scores", "classes", "labels")
MAX_DETECTIONS = 1000
MAX_CANDIDATES = 1024  # of each image, the most confident that enter NMS (its IoU matrix is K x K)


class DetectOptions(NamedTuple):
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100


def detect_options(parameters: Mapping[str, object]) -> DetectOptions:
    return DetectOptions(
        number(parameters, "score_threshold", 0.25, 0.0, 1.0),
        number(parameters, "iou_threshold", 0.45, 0.0, 1.0),
        int(number(parameters, "max_detections", 100, 1, MAX_DETECTIONS, integer=True)),
    )


@dataclass(frozen=True, slots=True)
class DenseDetectHead:
    """(N, 4 + C, A) -> class-aware NMS."""

    output: int  # which of the model's outputs it reads
    classes: int
    candidates: int
    task = NAME
    layout = "dense"

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[DetectOptions]) -> list[Decoded]:
        predictions = torch.from_numpy(np.asarray(outputs[self.output][rows], dtype=np.float32))
        with torch.inference_mode():
            scores, order, chosen, finite = most_confident(predictions[:, 4:, :], options)
            centres = predictions[:, :4, :].gather(2, order[:, None, :].expand(-1, 4, -1)).transpose(1, 2)
            boxes = torch.cat((centres[..., :2] - centres[..., 2:] / 2, centres[..., :2] + centres[..., 2:] / 2), 2)
            finite &= (torch.isfinite(boxes).all(dim=2) | (scores == -torch.inf)).all(dim=1)  # its candidates
            kept = suppressed_boxes(boxes, scores, chosen, options)
        return packed(boxes, scores, chosen, kept, options, finite.tolist())

    def describe(self) -> dict[str, object]:
        return {"layout": self.layout, "classes": self.classes, "candidates": self.candidates}


@dataclass(frozen=True, slots=True)
class PostNmsDetectHead:
    """boxes (N, K, 4), scores (N, K), classes (N, K)[, count (N,)] -> thresholded, most confident first."""

    first: int  # the first of the model's outputs it reads (boxes; then scores, classes, the count)
    counted: bool
    task = NAME
    layout = "post-nms"
    classes = -1  # class ids are values: the labels say how many

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[DetectOptions]) -> list[Decoded]:
        first = self.first
        boxes = torch.from_numpy(np.asarray(outputs[first][rows], dtype=np.float32))
        scores = torch.from_numpy(np.asarray(outputs[first + 1][rows], dtype=np.float32))
        classes = torch.from_numpy(np.asarray(outputs[first + 2][rows])).to(torch.int64)
        count = None
        if self.counted:
            count = torch.from_numpy(np.asarray(outputs[first + 3][rows])).to(torch.int64).reshape(-1)
        return ranked(boxes, scores, classes, count, options)

    def describe(self) -> dict[str, object]:
        return {"layout": self.layout, "counted": self.counted}


@dataclass(frozen=True, slots=True)
class EndToEndDetectHead:
    """(N, K, 6) rows of x1, y1, x2, y2, score, class -> thresholded, most confident first (no NMS)."""

    first: int  # which of the model's outputs it reads
    rows: int  # K, the rows each image has (-1: any)
    task = NAME
    layout = "end-to-end"
    classes = -1  # class ids are values: the labels say how many

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[DetectOptions]) -> list[Decoded]:
        found = torch.from_numpy(np.asarray(outputs[self.first][rows], dtype=np.float32))
        classes = found[..., 5].nan_to_num(-1.0).to(torch.int64)
        return ranked(found[..., :4], found[..., 4], classes, None, options)

    def describe(self) -> dict[str, object]:
        return {"layout": self.layout, "rows": self.rows}


def ranked(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    count: torch.Tensor | None,
    options: Sequence[DetectOptions],
) -> list[Decoded]:
    """Boxes a model already chose ((n, K, 4), (n, K) scores and class ids; `count`: each image's rows that
    are answers) -> each image's above its threshold, most confident first, capped. A row with a score <= 0
    is padding; an image whose answers (not its padding) hold NaN or infinity fails alone."""
    with torch.inference_mode():
        threshold = torch.tensor([o.score_threshold for o in options], dtype=torch.float32)
        live = (scores > 0) & (scores > threshold[:, None])
        if count is not None:
            live &= torch.arange(scores.shape[1])[None, :] < count[:, None]
        finite = (torch.isfinite(boxes).all(dim=2) | ~live).all(dim=1).tolist()  # its answers', not padding
        scores = torch.where(live, scores.masked_fill(scores.isnan(), -torch.inf), -torch.inf)
        scores, order = scores.sort(dim=1, descending=True)
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        classes = classes.gather(1, order)
        kept = scores > -torch.inf
    return packed(boxes, scores, classes, kept, options, finite)


def most_confident(
    class_scores: torch.Tensor, options: Sequence[DetectOptions]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dense layout's (n, C, A) class scores -> the candidates above each image's threshold, the
    MAX_CANDIDATES most confident of each, most confident first (n, K) (-inf: none; trimmed past the last one
    any image has), their indices, their best classes, and whether each image's scores are all finite (a NaN
    class score wins its candidate's max: broken)."""
    threshold = torch.tensor([o.score_threshold for o in options], dtype=torch.float32)
    confidence, classes = class_scores.max(dim=1)  # (n, A): each candidate's best class
    finite = torch.isfinite(confidence).all(dim=1)
    confidence = torch.where(confidence > threshold[:, None], confidence, -torch.inf)
    confidence = confidence.masked_fill(confidence.isnan(), -torch.inf)
    scores, order = confidence.topk(min(MAX_CANDIDATES, confidence.shape[1]), dim=1)
    live = int((scores > -torch.inf).sum(dim=1).max()) if len(scores) else 0
    scores, order = scores[:, :live], order[:, :live]
    return scores, order, classes.gather(1, order), finite


def suppressed_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, options: Sequence[DetectOptions]
) -> torch.Tensor:
    """Greedy class-aware NMS over a batch: (n, K, 4) x1y1x2y2 boxes with (n, K) scores sorted most confident
    first (-inf: not a candidate) -> (n, K) bool, the boxes kept.

    The rule: a box is kept when no kept, more confident box of its class overlaps it by more than its
    image's IoU threshold. The candidates are settled a block at a time, every image at once: the first
    BLOCK still undecided ones, in score order, are settled among themselves (the rule only looks back, so
    iterating it from "all kept" fixes one more box of every chain per step: as many steps as the longest
    chain, each one batched product), then the block's kept boxes strike out every later candidate they
    overlap. A detector keeps few boxes of many candidates, so a few blocks settle them all, and the pairs
    compared are about (kept x candidates), not (candidates x candidates)."""
    n, count = scores.shape
    alive = scores > -torch.inf  # not decided yet
    kept = torch.zeros(n, count, dtype=torch.bool)
    threshold = torch.tensor([o.iou_threshold for o in options], dtype=torch.float32)
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    images = torch.arange(n)[:, None]
    earlier = torch.ones(BLOCK, BLOCK, dtype=torch.bool).triu(diagonal=1)  # [j, i]: j before i
    while bool(alive.any()):
        block = torch.argsort((~alive).to(torch.int8), dim=1, stable=True)[:, :BLOCK]  # the first undecided
        live = alive.gather(1, block)
        size = block.shape[1]
        block_boxes, block_area, block_classes = boxes[images, block], area[images, block], classes[images, block]
        among = _overlapping(block_boxes, block_boxes, block_area, block_area, threshold)
        among &= (block_classes[:, :, None] == block_classes[:, None, :]) & earlier[:size, :size] & live[:, :, None]
        suppresses = among.float()
        settled = live
        for _ in range(size):
            now = live & ~(torch.bmm(settled.float()[:, None, :], suppresses)[:, 0, :] > 0)
            if torch.equal(now, settled):
                break
            settled = now
        kept[images, block] |= settled
        alive[images, block] = False
        later = _overlapping(block_boxes, boxes, block_area, area, threshold)
        later &= (block_classes[:, :, None] == classes[:, None, :]) & settled[:, :, None]
        alive &= ~later.any(dim=1)
    return kept


BLOCK = 64  # candidates settled together: small enough that most of a block's pairs matter


def _overlapping(
    a: torch.Tensor, b: torch.Tensor, area_a: torch.Tensor, area_b: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    """(n, p, 4) and (n, q, 4) x1y1x2y2 boxes -> (n, p, q) whether each pair's IoU is over the image's
    threshold (intersection > t x union, without dividing)."""
    width = torch.minimum(a[:, :, None, 2], b[:, None, :, 2]) - torch.maximum(a[:, :, None, 0], b[:, None, :, 0])
    height = torch.minimum(a[:, :, None, 3], b[:, None, :, 3]) - torch.maximum(a[:, :, None, 1], b[:, None, :, 1])
    intersection = width.clamp(min=0) * height.clamp(min=0)
    t = threshold[:, None, None]
    return intersection * (1 + t) > t * (area_a[:, :, None] + area_b[:, None, :])


def packed(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    kept: torch.Tensor,
    options: Sequence[DetectOptions],
    finite: list[bool],
    broken: str = "the model's detections for this image hold NaN or infinite values",
) -> list[Decoded]:
    """Each image's kept boxes (in score order), at most its max_detections, as (k, box columns + 2) float32
    rows: the box, the score, the class (an image whose answers are not finite gets `broken`)."""
    rows = torch.cat((boxes, scores[..., None], classes[..., None].to(torch.float32)), dim=2).numpy()
    kept_rows = kept.numpy()
    decoded: list[Decoded] = []
    for image, choice in enumerate(options):
        if not finite[image]:
            decoded.append(InvalidModelOutput(broken))
            continue
        decoded.append((np.ascontiguousarray(rows[image][kept_rows[image]][: choice.max_detections]), -1))
    return decoded


class Detect(Task):
    name = NAME
    summary = "What is where: boxes in the original image's pixels, most confident first"
    resize = "letterbox"
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = OUTPUTS
    view = "boxes"

    @property
    def fidelity(self) -> Fidelity:
        return DetectGate()

    def openapi(self) -> tuple[list[Schema], Schema]:
        detection: Schema = {
            "type": "object",
            "required": ["label", "class_id", "confidence", "box"],
            "properties": {
                "label": {"type": "string"},
                "class_id": {"type": "integer"},
                "confidence": {"type": "number"},
                "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
            },
        }
        answer: Schema = {
            "type": "object",
            "required": ["image", "detections"],
            "properties": {"image": IMAGE_SIZE, "detections": {"type": "array", "items": detection}},
        }
        return query_parameters(), answer

    def bind(
        self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]
    ) -> tuple[DenseDetectHead | PostNmsDetectHead | EndToEndDetectHead, int]:
        shapes = list(outputs[first:])
        if len(shapes) >= 3 and _post_nms(shapes):
            counted = len(shapes) >= 4 and len(shapes[3]) == 0
            return PostNmsDetectHead(first, counted), 4 if counted else 3
        if shapes and len(shapes[0]) == 2 and shapes[0][1] == 6 and shapes[0][0] != 6:  # (6, A) would be dense
            return EndToEndDetectHead(first, shapes[0][0]), 1
        if shapes and len(shapes[0]) == 2 and 5 <= shapes[0][0] <= shapes[0][1]:
            return DenseDetectHead(first, shapes[0][0] - 4, shapes[0][1]), 1
        found = ", ".join(shown(shape) for shape in shapes) or "nothing"
        hint = ""
        if shapes and len(shapes[0]) == 2 and shapes[0][0] > shapes[0][1] >= 5:
            hint = " (candidates first? export (N, 4 + classes, candidates), as Ultralytics does, or transpose it)"
        raise ModelLoadError(
            "task detect expects one output (N, 4 + classes, candidates), or one (N, K, 6) of x1, y1, x2, y2, "
            "score, class, or boxes (N, K, 4), scores (N, K), class ids (N, K) and optionally a count (N,); "
            f"found {found}{hint}"
        )

    def options(self, parameters: Mapping[str, object]) -> DetectOptions:
        return detect_options(parameters)

    def http_body(
        self, answer: Answer, options: DetectOptions, head: object, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        geometry = answer.geometry
        rows = answer.value
        boxes = geometry.boxes_to_original(rows[:, :4]) if geometry is not None else rows[:, :4]
        detections = [
            {
                "label": label(labels, class_id),
                "class_id": class_id,
                "confidence": round(float(score), 6),
                "box": [round(float(v), 2) for v in box],
            }
            for box, score, class_id in zip(boxes, rows[:, 4], rows[:, 5].astype(np.int64).tolist(), strict=True)
        ]
        size = {"width": geometry.width, "height": geometry.height} if geometry is not None else None
        return json_answer({"status": "success", "model": model, "image": size, "detections": detections})

    def v2_metadata(self, head: object) -> list[dict[str, Any]]:
        return [
            {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
            {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "classes", "datatype": "INT32", "shape": [-1, -1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ]

    def v2_outputs(
        self, answers: list[Answer], options: DetectOptions, head: object, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        tensors = detection_tensors(answers, labels, 4, _original_boxes)
        return [Output(name, *tensors[name], binary) for name, binary in wanted.items()]


Tensor = tuple[str, list[int], np.ndarray | list[bytes]]  # an output's datatype, shape and data


def detection_tensors(
    answers: list[Answer], labels: list[str], columns: int, original: Callable[[Answer], np.ndarray]
) -> dict[str, Tensor]:
    """A request's images' detections ((k, columns + 2) rows: box, score, class) as the protocol's padded
    tensors, K the most any image has (the rest zeros and ""): num_detections, boxes (each answer's boxes as
    `original` maps them back), scores, classes, labels."""
    n = len(answers)
    most = max((len(a.value) for a in answers), default=0)
    counts = np.zeros(n, np.int32)
    boxes = np.zeros((n, most, columns), np.float32)
    scores = np.zeros((n, most), np.float32)
    classes = np.zeros((n, most), np.int32)
    names: list[bytes] = [b""] * (n * most)
    for image, answer in enumerate(answers):
        rows = answer.value
        k = len(rows)
        counts[image] = k
        boxes[image, :k] = original(answer)
        scores[image, :k] = rows[:, columns]
        classes[image, :k] = rows[:, columns + 1].astype(np.int32)
        names[image * most : image * most + k] = [label(labels, int(c)).encode() for c in rows[:, columns + 1]]
    return {
        "num_detections": ("INT32", [n], counts),
        "boxes": ("FP32", [n, most, columns], boxes),
        "scores": ("FP32", [n, most], scores),
        "classes": ("INT32", [n, most], classes),
        "labels": ("BYTES", [n, most], names),
    }


def _original_boxes(answer: Answer) -> np.ndarray:
    geometry, rows = answer.geometry, answer.value
    return geometry.boxes_to_original(rows[:, :4]) if geometry is not None else rows[:, :4]


def _post_nms(shapes: list[OutputShape]) -> bool:
    """boxes (K, 4), scores (K,) and class ids (K,), the same K (or any, -1) for each image."""
    boxes, scores, classes = shapes[:3]
    if not (len(boxes) == 2 and boxes[1] == 4 and len(scores) == 1 and len(classes) == 1):
        return False
    sides = {boxes[0], scores[0], classes[0]} - {-1}
    return len(sides) <= 1


def query_parameters() -> list[Schema]:
    """The options as OpenAPI query parameters (detect's, and every task that takes DetectOptions)."""
    return [
        _query("score_threshold", 0, 1, 0.25),
        _query("iou_threshold", 0, 1, 0.45),
        _query("max_detections", 1, MAX_DETECTIONS, 100, integer=True),
    ]


def _query(name: str, low: float, high: float, default: float, integer: bool = False) -> Schema:
    kind = "integer" if integer else "number"
    return {"name": name, "in": "query", "schema": {"type": kind, "minimum": low, "maximum": high, "default": default}}


MIN_BOX_MATCH = Bound(
    "min_box_match",
    "99%",
    "detect, obb: the share of fp32's boxes a candidate must match (same class, IoU at least --box-iou)",
)
BOX_IOU = Bound(
    "box_iou", "0.9", "detect, obb: the IoU at which a candidate's box matches fp32's", share=False, low=1e-9
)
MAX_EXTRA_BOXES = Bound("max_extra_boxes", "1%", "detect, obb: unmatched candidate boxes allowed, per fp32 box")


class DetectGate(Fidelity):
    """Each image's boxes at the default thresholds, matched to fp32's."""

    measure = "box match"
    bounds = (MIN_BOX_MATCH, BOX_IOU, MAX_EXTRA_BOXES)
    columns = 4  # an answer's box columns (x1, y1, x2, y2), then its score and class
    overlap: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # default: axis-aligned IoU

    def answers(self, task: str, head: Any, outputs: Sequence[np.ndarray], read: range) -> list[np.ndarray | None]:
        count = len(outputs[0])
        decoded = head.decode(outputs, slice(0, count), [DetectOptions()] * count)
        return [None if isinstance(item, TorchrestError) else item[0] for item in decoded]

    def valid(self, reference: Any) -> np.ndarray:
        return np.array([answer is not None for answer in reference], bool)

    def judge(self, task: str, reference: Any, candidate: Any, bounds: BoundValues, labels: Any) -> Verdict:
        least, iou, most = bounds[MIN_BOX_MATCH.name], bounds[BOX_IOU.name], bounds[MAX_EXTRA_BOXES.name]
        assert least is not None and iou is not None and most is not None
        matched, extra, boxes = box_agreement(reference, candidate, iou, self.columns, self.overlap)
        reasons = []
        if matched < least - 1e-9:
            reasons.append(f"boxes matched (IoU >= {iou:g}) {matched:.1%} < {least:.1%}")
        if extra > most + 1e-9:
            reasons.append(f"extra boxes {extra:.1%} > {most:.1%}")
        details = {"extra_boxes": extra, "max_extra_boxes": most, "reference_boxes": boxes, "iou": iou}
        figures = {"boxes matched; extra": f"{matched:.1%}; {extra:.1%}"}
        gate = f"fp32's boxes matched (same class, IoU at least {iou:g}) for {least:.1%} of them"
        gate += f", and at most {most:.1%} extra"
        return Verdict(task, self.measure, matched, least, not reasons, "; ".join(reasons), details, figures, gate)

    def harm(self, head: Any, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], read: range) -> float:
        if getattr(head, "layout", "") == "dense":  # boxes in pixels and class scores, each its own scale
            ref, cand = reference[head.output], candidate[head.output]
            return relative_l2([ref[:, :4]], [cand[:, :4]]) + relative_l2([ref[:, 4:]], [cand[:, 4:]])
        # the rows (end-to-end), or the boxes, scores and classes (post-NMS)
        read = range(head.first, head.first + (1 if head.layout == "end-to-end" else 3))
        return relative_l2([reference[i] for i in read], [candidate[i] for i in read])

    def notes(self, reference: Any) -> list[str]:
        found = sum(len(answer) for answer in reference if answer is not None)
        kind = self.columns + 1
        classes = len({int(c) for answer in reference if answer is not None for c in answer[:, kind]})
        if found < 10 * max(1, classes) or classes < 2:
            return [
                f"fp32 found {found} boxes of {classes} classes over the held-out set: the box gate checks little; "
                "pass --calibration photos of what the model detects"
            ]
        return []


def box_agreement(
    reference: list[np.ndarray | None],
    candidate: list[np.ndarray | None],
    iou: float,
    columns: int = 4,
    overlap: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float, int]:
    """Each image's (K, columns + 2) boxes (the box, score, class: x1, y1, x2, y2 by default, or any box
    `overlap` compares pairwise) -> (share of the reference's boxes matched by a candidate box of the same
    class with IoU >= `iou`, unmatched candidate boxes per reference box, the reference's boxes). Greedy
    matching, the reference's most confident box first, each box used once."""
    compared = overlap or pairwise_iou
    score, kind = columns, columns + 1
    matched = extra = total = 0
    empty = np.zeros((0, 6), np.float32)
    for ref, cand in zip(reference, candidate, strict=True):
        if ref is None:  # fp32 gave no answer for this image: nothing to match
            continue
        cand = empty if cand is None else cand
        total += len(ref)
        if len(ref) == 0 or len(cand) == 0:
            extra += len(cand)
            continue
        overlaps = compared(ref[:, :columns], cand[:, :columns])
        overlaps[ref[:, kind][:, None] != cand[:, kind][None, :]] = 0.0
        free = np.ones(len(cand), bool)
        for row in np.argsort(-ref[:, score], kind="stable"):
            scores = np.where(free, overlaps[row], -1.0)
            best = int(np.argmax(scores))
            if scores[best] >= iou:
                free[best] = False
                matched += 1
        extra += int(free.sum())
    if total == 0:
        return (1.0 if extra == 0 else 0.0), float(extra), 0
    return matched / total, extra / total, total


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, 4) and (M, 4) x1, y1, x2, y2 -> (K, M) intersection over union."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
