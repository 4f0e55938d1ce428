"""A task of one's own: monocular depth. A depth network (MiDaS, Depth Anything, ZoeDepth exported to ONNX or
.pt2) gives one output, (N, 1, h, w); this task answers with the depth map at the original image's size
(letterbox padding removed) as a 16-bit PNG, and its range in the JSON.

    torchrest serve --model depth.onnx --task examples.tasks.depth:Depth --input-size 256
    curl localhost:8088/depth -F image=@room.jpg                      -> {"min", "max", "depth": base64 PNG}
    curl localhost:8088/depth -F image=@room.jpg -H 'Accept: image/png' -o depth.png   -> the PNG alone

    engine (once per batch, every image at once)   the batch's (n, 1, h, w) -> NaN check, `invert`, float32 maps
    front-end (once per request)                    the map -> the original's pixels -> 16-bit PNG, min and max

docs/tasks.md walks through it; torchrest needs nothing else to serve it (HTTP, the Open Inference
Protocol, gRPC, --workers N, the web page as JSON, and `torchrest optimize` with --depth-min-closeness).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from torchrest.errors import InvalidModelOutput, ModelLoadError
from torchrest.tasks import (
    IMAGE_SIZE,
    Answer,
    Decoded,
    Geometry,
    Output,
    OutputShape,
    Rows,
    Schema,
    Task,
    flag,
    json_answer,
)

PNG = "image/png"
Z_RLE = 3  # zlib's run-length strategy


@dataclass(frozen=True, slots=True)
class DepthHead:
    """The depth task bound to one model: which output it reads, and the input that output covers."""

    output: int
    input_size: tuple[int, int]  # (height, width) of the model's input
    task = "depth"

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[bool]) -> list[Decoded]:
        """The batch's maps, vectorised: one float32 copy (the output buffer is reused for the next batch),
        one finiteness check, and the images that asked for it inverted (relative inverse depth -> depth)."""
        maps = np.array(outputs[self.output][rows][:, 0], dtype=np.float32)  # (n, h, w)
        finite = np.asarray(np.isfinite(maps).all(axis=(1, 2)))
        invert = np.array(options, dtype=bool)
        if invert.any():
            chosen = maps[invert]
            maps[invert] = np.divide(1.0, chosen, out=np.zeros_like(chosen), where=chosen > 0)
        broken = InvalidModelOutput("the depth map holds NaN or infinite values")
        return [(maps[image], -1) if bool(finite[image]) else broken for image in range(len(maps))]

    def describe(self) -> dict[str, object]:
        return {"input": list(self.input_size)}


def original_depth(answer: Answer, head: DepthHead) -> np.ndarray:
    """The map over the original image's pixels, sampled bilinearly where each original pixel's centre fell
    in the model's input (two gathers per axis, vectorised), never from the letterbox padding."""
    small = answer.value
    height, width = head.input_size
    geometry = answer.geometry or Geometry.identity(width, height)
    rows = _samples(geometry.height, geometry.scale_y, geometry.top, small.shape[0] / height, small.shape[0])
    columns = _samples(geometry.width, geometry.scale_x, geometry.left, small.shape[1] / width, small.shape[1])
    (top, bottom, down), (left, right, across) = rows, columns
    upper, lower = small[top], small[bottom]  # (H, w) each
    vertical = upper + (lower - upper) * down[:, None]
    return vertical[:, left] + (vertical[:, right] - vertical[:, left]) * across[None, :]


def _samples(count: int, scale: float, offset: float, per_input: float, limit: int) -> tuple[np.ndarray, ...]:
    """Along one axis, for each original pixel: the two map pixels around where its centre fell and the
    weight of the second, kept to the map pixels the image covers (the padding's are never read)."""
    first = min(int(np.ceil(max(offset, 0.0) * per_input - 1e-6)), limit - 1)
    last = max(int(np.floor((offset + count * scale) * per_input + 1e-6)) - 1, first)
    centres = (np.arange(count, dtype=np.float64) + 0.5) * scale + offset
    position = np.clip(centres * per_input - 0.5, first, min(last, limit - 1))
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, min(last, limit - 1))
    return low, high, (position - low).astype(np.float32)


def png16(depth: np.ndarray) -> tuple[bytes, float, float]:
    """The map as a 16-bit greyscale PNG spanning its own range (0: its min, 65535: its max), and that range."""
    low, high = float(depth.min()), float(depth.max())
    scale = 65535.0 / (high - low) if high > low else 0.0
    levels = ((depth - low) * scale + 0.5).astype(np.uint16)
    buffer = io.BytesIO()
    # zlib's fastest level with its run-length strategy: a third less time than its default one, as small
    Image.fromarray(levels).save(buffer, format="PNG", compress_level=1, compress_type=Z_RLE)
    return buffer.getvalue(), low, high


class Depth(Task):
    name = "depth"
    summary = "Depth: the map at the original image's size as a 16-bit PNG (0 its least, 65535 its greatest value)"
    resize = "letterbox"
    normalize = "imagenet"
    outputs = ("depth", "range")
    default_outputs = ("depth", "range")
    answers_png = True

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[DepthHead, int]:
        shape = outputs[first] if first < len(outputs) else None
        if shape is None or len(shape) != 3 or shape[0] != 1 or min(shape[1:]) < 1:
            found = "missing" if shape is None else "(N, " + ", ".join(str(side) for side in shape) + ")"
            raise ModelLoadError(f"task depth expects an output (N, 1, height, width); output {first} is {found}")
        return DepthHead(first, input_size), 1

    def options(self, parameters: Mapping[str, object]) -> bool:
        """invert: the model gives relative inverse depth (MiDaS, Depth Anything): answer 1 / it."""
        return flag(parameters, "invert")

    def encodes_off_loop(self, answer: Answer) -> bool:
        geometry = answer.geometry
        return geometry is not None and geometry.width * geometry.height > 1 << 18

    def http_body(
        self, answer: Answer, options: bool, head: DepthHead, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        depth = original_depth(answer, head)
        encoded, low, high = png16(depth)
        if PNG in accept and "application/json" not in accept:
            return encoded, PNG
        size = {"width": int(depth.shape[1]), "height": int(depth.shape[0])}
        depth_png = base64.b64encode(encoded).decode("ascii")
        payload = {"status": "success", "model": model, "image": size, "min": low, "max": high, "depth": depth_png}
        return json_answer(payload)

    def v2_metadata(self, head: DepthHead) -> list[dict[str, Any]]:
        return [
            {"name": "depth", "datatype": "FP32", "shape": [-1, -1, -1]},
            {"name": "range", "datatype": "FP32", "shape": [-1, 2]},
        ]

    def v2_outputs(
        self, answers: list[Answer], options: bool, head: DepthHead, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        """depth FP32 [n, H, W]: each image's map in its own pixels from the top left (the rest of a smaller
        image 0); range FP32 [n, 2]: each map's min and max."""
        maps = [original_depth(answer, head) for answer in answers]
        height, width = max((m.shape[0] for m in maps), default=0), max((m.shape[1] for m in maps), default=0)
        stacked = np.zeros((len(maps), height, width), np.float32)
        for image, depth in enumerate(maps):
            stacked[image, : depth.shape[0], : depth.shape[1]] = depth
        ranges = np.array([[m.min(), m.max()] for m in maps], np.float32).reshape(len(maps), 2)
        tensors = {"depth": stacked, "range": ranges}
        return [Output(name, "FP32", list(tensors[name].shape), tensors[name], wire) for name, wire in wanted.items()]

    def openapi(self) -> tuple[list[Schema], Schema]:
        invert = {"name": "invert", "in": "query", "schema": {"type": "boolean", "default": False}}
        answer: Schema = {
            "type": "object",
            "required": ["image", "min", "max", "depth"],
            "properties": {
                "image": IMAGE_SIZE,
                "min": {"type": "number"},
                "max": {"type": "number"},
                "depth": {"type": "string", "format": "byte", "description": "base64 16-bit greyscale PNG"},
            },
        }
        return [invert], answer
