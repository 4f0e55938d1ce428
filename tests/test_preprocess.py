"""decode_image: every accepted format and mode, orientation, and the failures it must turn into 4xx."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PHOTOS
from tests.helpers import forged_png
from torchrest.errors import ImageTooLarge, InvalidImage
from torchrest.model_input import InputSpec
from torchrest.preprocess import decode_image

SPEC = InputSpec(224, 256)
LIMIT = 64_000_000


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def cat() -> Image.Image:
    return Image.open(io.BytesIO(PHOTOS["cat"])).convert("RGB")


def test_jpeg_gives_uint8_square() -> None:
    pixels = decode_image(PHOTOS["cat"], SPEC, LIMIT)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_matches_resize_then_centre_crop() -> None:
    """The one-pass crop-box resize equals the textbook resize-256-then-crop-224 closely."""
    image = Image.open(io.BytesIO(PHOTOS["coffee"])).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    resized = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    textbook = np.asarray(resized.crop((left, top, left + 224, top + 224))).astype(int)
    ours = decode_image(PHOTOS["coffee"], SPEC, LIMIT).astype(int)
    assert np.abs(ours - textbook).mean() < 2.0


def test_large_jpeg_uses_dct_scaling_and_keeps_content() -> None:
    big = cat().resize((451 * 8, 300 * 8), Image.Resampling.BICUBIC)
    small = decode_image(PHOTOS["cat"], SPEC, LIMIT).astype(int)
    from_big = decode_image(encode(big, "JPEG", quality=90), SPEC, LIMIT).astype(int)
    assert np.abs(small - from_big).mean() < 8.0


REAL_WORLD_FILES = [
    ("PNG", "L"),
    ("PNG", "RGBA"),
    ("PNG", "LA"),
    ("PNG", "P"),
    ("PNG", "I;16"),
    ("PNG", "1"),
    ("WEBP", "RGB"),
    ("WEBP", "RGBA"),
    ("GIF", "P"),
    ("GIF", "L"),
    ("BMP", "RGB"),
    ("BMP", "P"),
    ("BMP", "1"),
    ("JPEG", "L"),
    ("JPEG", "CMYK"),
    ("JPEG", "RGB"),
]


@pytest.mark.parametrize(("fmt", "mode"), REAL_WORLD_FILES)
def test_modes_and_formats_become_rgb(fmt: str, mode: str) -> None:
    if mode == "I;16":  # 16-bit grayscale, as scanners and medical images write it
        image = Image.fromarray(np.asarray(cat().convert("L")).astype(np.uint16) * 257)
    else:
        image = cat().convert(mode)
    pixels = decode_image(encode(image, fmt), SPEC, LIMIT)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert 20 < pixels.mean() < 235, "image came out blank"


def test_transparent_pixels_become_white() -> None:
    clear = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    pixels = decode_image(encode(clear, "PNG"), SPEC, LIMIT)
    assert (pixels == 255).all()


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    mid = Image.fromarray(np.full((40, 40), 32768, np.uint16))
    pixels = decode_image(encode(mid, "PNG"), SPEC, LIMIT)
    assert abs(int(pixels.mean()) - 128) <= 1


def test_exif_orientation_is_applied() -> None:
    upright = cat()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = decode_image(encode(stored, "JPEG", quality=95, exif=exif), SPEC, LIMIT).astype(int)
    plain = decode_image(encode(upright, "JPEG", quality=95), SPEC, LIMIT).astype(int)
    ignored = np.asarray(stored.resize((224, 224))).astype(int)
    assert np.abs(rotated - plain).mean() < 6.0
    assert np.abs(ignored - plain).mean() > 20.0


def test_tiny_image_is_upscaled() -> None:
    assert decode_image(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), SPEC, LIMIT).shape == (224, 224, 3)


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, PHOTOS["cat"][:500], b"BM" + b"\x00" * 60])
def test_garbage_is_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, SPEC, LIMIT)


def test_declared_size_over_limit_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(forged_png(50_000, 50_000), SPEC, LIMIT)
    with pytest.raises(ImageTooLarge):
        decode_image(PHOTOS["cat"], SPEC, max_pixels=100_000)
