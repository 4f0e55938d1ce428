"""Fitting an image to the model's input: (H, W, 3) uint8 pixels -> the input's (h, w, 3), written into a row
of the batch, and the Geometry that maps answers back to the original image's pixels.

    crop       resize the shorter side to R, centre-crop the input (torchvision's Resize(R) + CenterCrop):
               ImageNet classifiers, the classify and embed default
    letterbox  resize to fit inside the input, aspect kept, centred, padded with a grey (114, as Ultralytics
               pads): detectors and segmenters, the detect and segment default
    stretch    resize to the input's size, aspect not kept

The resize is torch's antialiased bilinear uint8 kernel: separable, vectorised with AVX2, single-threaded,
releasing the GIL, several times faster than Pillow's `resize`, and within one grey level of it; sizes and
the crop's corner round as torchvision rounds them. The crop resizes the whole image, not just the crop box,
whose edges would fall on whole source pixels, not where the reference's do (docs/architecture.md, "Decode
ahead", says what that cost).
"""

from __future__ import annotations

import numpy as np
import torch

from torchrest.model_input import CROP, LETTERBOX, InputSpec
from torchrest.tasks.base import Geometry


def fit_into(pixels: np.ndarray, spec: InputSpec, out: np.ndarray, original: tuple[int, int]) -> Geometry:
    """Fit `pixels` ((H, W, 3) uint8, upright, rows may be strided; perhaps already shrunk in the DCT) into
    `out` (the input's (h, w, 3), its only write) as `spec.resize` says. `original` is the image's (width,
    height) before any shrinking: the Geometry maps the input back onto it."""
    height, width = pixels.shape[:2]
    target = resized_size(spec, original[0], original[1], height, width)
    resized = _resized(pixels, target)
    input_height, input_width = spec.size
    if spec.resize == CROP:
        top, left = crop_origin(target[0], target[1], input_height, input_width)
        offset = (-top, -left)
    elif spec.resize == LETTERBOX:
        offset = ((input_height - target[0]) // 2, (input_width - target[1]) // 2)
    else:
        offset = (0, 0)
    _place(resized, out, offset, spec.fill)
    return Geometry(
        original[0], original[1], target[1] / original[0], target[0] / original[1], float(offset[1]), float(offset[0])
    )


def resized_size(
    spec: InputSpec, width: int, height: int, pixels_height: int = 0, pixels_width: int = 0
) -> tuple[int, int]:
    """(height, width) an image of `width` x `height` is resized to before the crop or the padding. The crop
    follows torchvision's Resize(int) on the pixels it is given (`pixels_height` x `pixels_width`, where the
    DCT shrank them; else the original): the shorter side becomes R, the longer keeps the aspect ratio,
    truncated as torchvision does."""
    input_height, input_width = spec.size
    if spec.resize == CROP:
        return shorter_side_to(pixels_height or height, pixels_width or width, spec.resize_size)
    if spec.resize == LETTERBOX:
        ratio = min(input_height / height, input_width / width)
        return max(1, min(input_height, round(height * ratio))), max(1, min(input_width, round(width * ratio)))
    return input_height, input_width


def shorter_side_to(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes `shorter`, the longer keeps the aspect ratio
    (truncated, as torchvision does)."""
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


def crop_origin(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int]:
    """torchvision's CenterCrop: the top-left corner of the centred crop."""
    return int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))


def _resized(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == pixels.shape[:2]:
        return pixels
    resized = np.empty((*size, 3), np.uint8)
    # (H, W, 3) is NCHW in channels-last layout to torch: no copy in, the uint8 AVX2 kernel, and its output
    # written channels-last into `resized` (interpolate() would return NCHW pixels, whose crop then copies
    # across strides: several times the resize's own time)
    _RESIZE(
        torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0),
        list(size),
        False,
        None,
        None,
        out=torch.from_numpy(resized).permute(2, 0, 1).unsqueeze(0),
    )  # type: ignore[call-arg]  # (torch's stub lacks the out= form it has)
    return resized


def _place(resized: np.ndarray, out: np.ndarray, offset: tuple[int, int], fill: int) -> None:
    """Copy `resized` into `out` with its top-left corner at `offset` (negative: cropped), `fill` around it."""
    top, left = offset
    height, width = resized.shape[:2]
    out_height, out_width = out.shape[:2]
    if top <= 0 and left <= 0 and height + top >= out_height and width + left >= out_width:  # the crop: covered
        out[...] = resized[-top : -top + out_height, -left : -left + out_width]
        return
    out[...] = fill
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(out_height, top + height), min(out_width, left + width)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]


# the antialiased bilinear kernel behind interpolate(mode="bilinear", antialias=True), in its out= form
_RESIZE = torch._C._nn._upsample_bilinear2d_aa
