"""The JPEG fast path: libjpeg-turbo (through simplejpeg) decodes straight to RGB, scaled in the DCT.

    JPEG bytes (+ size and EXIF orientation from the header Pillow already read)
        -> power-of-two DCT-scaled decode, each side still >= twice the size it is resized to -> (H, W, 3) uint8
        -> EXIF orientation as a numpy view (no copy when there is nothing to rotate)

Most photos a classifier receives are baseline or progressive YCbCr JPEGs, and this path decodes them
in about 60% of Pillow's time (and the 1/2, 1/4, 1/8 scalings skip most of the inverse DCT for big
photos; the other M/8 scalings libjpeg-turbo offers have no SIMD kernels and cost more than a full
decode). Whatever it cannot take (CMYK, corrupt or truncated data, which simplejpeg refuses strictly)
returns None, and the caller decodes with Pillow, which knows the edge cases.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

# The JPEG modes (as Pillow reports them from the header) libjpeg-turbo turns into RGB itself.
DECODABLE_MODES = frozenset({"RGB", "L"})


def decode(data: bytes, width: int, height: int, target: tuple[int, int]) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB, scaled by 1/2, 1/4 or 1/8 in the DCT while each side stays >= twice the size
    it is resized to (`target`: width, height, as stored); None when libjpeg-turbo refuses the data (the
    caller falls back to Pillow)."""
    factor = dct_factor(width, height, target)
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=-(-height // factor),
            min_width=-(-width // factor),
            strict=True,
        )
    except ValueError:
        return None


def dct_factor(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 that keeps each decoded side >= twice its `target` (width, height).

    The DCT's scaling is a cruder low-pass than the antialiased resize that follows: with the 2x margin the
    resize does the filtering, and the answers match the reference as closely as without DCT scaling, while
    a 12 MP photo still decodes at 1/4 scale (docs/architecture.md, "Decode ahead")."""
    factor = 1
    while factor < 8 and width // (factor * 2) >= 2 * target[0] and height // (factor * 2) >= 2 * target[1]:
        factor *= 2
    return factor


def orient(pixels: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply EXIF orientation 1-8 as Pillow's `exif_transpose` does; the pixels themselves when there is
    none (or it is out of range), else a C-contiguous copy (the resize needs positive strides)."""
    match orientation:
        case 2:
            view = pixels[:, ::-1]
        case 3:
            view = pixels[::-1, ::-1]
        case 4:
            view = pixels[::-1]
        case 5:
            view = pixels.transpose(1, 0, 2)
        case 6:
            view = np.rot90(pixels, -1)
        case 7:
            view = pixels[::-1, ::-1].transpose(1, 0, 2)
        case 8:
            view = np.rot90(pixels, 1)
        case _:
            return pixels
    return np.ascontiguousarray(view)
