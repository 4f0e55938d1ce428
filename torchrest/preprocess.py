"""Pre-processing: encoded image bytes -> (S, S, 3) uint8 RGB pixels, written into the batch buffer.

    bytes -> header (format, size: bomb check) -> JPEG DCT-scaled decode -> EXIF orientation
          -> RGB -> resize of the centre-crop box straight to S x S -> ndarray

The runtime calls `Preprocessor.fill` on its inference thread just before the model runs: the batch's
images are decoded in parallel on a small pool (Pillow releases the GIL) straight into their rows of the
batch buffer. Decoding never competes with the model's threads for the cores, which on a small CPU costs
more than it overlaps, and never runs on the event loop. Resizing only the crop box in one pass is the
same arithmetic as "resize the shorter side, then crop", without resampling pixels the crop throws away.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from torchrest.config import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from torchrest.errors import ImageTooLarge, InvalidImage, TorchrestError, first_line

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# We check the declared size ourselves before decoding; Pillow's own bomb guard would only warn below
# twice its limit, so it is switched off in favour of ours.
Image.MAX_IMAGE_PIXELS = None


class Preprocessor:
    """Decodes a batch of images into the first rows of a batch buffer, in parallel."""

    def __init__(self, spec: InputSpec, max_pixels: int, threads: int) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None

    def fill(self, images: Sequence[bytes | np.ndarray], buffer: np.ndarray) -> list[TorchrestError | None]:
        """Decode images[i] into buffer[i]; return, per image, None or the 4xx error it earned. A tensor
        a client pre-processed is copied as it is (uint8 pixels) or quantised back to pixels (float)."""

        def decode_row(row: int) -> TorchrestError | None:
            image = images[row]
            if isinstance(image, np.ndarray):
                buffer[row] = image if image.dtype == np.uint8 else pixels_from_normalized(image)
                return None
            try:
                buffer[row] = decode_image(image, self.spec, self.max_pixels)
            except (InvalidImage, ImageTooLarge) as error:
                return error
            return None

        if self._pool is None or len(images) == 1:
            return [decode_row(row) for row in range(len(images))]
        return list(self._pool.map(decode_row, range(len(images))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def decode_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Decode and pre-process one image. Raises InvalidImage or ImageTooLarge, nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(data, spec, max_pixels)
    except (ImageTooLarge, InvalidImage):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"cannot decode image: {first_line(exc, 200)}") from None
    except (MemoryError, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"image too large to decode: {first_line(exc, 200)}") from None


def _decode(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.1f}"
        )
    if isinstance(image, JpegImageFile):
        # Let libjpeg scale by 1/2, 1/4 or 1/8 in the DCT while the crop box stays >= the target size.
        scale = min(width, height) * spec.crop_fraction / spec.crop_size
        if scale >= 2:
            image.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
    image = to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    crop = min(width, height) * spec.crop_fraction
    left, top = (width - crop) / 2, (height - crop) / 2
    box = (left, top, left + crop, top + crop)
    resized = image.resize((spec.crop_size, spec.crop_size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def pixels_from_normalized(tensor: np.ndarray) -> np.ndarray:
    """(3, S, S) float, normalised with the ImageNet mean and std as the models expect -> (S, S, 3) uint8.

    The models normalise uint8 pixels themselves, so a float tensor joins the batch as the pixels it
    stands for: rounding costs at most half a grey level (0.5/255) per value."""
    pixels = tensor.transpose(1, 2, 0) * _STD_255 + _MEAN_255
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


_MEAN_255 = np.array(IMAGENET_MEAN, np.float32) * 255
_STD_255 = np.array(IMAGENET_STD, np.float32) * 255


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode Pillow decodes -> RGB: alpha composited on white, 16-bit scaled, palette expanded."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(image, dtype=np.uint32)
        shift = 8 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 0
        return Image.fromarray((wide >> shift).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
