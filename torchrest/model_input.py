"""A model's input, as pre-processing fills it: its size, how an image is fitted to it, how its pixels are
normalised (InputSpec). Plain data, read by the flags and a model folder's config.json (which make one), by
pre-processing and the fitting (torchrest.preprocess, torchrest.resize: which fill it), and by the backends
(which normalise as it says).

    size       a square `crop_size`, or `height` x `width`
    resize     crop (the shorter side to `resize_size`, then the centre), letterbox (the whole image, aspect
               kept, padded with `fill`) or stretch
    normalize  imagenet (torchvision's ImageNet mean and std) or unit (pixels / 255)
"""

from __future__ import annotations

from dataclasses import dataclass

# a model's uint8 input normalised with torchvision's ImageNet statistics ("imagenet"), or pixels / 255 ("unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET, UNIT = "imagenet", "unit"
NORMALIZATIONS = {IMAGENET: (IMAGENET_MEAN, IMAGENET_STD), UNIT: ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
# how an image is fitted to the model's input (torchrest.resize)
CROP, LETTERBOX, STRETCH = "crop", "letterbox", "stretch"
RESIZES = (CROP, LETTERBOX, STRETCH)
LETTERBOX_FILL = 114  # the grey Ultralytics pads with


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How a model wants its pixels: its input's size (a square `crop_size`, or `height` x `width`), how an
    image is fitted to it (crop: the shorter side resized to `resize_size`, then the centre; letterbox: the
    whole image, padded with `fill`; stretch), and how its uint8 RGB pixels are normalised."""

    crop_size: int = 224
    resize_size: int = 256
    height: int = 0  # with width: a non-square input (0: crop_size)
    width: int = 0
    resize: str = CROP
    normalize: str = IMAGENET
    fill: int = LETTERBOX_FILL

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return (self.height or self.crop_size, self.width or self.crop_size)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALIZATIONS[self.normalize]

    def check(self) -> None:
        """ValueError with a one-line reason for a spec no image can be fitted to."""
        height, width = self.size
        if min(height, width) < 1 or max(height, width) > 8192:
            raise ValueError(f"the input size must be 1 to 8192 pixels a side, got {height}x{width}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.resize == CROP and self.resize_size < max(height, width):
            raise ValueError(f"the crop's resize size ({self.resize_size}) must be at least the input's side")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"the letterbox fill must be a grey level from 0 to 255, got {self.fill}")


def input_size(text: str | int | list[int]) -> tuple[int, int]:
    """640, "640", "480x640" or [480, 640] -> (height, width); ValueError otherwise."""
    if isinstance(text, list) and len(text) == 2 and all(isinstance(side, int) for side in text):
        return text[0], text[1]
    if isinstance(text, int) and not isinstance(text, bool):
        return text, text
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdigit() for part in parts):
        return int(parts[0]), int(parts[-1])
    raise ValueError(f"input size must be N (square) or HEIGHTxWIDTH, got {text!r}")


def input_spec(
    size: tuple[int, int], resize_size: int, resize: str, normalize: str, fill: int = LETTERBOX_FILL
) -> InputSpec:
    """A checked InputSpec (ValueError otherwise); resize_size 0: 8/7 of the input's longer side (224 -> 256)."""
    height, width = size
    square = height == width
    spec = InputSpec(
        crop_size=height if square else max(height, width),
        resize_size=resize_size or max(height, width) * 8 // 7,
        height=0 if square else height,
        width=0 if square else width,
        resize=resize,
        normalize=normalize,
        fill=fill,
    )
    spec.check()
    return spec
