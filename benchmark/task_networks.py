"""Networks of the size production detectors and segmenters have, for benchmarks only (random weights: no
detector, segmenter or depth weights can be fetched here). Written here from the published architectures'
shapes, not copied from any package:

    Yolo8nSized   YOLOv8n's layout (CSP backbone with C2f blocks, SPPF, a PAN neck, a decoupled head with
                  distribution focal loss), 3.2 M parameters at 640 x 640: one output (N, 4 + 80, 8400) of
                  centre x, centre y, width, height in input pixels and 80 sigmoid class scores, the dense
                  layout Ultralytics exports
    SmallSegmenter the same backbone (stride 32) with a feature-pyramid head: (N, 21, H / 4, W / 4) class
                  logits, as SegFormer-style segmenters give them
    SmallDepth    a light monocular depth network (a strided encoder to 1/16, a U-Net decoder back to 1/2),
                  2.7 M parameters: (N, 3, 256, 256) -> (N, 1, 128, 128), positive (softplus)

The first two take (N, 3, H, W) float, pixels / 255, as Ultralytics' models do (`--normalize unit`); SmallDepth
ImageNet-normalised pixels, as MiDaS and Depth Anything do (torchrest's default, examples/tasks/depth.py's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class Conv(nn.Sequential):
    """Conv (no bias) + BatchNorm + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Split, n bottlenecks in a chain, every intermediate concatenated, merged."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).split((self.c, self.c), dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1, self.cv2 = Conv(c1, hidden), Conv(hidden * 4, c2)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        a = self.pool(x)
        b = self.pool(a)
        return self.cv2(torch.cat((x, a, b, self.pool(b)), dim=1))


class Backbone(nn.Module):
    """YOLOv8n's backbone: the P3, P4 and P5 features (strides 8, 16, 32; 64, 128, 256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True))
        self.p3 = nn.Sequential(Conv(32, 64, 3, 2), C2f(64, 64, 2, True))
        self.p4 = nn.Sequential(Conv(64, 128, 3, 2), C2f(128, 128, 2, True))
        self.p5 = nn.Sequential(Conv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        return p3, p4, self.p5(p4)


class Neck(nn.Module):
    """The PAN neck: top-down, then bottom-up."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4, self.td3 = C2f(384, 128), C2f(192, 64)
        self.down3, self.bu4 = Conv(64, 64, 3, 2), C2f(192, 128)
        self.down4, self.bu5 = Conv(128, 128, 3, 2), C2f(384, 256)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        t4 = self.td4(torch.cat((self.up(p5), p4), 1))
        n3 = self.td3(torch.cat((self.up(t4), p3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), 1))
        return [n3, n4, n5]


class Yolo8nSized(nn.Module):
    STRIDES = (8, 16, 32)
    BINS = 16  # distribution focal loss: each box side as a distribution over 16 bins

    def __init__(self, classes: int = 80) -> None:
        super().__init__()
        self.classes = classes
        self.backbone, self.neck = Backbone(), Neck()
        box, cls = 64, max(64, min(classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, box, 3), Conv(box, box, 3), nn.Conv2d(box, 4 * self.BINS, 1)) for c in (64, 128, 256)
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, cls, 3), Conv(cls, cls, 3), nn.Conv2d(cls, classes, 1)) for c in (64, 128, 256)
        )
        self.bins: torch.Tensor
        self.register_buffer("bins", torch.arange(self.BINS, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.neck(*self.backbone(x))
        boxes, scores = [], []
        for level, feature in enumerate(features):
            n, _, h, w = feature.shape
            stride = self.STRIDES[level]
            sides = self.box[level](feature).view(n, 4, self.BINS, h * w).softmax(dim=2)
            distances = (sides * self.bins.view(1, 1, -1, 1)).sum(dim=2)  # (n, 4, hw): left, top, right, bottom
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            anchors = torch.stack((xs.reshape(-1), ys.reshape(-1))).to(x.dtype) + 0.5  # (2, hw)
            top_left, bottom_right = anchors - distances[:, :2], anchors + distances[:, 2:]
            centre_size = torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), dim=1) * stride
            boxes.append(centre_size)
            scores.append(self.cls[level](feature).view(n, self.classes, h * w).sigmoid())
        return torch.cat((torch.cat(boxes, dim=2), torch.cat(scores, dim=2)), dim=1)


class SmallSegmenter(nn.Module):
    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.lateral = nn.ModuleList(Conv(c, 64) for c in (64, 128, 256))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.refine = nn.Sequential(Conv(64, 64, 3), Conv(64, 64, 3))
        self.stem_lateral = Conv(32, 64)
        self.classify = nn.Conv2d(64, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.backbone.stem(x)  # stride 4
        p3 = self.backbone.p3(stem)
        p4 = self.backbone.p4(p3)
        p5 = self.backbone.p5(p4)
        top = self.lateral[2](p5)
        top = self.up(top) + self.lateral[1](p4)
        top = self.up(top) + self.lateral[0](p3)
        top = self.up(top) + self.stem_lateral(stem)
        return self.classify(self.refine(top))  # (N, classes, H / 4, W / 4)


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def export_onnx(module: nn.Module, size: int, path: Path) -> Path:
    """`module` (random weights, seed 0) as an ONNX file with a dynamic batch, as a user would export it."""
    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", max=64)
    with torch.no_grad():
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
        torch.onnx.export(program, (example,), str(path), dynamo=True, external_data=False)
    return path


DETECTOR_CLASS_BIAS = -8.0  # every class score's, after calibration: few candidates over a threshold of 0.25


def random_detector(seed: int = 0, calibration: Sequence[Path] = ()) -> Yolo8nSized:
    """YOLOv8n-sized, random weights (`seed`). As built, its activations shrink block after block (BatchNorm's
    default statistics, mean 0 and variance 1, fit no random layer) until the head answers the same whatever
    the image: every one of the 8400 candidates one class at one score (0.528). With `calibration` photos it
    answers as a detector does, each photo its own few boxes: BatchNorm's statistics are measured on those
    photos (each stretched to the input), as a trained network's are on its training images, and every class
    score's bias is set to DETECTOR_CLASS_BIAS. Calibrated on the four photos of tests/data, 34 of the 8400
    candidates score over 0.25 on astronaut.jpg (25 boxes of 14 classes after NMS), none on the other three,
    whose activations stay smaller."""
    torch.manual_seed(seed)
    network = Yolo8nSized()
    if calibration:
        side = 640
        batch = torch.stack([_unit_pixels(photo, side) for photo in calibration])
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average: one pass over the batch sets the statistics
        with torch.no_grad():
            network.train()(batch)
            for head in network.cls:
                scores = list(head.children())[-1]  # the 1 x 1 convolution that gives the class scores
                assert isinstance(scores, nn.Conv2d) and scores.bias is not None
                scores.bias.fill_(DETECTOR_CLASS_BIAS)
    return network.eval()


def _unit_pixels(photo: Path, side: int) -> torch.Tensor:
    """A photo stretched to side x side, as (3, side, side) float pixels / 255."""
    image = Image.open(photo).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def random_segmenter(seed: int = 0) -> SmallSegmenter:
    torch.manual_seed(seed)
    return SmallSegmenter().eval()


class SmallDepth(nn.Module):
    """A light monocular depth network's size and shape: a strided encoder down to 1/16 (32, 64, 128, 256
    channels; each stage a strided 3 x 3 convolution, then 1, 1, 2, 2 more), a U-Net decoder back up to 1/2
    (each step: upsample, concatenate the encoder's feature of that scale, two convolutions), then one 3 x 3
    convolution to one channel and softplus. (N, 3, H, W) ImageNet-normalised -> (N, 1, H / 2, W / 2),
    positive; 2.7 M parameters, 3.0 G multiply-adds at 256 x 256."""

    WIDTHS = (32, 64, 128, 256)
    REPEATS = (1, 1, 2, 2)  # the convolutions after each stage's strided one

    def __init__(self) -> None:
        super().__init__()
        stages, previous = [], 3
        for width, repeats in zip(self.WIDTHS, self.REPEATS, strict=True):
            stages.append(nn.Sequential(Conv(previous, width, 3, 2), *(Conv(width, width, 3) for _ in range(repeats))))
            previous = width
        self.encoder = nn.ModuleList(stages)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        pairs = zip(self.WIDTHS[:0:-1], self.WIDTHS[-2::-1], strict=True)  # (256, 128), (128, 64), (64, 32)
        self.decoder = nn.ModuleList(
            nn.Sequential(Conv(deep + skip, skip, 3), Conv(skip, skip, 3)) for deep, skip in pairs
        )
        self.head = nn.Conv2d(self.WIDTHS[0], 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)  # strides 2, 4, 8, 16
        for block, skip in zip(self.decoder, features[-2::-1], strict=True):
            x = block(torch.cat((self.up(x), skip), dim=1))
        return nn.functional.softplus(self.head(x))  # (N, 1, H / 2, W / 2), depth > 0


def random_depth(seed: int = 0) -> SmallDepth:
    """SmallDepth with random weights (`seed`): its maps are no depth, but have a light depth model's cost."""
    torch.manual_seed(seed)
    return SmallDepth().eval()
