"""Correlation parts of RAFT: how image 2 is presented to the update operator.

A part builds its state from the two feature maps once per pair (`build`) and answers a windowed
lookup around the current correspondences at every iteration (`lookup`). Parts are swappable
(`RAFT.with_parts`): they differ in speed and memory, not in the numbers they produce.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raft_engine.kernels.corr_lookup import corr_lookup_ref
from raft_engine.kernels.corr_ondemand import corr_ondemand_ref, pooled_pyramid

# Building a half-precision volume goes through float32 in row chunks of at most this many bytes,
# so the float32 volume never exists whole.
BUILD_CHUNK_BYTES = 1 << 28


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


def dense_pyramid_bytes(batch: int, height: int, width: int, levels: int, dtype: torch.dtype) -> int:
    """Memory of the dense pyramid for a (height, width) 1/8 grid."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    cells = batch * height * width
    return sum(cells * (height >> level) * (width >> level) * itemsize for level in range(levels))


@dataclass(frozen=True)
class DenseCorrelation:
    """The published all-pairs volume and its average-pooled pyramid.

    storage_dtype: float32 (exact), or float16/bfloat16 for half the memory; lookups accumulate in
    float32 either way. lookup_fn: `corr_lookup_ref` or the Triton `corr_lookup`.
    """

    levels: int
    radius: int
    storage_dtype: torch.dtype = torch.float32
    lookup_fn: Callable = corr_lookup_ref

    def build(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
        fmap1, fmap2 = fmap1.float(), fmap2.float()
        if self.storage_dtype == torch.float32:
            corr = all_pairs_correlation(fmap1, fmap2)
        else:
            batch, dim, height, width = fmap1.shape
            cells = height * width
            corr = torch.empty(batch, cells, cells, device=fmap1.device, dtype=self.storage_dtype)
            rows = max(1, BUILD_CHUNK_BYTES // (4 * batch * cells))
            features1 = fmap1.reshape(batch, dim, cells).transpose(1, 2)
            features2 = fmap2.reshape(batch, dim, cells)
            for start in range(0, cells, rows):
                block = torch.matmul(features1[:, start : start + rows], features2) / math.sqrt(dim)
                corr[:, start : start + rows] = block.to(self.storage_dtype)
            corr = corr.view(batch * cells, 1, height, width)
        return correlation_pyramid(corr, self.levels)

    def lookup(self, corr_pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """coords: (B, 2, H, W) float32, x first -> (B, levels*(2r+1)^2, H, W) float32."""
        return self.lookup_fn(corr_pyramid, coords, self.radius)

    def responses(self, corr_pyramid: list[torch.Tensor], batch: int, y: int, x: int) -> list[torch.Tensor]:
        """Cell (x, y) of image `batch`'s correlation with all of image 2, per level: (H >> l, W >> l)."""
        _, _, height, width = corr_pyramid[0].shape
        cell = (batch * height + y) * width + x
        return [level[cell, 0].float() for level in corr_pyramid]


@dataclass(frozen=True)
class OnDemandCorrelation:
    """Correlation computed at lookup time from fmap1 and the average-pooled fmap2 pyramid: the
    dense path's numbers in O(HW * D) memory (see `raft_engine.kernels.corr_ondemand`).

    lookup_fn: `corr_ondemand_ref` or the Triton `corr_ondemand`.
    """

    levels: int
    radius: int
    storage_dtype: torch.dtype = torch.float32
    lookup_fn: Callable = corr_ondemand_ref

    def build(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        def channels_last(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).to(self.storage_dtype).contiguous()

        pyramid = [channels_last(level) for level in pooled_pyramid(fmap2.float(), self.levels)]
        return channels_last(fmap1.float()), pyramid

    def lookup(self, state: tuple[torch.Tensor, list[torch.Tensor]], coords: torch.Tensor) -> torch.Tensor:
        fmap1, fmap2_pyramid = state
        return self.lookup_fn(fmap1, fmap2_pyramid, coords, self.radius)

    def responses(
        self, state: tuple[torch.Tensor, list[torch.Tensor]], batch: int, y: int, x: int
    ) -> list[torch.Tensor]:
        """Cell (x, y) of image `batch`'s correlation with all of image 2, per level: (H >> l, W >> l)."""
        fmap1, fmap2_pyramid = state
        feature = fmap1[batch, y, x].float() / math.sqrt(fmap1.shape[-1])
        return [torch.einsum("hwd,d->hw", level[batch].float(), feature) for level in fmap2_pyramid]
