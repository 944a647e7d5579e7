"""Feature and context encoders: a 7x7 stem and three stages of residual or bottleneck blocks at 1/8.

Module and parameter names follow the published RAFT code (`conv1`, `norm1`, `layer1`..`layer3`,
`conv2`), so the published checkpoints load by name. One difference: the published blocks register
the shortcut's normalisation twice (`norm3` or `norm4`, and `downsample.1`, the same module); here it
exists once, as `downsample.1`. The weight loader folds the duplicate (see `raft_engine.weights`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raft_engine.errors import InputError


class FloatInstanceNorm2d(nn.InstanceNorm2d):
    """Instance normalisation computed in float32 whatever the input's dtype.

    Half-precision statistics over a whole feature map lose accuracy, and fp16 InstanceNormalization
    is wrong in ONNX Runtime and TensorRT; for float32 input this is plain InstanceNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        # Affine-free, per-sample statistics in eval mode too, as published.
        return FloatInstanceNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise InputError(f"unknown normalisation {kind!r}; expected 'instance', 'batch' or 'none'")


def _shortcut(in_planes: int, planes: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), make_norm(norm, planes))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions (the first strided) around an identity or 1x1 shortcut (RAFT-large)."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = make_norm(norm, planes)
        self.norm2 = make_norm(norm, planes)
        self.downsample = _shortcut(in_planes, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 at a quarter of the width, around a shortcut (RAFT-small)."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1)
        self.norm1 = make_norm(norm, planes // 4)
        self.norm2 = make_norm(norm, planes // 4)
        self.norm3 = make_norm(norm, planes)
        self.downsample = _shortcut(in_planes, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> features (B, output_dim, H/8, W/8).

    Runs in the dtype of its weights: the input is cast to it, the output keeps it.
    """

    def __init__(self, widths: tuple[int, int, int, int], block: str, norm: str, output_dim: int) -> None:
        super().__init__()
        block_cls = ResidualBlock if block == "residual" else BottleneckBlock
        stem, *stages = widths
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3)
        self.norm1 = make_norm(norm, stem)
        in_planes = stem
        layers = []
        for planes, stride in zip(stages, (1, 2, 2), strict=True):
            layers.append(
                nn.Sequential(
                    block_cls(in_planes, planes, norm, stride=stride),
                    block_cls(planes, planes, norm, stride=1),
                )
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(in_planes, output_dim, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(self.conv1.weight.dtype)
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)
