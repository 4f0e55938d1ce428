"""The inputs optimize feeds candidates: a calibration set for INT8 and a held-out set for fidelity.

Both come from the user's sample folder, already pre-processed as the server would ((N, H, W, 3) uint8).
Each photo appears once as the server would see it, then as random crops, flips and colour jitter of
itself, each fitted to the input as the server fits images (a detector's letterboxed, padding and all).
With ten photos or more, one in five is held out whole; with fewer, the two sets are different random
views (different seeds) of the same photos, and the report says so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageEnhance, ImageOps

from torchrest.errors import StartupError, TorchrestError
from torchrest.model_input import CROP, InputSpec
from torchrest.models.labels import class_index
from torchrest.preprocess import decode_image, to_rgb
from torchrest.resize import fit_into

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
MAX_PIXELS = 64_000_000
HOLD_OUT_EVERY = 5  # with enough photos, every fifth is kept out of calibration
SPLIT_FROM = 10


Photo = tuple[bytes, Image.Image, int]  # the file, its pixels upright, its class (-1: not labelled)


@dataclass(frozen=True, slots=True)
class SampleSets:
    calibration: np.ndarray  # (N, H, W, 3) uint8
    held_out: np.ndarray  # (M, H, W, 3) uint8
    photos: int
    unreadable: list[str]
    split: str  # how the held-out set was kept apart from calibration
    files: list[bytes]  # the photos as files, as a client would send them (the served-layout search)
    held_out_labels: np.ndarray  # (M,) the class of each held-out input, -1 where its photo has no label
    unlabelled_folders: list[str]  # sub-folders whose name is no class of the model

    @property
    def labelled(self) -> int:
        return int(np.sum(self.held_out_labels >= 0))


def sample_sets(
    folder: Path, spec: InputSpec, calibration_samples: int, fidelity_samples: int, labels: list[str] | None = None
) -> SampleSets:
    """Raises StartupError when `folder` is not a folder or holds no image this server can decode.

    Photos in a sub-folder named after a class (one of `labels`, or an ImageNet WordNet id or synonym)
    are labelled with it, and so are the views made of them: the report then adds top-1 accuracy."""
    if not folder.is_dir():
        raise StartupError(f"calibration folder {folder} does not exist or is not a folder")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    photos: list[Photo] = []
    unreadable: list[str] = []
    classes: dict[str, int | None] = {}
    for path in files:
        data = path.read_bytes()
        try:
            decode_image(data, spec, MAX_PIXELS)
        except TorchrestError:
            unreadable.append(path.name)
            continue
        named = path.parent.name if path.parent != folder else ""
        if named and named not in classes:
            classes[named] = class_index(named, labels or [])
        label = classes.get(named) if named else None
        photos.append((data, _open_rgb(data), -1 if label is None else label))
    if not photos:
        raise StartupError(f"calibration folder {folder} holds no image torchrest can decode (jpg, png, webp, bmp)")
    if len(photos) >= SPLIT_FROM:
        held = [photo for index, photo in enumerate(photos) if index % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
        calibrating = [photo for index, photo in enumerate(photos) if index % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
        split = f"{len(held)} of {len(photos)} photos held out whole, never seen by calibration"
    else:
        held = calibrating = photos
        split = f"only {len(photos)} photos: calibration and fidelity use different random views of the same photos"
    calibration, _ = _views(calibrating, spec, calibration_samples, seed=1)
    held_out, held_out_labels = _views(held, spec, fidelity_samples, seed=2)
    return SampleSets(
        calibration=calibration,
        held_out=held_out,
        photos=len(photos),
        unreadable=unreadable,
        split=split,
        files=[data for data, _, _ in photos],
        held_out_labels=held_out_labels,
        unlabelled_folders=sorted(name for name, index in classes.items() if index is None),
    )


def _open_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def _views(photos: list[Photo], spec: InputSpec, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each photo as the server sees it, then random views of them, `count` in all; and their labels."""
    rng = np.random.default_rng(seed)
    views = [decode_image(data, spec, MAX_PIXELS) for data, _, _ in photos[:count]]
    labels = [label for _, _, label in photos[:count]]
    while len(views) < count:
        _, image, label = photos[int(rng.integers(len(photos)))]
        views.append(_random_view(image, spec, rng))
        labels.append(label)
    return np.stack(views), np.asarray(labels, dtype=np.int64)


def _random_view(image: Image.Image, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    """A random crop (30-100% of the area, aspect 3:4 to 4:3), maybe mirrored, with colour jitter, fitted to
    the input: resized to it for a centre-cropping model (the crop is the augmentation), else as the server
    fits an image (letterboxed or stretched)."""
    height, width = spec.size
    box = _random_box(image, rng)
    if spec.resize == CROP:
        return np.asarray(_jittered(image, box, (width, height), rng), dtype=np.uint8)
    scale = min(1.0, 2 * max(height, width) / max(box[2] - box[0], box[3] - box[1]))  # no more pixels than needed
    size = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
    view = np.array(_jittered(image, box, size, rng), dtype=np.uint8)  # writable: torch wraps it
    out = np.empty((height, width, 3), np.uint8)
    fit_into(view, spec, out, size)
    return out


def encoded_views(photos: list[bytes], count: int, seed: int) -> list[bytes]:
    """`count` files a server could receive, made from `photos`: a random crop of each (as
    `_random_view`), at a random size (shorter side 96 to 1600 pixels), stored with a random EXIF
    orientation (the pixels turned so that the upright image is the view), as JPEG (quality 70-95,
    4:2:0 or 4:4:4, some progressive) or one time in eight as PNG. What pre-processing fidelity is
    measured on: every path a decoder takes (DCT scaling, orientation, Pillow's fallback) is exercised."""
    rng = np.random.default_rng(seed)
    opened = [_open_rgb(data) for data in photos]
    files = []
    for _ in range(count):
        image = opened[int(rng.integers(len(opened)))]
        left, top, right, bottom = box = _random_box(image, rng)
        shorter = float(np.exp(rng.uniform(np.log(96), np.log(1600))))
        scale = shorter / min(right - left, bottom - top)
        size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
        view = _jittered(image, box, size, rng)
        orientation = int(rng.choice([1, 1, 1, 2, 3, 4, 5, 6, 7, 8]))
        if orientation != 1:
            view = view.transpose(_STORED_AS[orientation])
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        buffer = io.BytesIO()
        if rng.random() < 1 / 8:
            view.save(buffer, "PNG", exif=exif)
        else:
            quality = int(rng.integers(70, 96))
            subsampling = int(rng.choice([0, 2]))  # 4:4:4 or 4:2:0
            view.save(
                buffer, "JPEG", quality=quality, subsampling=subsampling, progressive=rng.random() < 0.3, exif=exif
            )
        files.append(buffer.getvalue())
    return files


# How a camera stores an upright picture it tags with each orientation (the inverse of what
# ImageOps.exif_transpose does to display it).
_STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _random_box(image: Image.Image, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop box: 30-100% of the area, aspect 3:4 to 4:3."""
    width, height = image.size
    area = width * height * rng.uniform(0.3, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = int(min(width, round((area * aspect) ** 0.5)))
    crop_h = int(min(height, round((area / aspect) ** 0.5)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return left, top, left + crop_w, top + crop_h


def _jittered(
    image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """`box` of `image` resized to `size`, mirrored half the time, brightness/contrast/colour +-20%."""
    view = image.resize(size, Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhance(view).enhance(float(rng.uniform(0.8, 1.2)))
    return view


__all__ = ["IMAGE_SUFFIXES", "SampleSets", "encoded_views", "sample_sets"]
