"""Pre-processing: encoded image bytes -> the model's input, (h, w, 3) uint8 RGB pixels written into the
batch buffer, and the image's Geometry (where its pixels went: answers are mapped back with it).

    bytes -> header (format, size: bomb check; EXIF orientation)
          -> JPEG: libjpeg-turbo, DCT-scaled (torchrest.jpeg) | anything else or refused: Pillow -> RGB
          -> fitted to the input (crop, letterbox or stretch), written once into the batch row (torchrest.resize)

The runtime hands each image to `Preprocessor.start` as it is queued (decode ahead: the pool, one
thread per core, decodes while the model runs a batch; the codecs and the resize release the GIL), and
its inference thread calls `Preprocessor.fill` when the batch runs, which copies each decoded row into
the batch buffer (or, with --no-decode-ahead or for a lone image on an idle instance, decodes it there).
In one process decoding never runs on the event loop; a front-end process decodes into its slots itself
(`decode_into`: torchrest.frontend.process says where).

`reference_pixels` is the textbook pre-processing (Pillow: orientation, RGB, resize 256 with
antialiasing, centre crop 224) that the fast path is held to (tests/test_fidelity.py, benchmark/ceiling.py).
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from torchrest import jpeg
from torchrest.errors import ImageTooLarge, InvalidImage, TorchrestError, first_line
from torchrest.model_input import InputSpec
from torchrest.priority import started_pool
from torchrest.resize import crop_origin, fit_into, resized_size, shorter_side_to
from torchrest.tasks.base import Geometry

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# We check the declared size ourselves before decoding; Pillow's own bomb guard would only warn below
# twice its limit, so it is switched off in favour of ours.
Image.MAX_IMAGE_PIXELS = None


class Preprocessor:
    """Decodes images into rows of a batch buffer on a pool of `threads`: the batch's images in parallel
    when its instance is about to run it (`fill`), or each image as soon as it is queued (`start`, decode
    ahead), so that decoding overlaps the model's run and the event loop's work."""

    def __init__(self, spec: InputSpec, max_pixels: int, threads: int, ahead: bool = False) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.ahead = ahead
        pool_needed = ahead or threads > 1
        self._pool = started_pool(threads, "decode", one_torch_thread) if pool_needed else None

    def start(self, image: bytes) -> Future[tuple[np.ndarray, Geometry]]:
        """Decode ahead: start decoding `image` now; `fill` copies the pixels when its batch runs."""
        assert self._pool is not None, "a Preprocessor that decodes ahead has a pool"
        return self._pool.submit(decode_fitted, image, self.spec, self.max_pixels)

    def fill(
        self, images: Sequence[bytes | np.ndarray | Future[tuple[np.ndarray, Geometry]]], buffer: np.ndarray
    ) -> list[TorchrestError | Geometry]:
        """Decode images[i] into buffer[i]; return, per image, its Geometry or the 4xx error it earned. A
        tensor a client pre-processed is copied as it is (uint8 pixels) or quantised back to pixels (float);
        an image decoded ahead is copied once its decode is done."""

        def decode_row(row: int) -> TorchrestError | Geometry:
            image = images[row]
            try:
                if isinstance(image, Future):
                    buffer[row], geometry = image.result()
                    return geometry
                if isinstance(image, np.ndarray):
                    buffer[row] = image if image.dtype == np.uint8 else pixels_from_normalized(image, self.spec)
                    return Geometry.identity(buffer.shape[2], buffer.shape[1])
                return decode_into(image, self.spec, self.max_pixels, buffer[row])
            except (InvalidImage, ImageTooLarge) as error:
                return error

        if self._pool is None or len(images) == 1 or self.ahead:
            return [decode_row(row) for row in range(len(images))]
        return list(self._pool.map(decode_row, range(len(images))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def one_torch_thread() -> None:
    """A decode thread's resize runs on that thread alone: the intra-op pool is the model's (the thread
    count is per thread with OpenMP), and sharing it made both slower."""
    torch.set_num_threads(1)


def decode_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Decode and pre-process one image into a new (h, w, 3) array. Raises InvalidImage or
    ImageTooLarge, nothing else."""
    return decode_fitted(data, spec, max_pixels)[0]


def decode_fitted(data: bytes, spec: InputSpec, max_pixels: int) -> tuple[np.ndarray, Geometry]:
    """`decode_image`, and where the image's pixels went."""
    out = np.empty((*spec.size, 3), np.uint8)
    return out, decode_into(data, spec, max_pixels, out)


def decode_into(data: bytes, spec: InputSpec, max_pixels: int, out: np.ndarray) -> Geometry:
    """Decode and pre-process one image into `out` ((h, w, 3) uint8, a row of the batch buffer); where its
    pixels went. Raises InvalidImage or ImageTooLarge, nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels, original = _decode(data, spec, max_pixels)
            return fit_into(pixels, spec, out, original)
    except (ImageTooLarge, InvalidImage):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"cannot decode image: {first_line(exc, 200)}") from None
    except (MemoryError, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"image too large to decode: {first_line(exc, 200)}") from None


def _decode(data: bytes, spec: InputSpec, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes -> upright (H, W, 3) uint8 RGB, shrunk in the DCT where each side stays >= twice what it is
    resized to; and the image's upright (width, height) before any shrinking."""
    image = _open_checked(data, max_pixels)
    if isinstance(image, JpegImageFile):
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        turned = orientation in TURNED
        width, height = (image.height, image.width) if turned else image.size
        target_height, target_width = resized_size(spec, width, height)
        target = (target_height, target_width) if turned else (target_width, target_height)  # as stored
        if image.mode in jpeg.DECODABLE_MODES:
            pixels = jpeg.decode(data, image.width, image.height, target)
            if pixels is not None:
                return jpeg.orient(pixels, orientation), (width, height)
        factor = jpeg.dct_factor(image.width, image.height, target)
        if factor > 1:  # libjpeg (in Pillow) scales in the DCT too
            image.draft(image.mode, (-(-image.width // factor), -(-image.height // factor)))
        return np.asarray(to_rgb(ImageOps.exif_transpose(image))), (width, height)
    upright = np.asarray(to_rgb(ImageOps.exif_transpose(image)))
    return upright, (upright.shape[1], upright.shape[0])


TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only; refuse an empty or too large declared size before anything is decoded."""
    image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.1f}"
        )
    return image


def reference_pixels(data: bytes, spec: InputSpec) -> np.ndarray:
    """The textbook pre-processing, all in Pillow and at full resolution: EXIF orientation, RGB, resize
    the shorter side to R (bilinear, antialiased), centre crop S. What the fast path is measured against."""
    with Image.open(io.BytesIO(data)) as opened:
        image = to_rgb(ImageOps.exif_transpose(opened))
    height, width = shorter_side_to(image.height, image.width, spec.resize_size)
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    top, left = crop_origin(height, width, spec.crop_size, spec.crop_size)
    return np.asarray(resized.crop((left, top, left + spec.crop_size, top + spec.crop_size)))


def pixels_from_normalized(tensor: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(3, h, w) float, normalised as the model expects (its mean and std, or / 255) -> (h, w, 3) uint8.

    The models normalise uint8 pixels themselves, so a float tensor joins the batch as the pixels it
    stands for: rounding costs at most half a grey level (0.5/255) per value."""
    mean, std = spec.mean_std
    pixels = tensor.transpose(1, 2, 0) * (np.array(std, np.float32) * 255) + np.array(mean, np.float32) * 255
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


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
