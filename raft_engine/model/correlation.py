"""Correlation parts of RAFT: how image 2 is presented to the update operator.

A part builds its state from the two feature maps once per pair (`build`) and answers a windowed
lookup around the current correspondences at every iteration (`lookup`). Parts are swappable
(`RAFT(config, correlation=...)`): they differ in speed and memory, not in the numbers they produce.

The PyTorch references of the lookups live here too (`corr_lookup_ref`, `corr_ondemand_ref`): they
are the specification, the CPU path, the ONNX path and the oracle of the Triton kernels in
`raft_engine.kernels`, and they need nothing but torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from raft_engine.model.upsampling import compute_dtype

# Building a half-precision volume goes through float32 in row chunks of at most this many bytes,
# so the float32 volume never exists whole.
BUILD_CHUNK_BYTES = 1 << 28
# Pooling a pyramid level goes in row chunks of at most this many input elements: PyTorch's CUDA
# avg_pool2d indexes with 32-bit integers.
POOL_CHUNK_ELEMENTS = 2**31 - 1


class Correlation(Protocol):
    """A correlation part: what `RAFT` needs of one.

    build: fmap1, fmap2 (B, D, H, W) float32 -> the part's state for this pair.
    build_bidirectional: fmap1, fmap2 -> the state of both directions as one batch of 2B, the B pairs
        image 1 -> image 2 first, then image 2 -> image 1.
    lookup: state, coords (B, 2, H, W) float32, x first -> (B, levels*(2r+1)^2, H, W) float32.
    responses: cell (x, y) of image `batch`'s correlation with all of image 2, per level.
    """

    @property
    def levels(self) -> int: ...

    @property
    def radius(self) -> int: ...

    def build(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> Any: ...

    def build_bidirectional(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> Any: ...

    def lookup(self, state: Any, coords: torch.Tensor) -> torch.Tensor: ...

    def responses(self, state: Any, batch: int, y: int, x: int) -> list[torch.Tensor]: ...


# References of the lookups ---------------------------------------------------------------------


def window_offsets(radius: int, device: torch.device | None = None) -> torch.Tensor:
    """(2r+1, 2r+1, 2) float32 (dx, dy) offsets in the published channel order.

    Window channel (2r+1) * i + j samples at (x + i - r, y + j - r): the horizontal offset is the
    slow index, i.e. the window is stored transposed with respect to image orientation. Trained
    weights depend on this order (published RAFT, core/corr.py: meshgrid(dy, dx) added to (x, y)).
    """
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    size = 2 * radius + 1
    dx = steps.view(size, 1).expand(size, size)
    dy = steps.view(1, size).expand(size, size)
    return torch.stack([dx, dy], dim=-1)


def sample_windows(maps: torch.Tensor, centres: torch.Tensor, radius: int) -> torch.Tensor:
    """Bilinear samples of `maps` on windows around `centres`, zero outside, as published.

    maps: (N, C, H_l, W_l); centres: (N, M, 2) pixel coordinates (x, y) of the maps.
    Returns (N, C, M, (2r+1)^2) in the published window order.
    """
    level_h, level_w = maps.shape[-2:]
    points = centres[:, :, None, :] + window_offsets(radius, centres.device).view(1, 1, -1, 2)
    x, y = points.unbind(dim=-1)
    # Pixel coordinates -> grid_sample's [-1, 1] with align_corners=True: pixel centres at the
    # ends, as published. Zero padding outside the map.
    grid = torch.stack([2 * x / (level_w - 1) - 1, 2 * y / (level_h - 1) - 1], dim=-1)
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def corr_lookup_ref(corr_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int) -> torch.Tensor:
    """Reference lookup.

    corr_pyramid: per level l, (B*H*W, 1, H >> l, W >> l): the correlation map of each 1/8 cell of
        image 1 against image 2, average-pooled l times (float32, float16 or bfloat16).
    coords: (B, 2, H, W) float32, x first, in level-0 cells: where each cell's window is centred.
    Returns (B, L*(2r+1)^2, H, W) float32 (float64 for float64 coords, the tests' judge): level-major,
    then the window in published order.
    """
    batch, _, height, width = coords.shape
    dtype = compute_dtype(coords)
    centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 2).to(dtype)
    windows = []
    for level, corr in enumerate(corr_pyramid):
        sampled = sample_windows(corr.to(dtype), centres / 2**level, radius)  # (BHW, 1, 1, K)
        windows.append(sampled.view(batch, height, width, -1))
    return torch.cat(windows, dim=-1).permute(0, 3, 1, 2).contiguous()


# On-demand correlation: level l of the published pyramid averages the all-pairs volume over
# 2^l x 2^l blocks of image 2. The volume is linear in fmap2, so that average equals the correlation
# with fmap2 average-pooled 2^l times: corr_l[p, q] = <fmap1[p], pool_l(fmap2)[q]> / sqrt(D). The
# on-demand lookup therefore computes, per cell and level, the dot products at the window's positions
# and interpolates them bilinearly: O(HW * D) memory instead of (HW)^2 * 4/3. The features are stored
# channels-last, (B, H, W, D), so that each position's vector is contiguous.

# The reference samples fmap2 at every window position of a chunk of cells at once: bound that
# (chunk x D x (2r+1)^2) intermediate.
REFERENCE_CHUNK_BYTES = 1 << 28


def pooled_pyramid(fmap2: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """fmap2 (B, D, H, W) -> per level (B, D, H >> l, W >> l), each the 2x2 average of the last
    (odd sizes floor), like the volume pyramid's pooling."""
    pyramid = [fmap2]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], kernel_size=2, stride=2))
    return pyramid


def corr_ondemand_ref(
    fmap1: torch.Tensor, fmap2_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int
) -> torch.Tensor:
    """Reference on-demand lookup.

    fmap1: (B, H, W, D) features of image 1, channels-last.
    fmap2_pyramid: per level l, (B, H >> l, W >> l, D): fmap2 average-pooled l times, channels-last.
    coords: (B, 2, H, W) float32, x first, in level-0 cells.
    Returns (B, L*(2r+1)^2, H, W) float32 (float64 for float64 coords), equal to `corr_lookup_ref`
    on the dense pyramid of the same features.
    """
    batch, height, width, dim = fmap1.shape
    dtype = compute_dtype(coords)
    cells = height * width
    window = (2 * radius + 1) ** 2
    centres = coords.permute(0, 2, 3, 1).reshape(batch, cells, 2).to(dtype)
    features1 = fmap1.reshape(batch, cells, dim).to(dtype)
    scale = correlation_scale(dim)  # after the product, as the published volume divides it
    chunk = max(1, REFERENCE_CHUNK_BYTES // (batch * dim * window * torch.finfo(dtype).bits // 8))
    levels = []
    for level, fmap2 in enumerate(fmap2_pyramid):
        maps = fmap2.permute(0, 3, 1, 2).to(dtype)  # (B, D, H_l, W_l) for grid_sample
        parts = []
        for start in range(0, cells, chunk):
            stop = min(start + chunk, cells)
            sampled = sample_windows(maps, centres[:, start:stop] / 2**level, radius)  # (B, D, n, K)
            parts.append(torch.einsum("bdnk,bnd->bnk", sampled, features1[:, start:stop]) / scale)
        levels.append(torch.cat(parts, dim=1))
    out = torch.cat(levels, dim=-1)  # (B, HW, L*K)
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


def corr_ondemand_gather(
    fmap1: torch.Tensor, fmap2_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int
) -> torch.Tensor:
    """The on-demand lookup in operators that every ONNX runtime has (Gather, MatMul, Floor, Where):
    the ONNX export's path. Same arguments and result as `corr_ondemand_ref`.

    The (2r+1)^2 bilinear samples of a window share a (2r+2)^2 grid of integer corners, the same
    fractional position inside every cell. So per level: gather, for each cell of image 1, the
    features of fmap2 at those corners, 2r+2 corners at a time ((B*H*W, 2r+2, D), 334 MB
    per gather at 1088x1920 in float32 where the whole grid would take 3.3 GB), contract the channels
    with fmap1's feature (MatMul), zero the corners outside the map, and blend neighbouring corners
    with the bilinear weights. Nothing is sized by the image twice over: no tensor has (HW)^2 elements,
    and no shape depends on the data, so the graph takes any size.
    """
    batch, height, width, dim = fmap1.shape
    dtype = compute_dtype(coords)
    cells = batch * height * width
    size = 2 * radius + 1
    features1 = fmap1.reshape(cells, dim, 1).to(dtype)
    scale = correlation_scale(dim)  # after the products, as the published volume divides them
    centres = coords.permute(0, 2, 3, 1).reshape(cells, 2).to(dtype)
    steps = torch.arange(-radius, radius + 2, device=coords.device)  # corner offsets, (2r+2,)
    # Which image each cell belongs to; arithmetic, as ONNX export of repeat_interleave breaks for a
    # dynamic batch (an Expand to a fixed shape).
    image = torch.arange(cells, device=coords.device) // (height * width)  # (cells,)
    levels = []
    for level, fmap2 in enumerate(fmap2_pyramid):
        _, level_h, level_w, _ = fmap2.shape
        table = fmap2.reshape(-1, dim).to(dtype)  # (B * H_l * W_l, D): one row per position
        position = centres / 2**level
        floor = torch.floor(position)
        fx, fy = (position - floor).view(cells, 2, 1, 1).unbind(1)  # the bilinear weights, (cells, 1, 1)
        # Corner columns x and rows y, (cells, 2r+2) each. Corners outside the map are read at the
        # border and zeroed afterwards, as grid_sample's zero padding does.
        x = floor[:, 0:1].long() + steps
        y = floor[:, 1:2].long() + steps
        inside = ((x >= 0) & (x < level_w))[:, :, None] & ((y >= 0) & (y < level_h))[:, None, :]
        rows = (image * level_h)[:, None] + y.clamp(0, level_h - 1)
        index = x.clamp(0, level_w - 1)[:, :, None] + rows[:, None, :] * level_w  # (cells, x corner, y corner)
        # One y corner at a time: gather the 2r+2 corners' features (cells, 2r+2, D) and contract the
        # channels with fmap1's feature (MatMul) -> (cells, 2r+2 x corners, 1).
        dots = [torch.matmul(F.embedding(column, table), features1) for column in index.unbind(2)]
        grid = torch.cat(dots, dim=2) / scale * inside.to(dtype)  # (cells, x corner, y corner)
        left = grid[:, :size, :size] * (1 - fy) + grid[:, :size, 1:] * fy
        right = grid[:, 1:, :size] * (1 - fy) + grid[:, 1:, 1:] * fy
        window = left * (1 - fx) + right * fx  # (cells, dx, dy): the published order, dx the slow index
        levels.append(window.reshape(cells, size * size))
    out = torch.cat(levels, dim=-1)  # (cells, L*K)
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


def correlation_scale(dim: int) -> float:
    """sqrt(D) as the published code divides by it, `torch.sqrt(torch.tensor(dim).float())`: the float32
    square root, as a Python number. Dividing by a number and by a 0-dim CPU tensor runs the same kernel
    (both are CPU scalars to PyTorch), so the quotients round alike; a number also stays a constant under
    torch.compile and torch.export instead of becoming a CPU tensor in the graph."""
    return float(torch.tensor(dim, dtype=torch.float32).sqrt())


def all_pairs_correlation(fmap1: torch.Tensor, fmap2: torch.Tensor) -> torch.Tensor:
    """fmap1, fmap2: (B, D, H, W) float32 -> (B*H*W, 1, H, W): <fmap1[p], fmap2[q]> / sqrt(D).

    The 1/sqrt(D) scale is the published one; trained weights expect it. As published, the product first
    and the division after, which rounds differently from scaling fmap1 first where sqrt(D) is not a power
    of two (RAFT-small's D = 128); in place, so that the volume exists once (dividing it out of place would
    hold two: 34 GB becoming 68 GB at 1088x1920, batch 8).
    """
    batch, dim, height, width = fmap1.shape
    corr = torch.matmul(fmap1.reshape(batch, dim, height * width).transpose(1, 2), fmap2.reshape(batch, dim, -1))
    corr.div_(correlation_scale(dim))
    return corr.view(batch * height * width, 1, height, width)


def pool_level(corr: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) -> (N, 1, h // 2, w // 2): the 2x2 average, in chunks of rows when N * h * w exceeds
    `POOL_CHUNK_ELEMENTS` (PyTorch's CUDA avg_pool2d refuses tensors of more than 2^31 - 1 elements,
    which the dense pyramid reaches at 1088x1920 from 9 pairs on)."""
    rows, _, height, width = corr.shape
    chunk = max(1, POOL_CHUNK_ELEMENTS // max(1, height * width))
    if rows <= chunk:
        return F.avg_pool2d(corr, kernel_size=2, stride=2)
    pooled = corr.new_empty(rows, 1, height // 2, width // 2)
    for start in range(0, rows, chunk):
        pooled[start : start + chunk] = F.avg_pool2d(corr[start : start + chunk], kernel_size=2, stride=2)
    return pooled


def correlation_pyramid(corr: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Level l is level l-1 average-pooled 2x2 over image 2's axes (odd sizes floor, as published)."""
    pyramid = [corr]
    for _ in range(levels - 1):
        corr = pool_level(corr)
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
    lookup_fn: Callable[..., torch.Tensor] = corr_lookup_ref

    def build(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
        fmap1, fmap2 = fmap1.float(), fmap2.float()
        if self.storage_dtype == torch.float32:
            corr = all_pairs_correlation(fmap1, fmap2)
        else:
            batch, _, height, width = fmap1.shape
            corr = torch.empty(batch, height * width, height * width, device=fmap1.device, dtype=self.storage_dtype)
            self._fill(corr, fmap1, fmap2)
            corr = corr.view(batch * height * width, 1, height, width)
        return correlation_pyramid(corr, self.levels)

    def build_bidirectional(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
        """Both directions from one product: the volume of image 2 -> image 1 is the transpose of image
        1 -> image 2's, copied beside it (2B volumes, as a batch of 2B pairs would take); each direction's
        pyramid pools over its own second image."""
        fmap1, fmap2 = fmap1.float(), fmap2.float()
        batch, _, height, width = fmap1.shape
        cells = height * width
        both = torch.empty(2 * batch, cells, cells, device=fmap1.device, dtype=self.storage_dtype)
        self._fill(both[:batch], fmap1, fmap2)
        both[batch:].copy_(both[:batch].transpose(1, 2))
        return correlation_pyramid(both.view(2 * batch * cells, 1, height, width), self.levels)

    def _fill(self, corr: torch.Tensor, fmap1: torch.Tensor, fmap2: torch.Tensor) -> None:
        """corr (B, HW, HW) <- <fmap1[p], fmap2[q]> / sqrt(D), in its storage dtype: float32 in one product
        (as `all_pairs_correlation`); half precision through float32 row chunks of at most
        BUILD_CHUNK_BYTES, so that the float32 volume never exists whole."""
        batch, dim, height, width = fmap1.shape
        cells = height * width
        features1 = fmap1.reshape(batch, dim, cells).transpose(1, 2)
        features2 = fmap2.reshape(batch, dim, cells)
        scale = correlation_scale(dim)
        if corr.dtype == torch.float32:
            torch.matmul(features1, features2, out=corr)
            corr.div_(scale)
            return
        rows = max(1, BUILD_CHUNK_BYTES // (4 * batch * cells))
        for start in range(0, cells, rows):
            block = torch.matmul(features1[:, start : start + rows], features2).div_(scale)
            corr[:, start : start + rows] = block.to(corr.dtype)

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
    dense path's numbers in O(HW * D) memory (see `corr_ondemand_ref`).

    lookup_fn: `corr_ondemand_ref` or the Triton `corr_ondemand`.
    """

    levels: int
    radius: int
    storage_dtype: torch.dtype = torch.float32
    lookup_fn: Callable[..., torch.Tensor] = corr_ondemand_ref

    def build(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        def channels_last(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).to(self.storage_dtype).contiguous()

        pyramid = [channels_last(level) for level in pooled_pyramid(fmap2.float(), self.levels)]
        return channels_last(fmap1.float()), pyramid

    def build_bidirectional(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Both directions as a batch of 2B: nothing to share but the feature maps themselves."""
        return self.build(torch.cat([fmap1, fmap2]), torch.cat([fmap2, fmap1]))

    def lookup(self, state: tuple[torch.Tensor, list[torch.Tensor]], coords: torch.Tensor) -> torch.Tensor:
        fmap1, fmap2_pyramid = state
        return self.lookup_fn(fmap1, fmap2_pyramid, coords, self.radius)

    def responses(
        self, state: tuple[torch.Tensor, list[torch.Tensor]], batch: int, y: int, x: int
    ) -> list[torch.Tensor]:
        """Cell (x, y) of image `batch`'s correlation with all of image 2, per level: (H >> l, W >> l)."""
        fmap1, fmap2_pyramid = state
        feature = fmap1[batch, y, x].float()
        scale = correlation_scale(fmap1.shape[-1])
        return [torch.einsum("hwd,d->hw", level[batch].float(), feature) / scale for level in fmap2_pyramid]
