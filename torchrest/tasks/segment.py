"""segment: which pixel is what. The model gives one output, (N, C, h, w) class logits or probabilities; the
engine takes each pixel's most likely class once per batch (uint8 up to 256 classes, else uint16) at the
model's own resolution, and the front-end maps that map back onto the original image: each original pixel
takes the class of the output pixel its centre falls on, letterbox padding left out (a nearest-neighbour
gather of one index per row and one per column, so a megapixel costs a few milliseconds).

    HTTP   POST /segment -> {"status", "model", "image": {"width", "height"}, "classes": [{"class_id",
           "label", "pixels"}, ...], "mask": base64 PNG (8-bit grey, 16-bit past 256 classes)};
           with Accept: image/png, the PNG itself
    v2     mask UINT8 [n, H, W] (INT32 past 255 classes), each image's mask in its own pixels from the top
           left, the rest (an image smaller than the request's largest) 255 (INT32: -1)
    optimize   pixels (of the model's class map) with fp32's class >= --min-pixel-agreement
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from torchrest.errors import InvalidModelOutput, ModelLoadError, TorchrestError
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
from torchrest.tasks.fidelity import Bound, BoundValues, Fidelity, Verdict

NAME = "segment"
OUTPUTS = ("mask",)
PNG = "image/png"
OFF_LOOP_PIXELS = 1 << 18  # a mask this large is mapped back and encoded on a thread, not the event loop


@dataclass(frozen=True, slots=True)
class SegmentHead:
    output: int  # which of the model's outputs it reads
    classes: int
    input_size: tuple[int, int]  # (height, width) of the model's input: what the output map covers
    task = NAME

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        return np.uint8 if self.classes <= 256 else np.uint16

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[Any]) -> list[Decoded]:
        scores = torch.from_numpy(np.asarray(outputs[self.output][rows]))
        with torch.inference_mode():
            best, classes = scores.max(dim=1)  # NaN and +inf win the max: a finite max is a finite image
            finite = torch.isfinite(best).flatten(1).all(dim=1).tolist()
            maps = classes.to(torch.int32).numpy().astype(self.dtype)
        return [
            (maps[image], -1)
            if finite[image]
            else InvalidModelOutput("the model's class scores for this image hold NaN or infinite values")
            for image in range(len(maps))
        ]

    def describe(self) -> dict[str, object]:
        return {"classes": self.classes}


def sources(answer: Answer, head: SegmentHead) -> tuple[np.ndarray, np.ndarray]:
    """For each row and each column of the original image, the row or column of the class map it takes."""
    small = answer.value
    geometry = answer.geometry or Geometry.identity(head.input_size[1], head.input_size[0])
    rows = geometry.source_rows(head.input_size[0], small.shape[0])
    return rows, geometry.source_columns(head.input_size[1], small.shape[1])


def original_mask(answer: Answer, head: SegmentHead) -> np.ndarray:
    """The class of each pixel of the original image (letterbox padding removed, resized back)."""
    rows, columns = sources(answer, head)
    return np.take(np.take(answer.value, rows, axis=0), columns, axis=1)  # two gathers: 5x a 2-D fancy index


def pixel_counts(answer: Answer, head: SegmentHead) -> np.ndarray:
    """How many original pixels each class covers, counted on the class map (each of its pixels weighs the
    original pixels it gives its class to): the same as counting the full mask, for a megapixel 1/100th."""
    rows, columns = sources(answer, head)
    small = answer.value
    weights = np.outer(np.bincount(rows, minlength=small.shape[0]), np.bincount(columns, minlength=small.shape[1]))
    counts = np.bincount(small.reshape(-1), weights=weights.reshape(-1), minlength=head.classes)
    return counts.astype(np.int64)


def png(mask: np.ndarray) -> bytes:
    """An 8-bit (or 16-bit) greyscale PNG whose grey levels are the class ids."""
    image = Image.fromarray(mask if mask.dtype == np.uint8 else mask.astype(np.uint16))
    buffer = io.BytesIO()
    # masks are runs of one value: zlib's fastest level with run-length matching (a third of the default
    # strategy's bytes, no slower)
    image.save(buffer, format="PNG", compress_level=1, compress_type=Z_RLE)
    return buffer.getvalue()


Z_RLE = 3  # zlib's run-length strategy


class Segment(Task):
    name = NAME
    summary = (
        "Which pixel is what: a class id per pixel of the original image, as a PNG "
        "(Accept: image/png for the PNG alone)"
    )
    resize = "letterbox"
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = OUTPUTS
    view = "mask"
    answers_png = True

    @property
    def fidelity(self) -> Fidelity:
        return SegmentGate()

    def openapi(self) -> tuple[list[Schema], Schema]:
        present: Schema = {
            "type": "object",
            "required": ["class_id", "label", "pixels"],
            "properties": {"class_id": {"type": "integer"}, "label": {"type": "string"}, "pixels": {"type": "integer"}},
        }
        mask: Schema = {
            "type": "string",
            "format": "byte",
            "description": "base64 PNG: 8-bit grey, 16-bit past 256 classes",
        }
        answer: Schema = {
            "type": "object",
            "required": ["image", "classes", "mask"],
            "properties": {"image": IMAGE_SIZE, "classes": {"type": "array", "items": present}, "mask": mask},
        }
        return [], answer

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[SegmentHead, int]:
        shape = outputs[first] if first < len(outputs) else None
        if shape is None or len(shape) != 3 or shape[0] < 2 or min(shape[1:]) < 1:
            raise ModelLoadError(
                "task segment expects an output of shape (N, classes >= 2, height, width); "
                f"output {first} is {shown(shape)}"
            )
        return SegmentHead(first, shape[0], input_size), 1

    def encodes_off_loop(self, answer: Answer) -> bool:
        geometry = answer.geometry
        return geometry is not None and geometry.width * geometry.height > OFF_LOOP_PIXELS

    def http_body(
        self, answer: Answer, options: None, head: SegmentHead, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        mask = original_mask(answer, head)
        encoded = png(mask)
        if PNG in accept and "application/json" not in accept:
            return encoded, PNG
        counts = pixel_counts(answer, head)
        present = np.flatnonzero(counts).tolist()
        return json_answer(
            {
                "status": "success",
                "model": model,
                "image": {"width": int(mask.shape[1]), "height": int(mask.shape[0])},
                "classes": [{"class_id": c, "label": label(labels, c), "pixels": int(counts[c])} for c in present],
                "mask": base64.b64encode(encoded).decode("ascii"),
            }
        )

    def v2_metadata(self, head: SegmentHead) -> list[dict[str, Any]]:
        return [{"name": "mask", "datatype": "UINT8" if head.classes <= 255 else "INT32", "shape": [-1, -1, -1]}]

    def v2_outputs(
        self, answers: list[Answer], options: None, head: SegmentHead, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        masks = [original_mask(answer, head) for answer in answers]
        height = max((m.shape[0] for m in masks), default=0)
        width = max((m.shape[1] for m in masks), default=0)
        narrow = head.classes <= 255
        stacked = np.full((len(masks), height, width), 255 if narrow else -1, np.uint8 if narrow else np.int32)
        for image, mask in enumerate(masks):
            stacked[image, : mask.shape[0], : mask.shape[1]] = mask
        datatype = "UINT8" if narrow else "INT32"
        return [Output("mask", datatype, list(stacked.shape), stacked, binary) for binary in wanted.values()]


MIN_PIXEL_AGREEMENT = Bound("min_pixel_agreement", "99%", "segment: the share of pixels whose class must stay fp32's")


class SegmentGate(Fidelity):
    """The class maps at the model's resolution; an image that failed gets a map of -1 (agrees with nothing)."""

    measure = "pixel agreement"
    bounds = (MIN_PIXEL_AGREEMENT,)

    def answers(self, task: str, head: Any, outputs: Sequence[np.ndarray], read: range) -> np.ndarray:
        count = len(outputs[0])
        maps = np.full((count, *outputs[head.output].shape[2:]), -1, np.int16)
        for row, item in enumerate(head.decode(outputs, slice(0, count), [None] * count)):
            if not isinstance(item, TorchrestError):
                maps[row] = item[0]
        return maps

    def valid(self, reference: Any) -> np.ndarray:
        return (reference >= 0).all(axis=tuple(range(1, reference.ndim)))

    def judge(self, task: str, reference: Any, candidate: Any, bounds: BoundValues, labels: Any) -> Verdict:
        least = bounds[MIN_PIXEL_AGREEMENT.name]
        assert least is not None
        agreement = float(np.mean(reference == candidate))
        reason = f"pixel agreement {agreement:.2%} < {least:.2%}" if agreement < least - 1e-9 else ""
        figures = {"pixel agreement": f"{agreement:.1%}"}
        gate = f"the class of {least:.1%} of pixels kept"
        return Verdict(task, self.measure, agreement, least, not reason, reason, {}, figures, gate)
