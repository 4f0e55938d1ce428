"""Models whose answers are known by construction, for the detect, segment and embed tests (no detector or
segmenter weights can be fetched here): they find solid red, green and blue shapes by their colour. Each
takes what a user's exported network takes, (N, 3, H, W) float, here with pixels / 255 (--normalize unit).

    ShapeDetector      dense layout (N, 4 + 3, A): for each colour the box around its pixels, an echo of it
                       (shifted a pixel, less confident: NMS must drop it) and a faint one (under 0.25)
    PostNmsDetector    the same boxes as boxes (N, 3, 4), scores (N, 3), classes (N, 3), count (N,)
    ColourSegmenter    (N, 4, H / 2, W / 2) scores: background, red, green, blue
    MeanColour         (N, 3) embedding: the mean colour
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tests.conftest import PHOTOS

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (20, 40, 230)}
LABELS = ["red", "green", "blue"]
SEGMENT_LABELS = ["background", "red", "green", "blue"]


def colour_masks(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, H, W) 1.0 where a pixel is clearly red, green or blue."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    red = (r > 0.6) & (g < 0.35) & (b < 0.35)
    green = (g > 0.55) & (r < 0.35) & (b < 0.4)
    blue = (b > 0.6) & (r < 0.35) & (g < 0.4)
    return torch.stack((red, green, blue), dim=1).to(x.dtype)


def colour_boxes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 4) x1, y1, x2, y2 around each colour's pixels (pixel edges), and (N, 3) 1.0 where it has any."""
    masks = colour_masks(x)
    height, width = x.shape[2], x.shape[3]
    xs = torch.arange(width, dtype=x.dtype).view(1, 1, 1, -1)
    ys = torch.arange(height, dtype=x.dtype).view(1, 1, -1, 1)
    present = masks.flatten(2).amax(dim=2)
    x2 = (masks * (xs + 1)).flatten(2).amax(dim=2)
    x1 = width - (masks * (width - xs)).flatten(2).amax(dim=2)
    y2 = (masks * (ys + 1)).flatten(2).amax(dim=2)
    y1 = height - (masks * (height - ys)).flatten(2).amax(dim=2)
    return torch.stack((x1, y1, x2, y2), dim=2) * present[..., None], present


class ShapeDetector(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, present = colour_boxes(x)
        centres = torch.cat(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), dim=2)
        one_hot = torch.eye(3, dtype=x.dtype)[None]  # (1, colour, class)
        anchors = []
        for shift, confidence in ((0.0, 0.95), (1.0, 0.9), (0.0, 0.1)):  # the box, its echo, a faint one
            moved = centres + torch.tensor([shift, shift, 0.0, 0.0], dtype=x.dtype)
            scores = one_hot * (present * confidence)[..., None]
            anchors.append(torch.cat((moved, scores), dim=2))  # (N, colour, 4 + 3)
        return torch.cat(anchors, dim=1).transpose(1, 2)  # (N, 4 + 3, 9)


class PostNmsDetector(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes, present = colour_boxes(x)
        classes = torch.arange(3).expand(x.shape[0], 3)
        count = torch.full((x.shape[0],), 3, dtype=torch.int64)
        return boxes, present * 0.95, classes, count


class ColourSegmenter(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = nn.functional.avg_pool2d(colour_masks(x), 2)
        background = 0.5 - masks.sum(dim=1, keepdim=True)
        return torch.cat((background, masks), dim=1)


class MeanColour(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ColourAndMean(nn.Module):
    """Both tasks of one call, as a classifier that also gives its features: logits that favour the image's
    strongest channel (red, green, blue), and the mean colour as its embedding."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(2, 3))
        return 10 * mean, mean


def export(module: nn.Module, size: tuple[int, int], path: Path) -> Path:
    """`module` exported as a user would (float NCHW, a dynamic batch), saved as a .pt2."""
    example = torch.rand(2, 3, *size)
    batch = torch.export.Dim("batch", max=1024)
    with torch.no_grad():
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def labels_file(folder: Path, labels: list[str]) -> Path:
    path = folder / "labels.txt"
    path.write_text("\n".join(labels) + "\n")
    return path


def photo_with_shapes(
    size: tuple[int, int], shapes: dict[str, tuple[int, int, int, int]], orientation: int = 1
) -> tuple[bytes, np.ndarray]:
    """A grey photo (the astronaut, desaturated) of `size` (width, height) with solid rectangles drawn on it
    (colour -> x1, y1, x2, y2, upright pixels), saved as a JPEG whose pixels are stored turned so that EXIF
    `orientation` turns them upright again. Returns the file and the upright pixels."""
    base = Image.open(io.BytesIO(PHOTOS["astronaut"])).convert("L").convert("RGB").resize(size)
    upright = np.asarray(base).copy()
    upright = (upright * 0.6 + 50).astype(np.uint8)  # mid greys: no pixel passes for a colour
    for colour, (x1, y1, x2, y2) in shapes.items():
        upright[y1:y2, x1:x2] = COLOURS[colour]
    stored = {1: upright, 3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation]
    image = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue(), upright


class NanWhenRed(nn.Module):
    """A classifier of three classes that gives NaN for a mostly red image: a model whose output breaks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        broken = (means[:, 0] > 0.6) & (means[:, 1] < 0.3)
        return torch.where(broken[:, None], torch.full_like(means, float("nan")), means)


# name -> (module, task, input size "HxW", resize, labels)
TASK_MODELS: dict[str, tuple[nn.Module, str, str, str, list[str]]] = {
    "shapes": (ShapeDetector(), "detect", "320x320", "letterbox", LABELS),
    "shapes_nms": (PostNmsDetector(), "detect", "288x352", "letterbox", LABELS),
    "regions": (ColourSegmenter(), "segment", "256x256", "letterbox", SEGMENT_LABELS),
    "colour": (MeanColour(), "embed", "64x64", "stretch", []),
    "fragile": (NanWhenRed(), "classify", "32x32", "stretch", LABELS),
    "both": (ColourAndMean(), "classify,embed", "32x32", "stretch", LABELS),
}


def write_task_repository(root: Path, names: list[str] | None = None, layout: dict[str, int] | None = None) -> Path:
    """A repository of the models above (or those `names`), each folder as a user writes one by hand: its
    exported network (float NCHW, pixels / 255), config.json naming its task, input and fitting, its labels
    (and `layout`, the serving layout, where given: no batch sizes are then timed at start-up)."""
    import json

    for name, (module, task, size, resize, labels) in TASK_MODELS.items():
        if names is not None and name not in names:
            continue
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        height, width = (int(side) for side in size.split("x"))
        export(module, (height, width), folder / "1" / "model.pt2")
        if labels:
            labels_file(folder, labels)
        config = {"name": name, "backend": "torch", "artifact": "1/model.pt2", "task": task}
        config |= {"input_size": size, "resize": resize, "normalize": "unit"} | ({"layout": layout} if layout else {})
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root
