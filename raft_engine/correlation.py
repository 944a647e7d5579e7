"""Correlation parts of RAFT: how image 2 is presented to the update operator.

A part builds its state from the two feature maps once per pair (`build`) and answers a windowed
lookup around the current correspondences at every iteration (`lookup`). Parts are swappable
(`RAFT.with_parts`): they differ in speed and memory, never in the numbers they produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raft_engine.kernels.corr_lookup import corr_lookup_ref


def all_pairs_correlation(fmap1: torch.Tensor, fmap2: torch.Tensor) -> torch.Tensor:
    """fmap1, fmap2: (B, D, H, W) float32 -> (B*H*W, 1, H, W): <fmap1[p], fmap2[q]> / sqrt(D).

    The 1/sqrt(D) scale is the published one; trained weights expect it.
    """
    batch, dim, height, width = fmap1.shape
    corr = torch.matmul(fmap1.reshape(batch, dim, height * width).transpose(1, 2), fmap2.reshape(batch, dim, -1))
    return (corr / math.sqrt(dim)).view(batch * height * width, 1, height, width)


def correlation_pyramid(corr: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Level l is level l-1 average-pooled 2x2 over image 2's axes (odd sizes floor, as published)."""
    pyramid = [corr]
    for _ in range(levels - 1):
        corr = F.avg_pool2d(corr, kernel_size=2, stride=2)
        pyramid.append(corr)
    return pyramid


@dataclass(frozen=True)
class DenseCorrelation:
    """The published all-pairs volume and its average-pooled pyramid, looked up with grid_sample.

    Memory: (HW/64)^2 float32 for the volume plus about a third for the coarser levels.
    """

    levels: int
    radius: int

    def build(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
        return correlation_pyramid(all_pairs_correlation(fmap1.float(), fmap2.float()), self.levels)

    def lookup(self, corr_pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """coords: (B, 2, H, W) float32, x first -> (B, levels*(2r+1)^2, H, W) float32."""
        return corr_lookup_ref(corr_pyramid, coords, self.radius)
