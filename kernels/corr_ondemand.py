"""On-demand correlation lookup: the dense lookup's numbers without the O((HW)^2) volume.

Level l of the published pyramid averages the all-pairs volume over 2^l x 2^l blocks of image 2.
The volume is linear in fmap2, so that average equals the correlation with fmap2 average-pooled
2^l times: corr_l[p, q] = <fmap1[p], pool_l(fmap2)[q]> / sqrt(D). The lookup therefore computes,
per cell and level, the dot products at the (2r+2)^2 integer positions around the window and
interpolates them bilinearly: O(HW * D) memory instead of (HW)^2 * 4/3.

The features are stored channels-last, (B, H, W, D), so that each position's vector is contiguous.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from raft_engine.errors import InputError
from raft_engine.kernels._triton import (
    PYRAMID_DTYPES,
    check_device,
    interpreting,
    level_base,
    level_centre,
    next_power_of_2,
    on_device,
    program_cells,
    size_class,
)
from raft_engine.kernels.corr_lookup import MAX_LEVELS
from raft_engine.model.correlation import REFERENCE_CHUNK_BYTES, corr_ondemand_ref, pooled_pyramid

# The PyTorch references live in the core (raft_engine.model.correlation / .upsampling), which needs no
# Triton; they are re-exported here beside their kernel.
__all__ = ["REFERENCE_CHUNK_BYTES", "check_ondemand_inputs", "corr_ondemand", "corr_ondemand_ref", "pooled_pyramid"]


def _ondemand_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_CELLS": 64, "BLOCK_DIM": 64})]
    # A program holds (cells, patch <= 128, block_dim) products. Compiled for sm_90 (tests/sm90.py),
    # 64 products per cell-block spill registers at radius 4 with 4 warps, not with 8.
    return [
        triton.Config({"BLOCK_CELLS": cells, "BLOCK_DIM": block_dim}, num_warps=warps)
        for cells in (1, 2, 4)
        for block_dim in (16, 32, 64)
        for warps in (4, 8)
        if cells * block_dim <= (32 if warps == 4 else 64)
    ]


@triton.autotune(configs=_ondemand_configs(), key=["NUM_LEVELS", "RADIUS", "dim", "size_bucket"])
@triton.jit
def _corr_ondemand_kernel(
    fmap1,  # (B, H, W, D) contiguous
    level0,
    level1,
    level2,
    level3,  # (B, H >> l, W >> l, D) contiguous; unused ones alias level0
    coords,  # (B, 2, H, W) float32, any strides
    out,  # (B, NUM_LEVELS * (2r+1)^2, H, W) float32, contiguous
    height,
    width,
    num_cells,  # B * H * W
    size_bucket,  # size_class(num_cells): for the autotuning key only
    scale,  # 1 / sqrt(D)
    stride_cb,
    stride_cc,
    stride_ch,
    stride_cw,
    dim: tl.constexpr,  # D: a compile-time loop bound (RAFT's are 128 and 256), never a 0-d array
    NUM_LEVELS: tl.constexpr,
    RADIUS: tl.constexpr,
    PATCH_PAD: tl.constexpr,  # (2r+2)^2 rounded up to a power of two
    WINDOW_PAD: tl.constexpr,  # (2r+1)^2 rounded up to a power of two
    BLOCK_CELLS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    SIDE: tl.constexpr = 2 * RADIUS + 1
    PATCH_SIDE: tl.constexpr = 2 * RADIUS + 2
    WINDOW: tl.constexpr = SIDE * SIDE
    cells, cell_ok, b, hw, coord_offset = program_cells(
        height, width, num_cells, stride_cb, stride_ch, stride_cw, BLOCK_CELLS
    )
    x = tl.load(coords + coord_offset, mask=cell_ok, other=0.0)
    y = tl.load(coords + coord_offset + stride_cc, mask=cell_ok, other=0.0)
    plane = height * width

    # The patch: the (2r+2)^2 integer positions that the window's bilinear taps touch,
    # column-major like the window (patch index = a * (2r+2) + c, a horizontal).
    p = tl.arange(0, PATCH_PAD)
    p_ok = p < PATCH_SIDE * PATCH_SIDE
    patch_x = (p // PATCH_SIDE - RADIUS)[None, :]
    patch_y = (p % PATCH_SIDE - RADIUS)[None, :]
    # Window position k = i * (2r+1) + j (i horizontal, the published order) and its 4 taps.
    k = tl.arange(0, WINDOW_PAD)
    k_ok = k < WINDOW
    tap00 = tl.where(k_ok, (k // SIDE) * PATCH_SIDE + k % SIDE, 0)
    tap00 = tap00[None, :] + tl.zeros((BLOCK_CELLS, WINDOW_PAD), tl.int32)
    d = tl.arange(0, BLOCK_DIM)
    features1 = fmap1 + cells[:, None] * dim
    out_cell = out + b[:, None] * (NUM_LEVELS * WINDOW * plane) + hw[:, None]

    for level in tl.static_range(NUM_LEVELS):
        base = level_base(level, level0, level1, level2, level3)
        level_h = height >> level
        level_w = width >> level
        x0, y0, fx, fy = level_centre(x, y, level, level_h, level_w, RADIUS)
        px = x0[:, None] + patch_x
        py = y0[:, None] + patch_y
        inside = cell_ok[:, None] & p_ok[None, :] & (px >= 0) & (px < level_w) & (py >= 0) & (py < level_h)
        rows = base + ((b[:, None] * level_h + py) * level_w + px) * dim  # (cells, patch) feature rows

        dots = tl.zeros((BLOCK_CELLS, PATCH_PAD), tl.float32)
        for start in range(0, dim, BLOCK_DIM):
            dd = start + d
            d_ok = dd < dim
            f1 = tl.load(features1 + dd[None, :], mask=cell_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            f2 = tl.load(
                rows[:, :, None] + dd[None, None, :], mask=inside[:, :, None] & d_ok[None, None, :], other=0.0
            ).to(tl.float32)
            dots += tl.sum(f2 * f1[:, None, :], axis=2)
        dots = dots * scale

        fx = fx[:, None]
        fy = fy[:, None]
        v00 = tl.gather(dots, tap00, axis=1)
        v10 = tl.gather(dots, tap00 + PATCH_SIDE, axis=1)
        v01 = tl.gather(dots, tap00 + 1, axis=1)
        v11 = tl.gather(dots, tap00 + PATCH_SIDE + 1, axis=1)
        value = (1 - fx) * (1 - fy) * v00 + fx * (1 - fy) * v10 + (1 - fx) * fy * v01 + fx * fy * v11
        tl.store(out_cell + (level * WINDOW + k[None, :]) * plane, value, mask=cell_ok[:, None] & k_ok[None, :])


def check_ondemand_inputs(
    fmap1: torch.Tensor, fmap2_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int
) -> None:
    """Refuse inputs that `corr_ondemand` cannot take, naming what is wrong.

    Args:
        fmap1: must be (B, H, W, D), channels-last and contiguous.
        fmap2_pyramid: 1 to 4 levels; level l must be (B, H >> l, W >> l, D), contiguous and not empty,
            of fmap1's dtype: float32, float16 or bfloat16.
        coords: must be (B, 2, H, W) float32.
        radius: must be a positive integer.

    Raises:
        InputError: inputs other than those, tensors on different devices, or CPU tensors without Triton's
            interpreter (TRITON_INTERPRET=1).
    """
    name = "corr_ondemand"
    if not 1 <= len(fmap2_pyramid) <= MAX_LEVELS:
        raise InputError(f"{name}: the kernel takes 1 to {MAX_LEVELS} pyramid levels, got {len(fmap2_pyramid)}")
    if not isinstance(radius, int) or radius < 1:
        raise InputError(f"{name}: radius must be a positive integer, got {radius!r}")
    if fmap1.ndim != 4:
        raise InputError(f"{name}: fmap1 must be (B, H, W, D) channels-last, got {tuple(fmap1.shape)}")
    batch, height, width, dim = fmap1.shape
    if tuple(coords.shape) != (batch, 2, height, width):
        raise InputError(
            f"{name}: coords has shape {tuple(coords.shape)}, expected {(batch, 2, height, width)} "
            f"for fmap1 {tuple(fmap1.shape)}"
        )
    if coords.dtype != torch.float32:
        raise InputError(f"{name}: coords must be float32, got {coords.dtype}")
    tensors = [fmap1, *fmap2_pyramid]
    if any(t.dtype != fmap1.dtype for t in tensors) or fmap1.dtype not in PYRAMID_DTYPES:
        raise InputError(f"{name}: features must share one dtype of {PYRAMID_DTYPES}, got {[t.dtype for t in tensors]}")
    for level, fmap2 in enumerate(fmap2_pyramid):
        expected = (batch, height >> level, width >> level, dim)
        if tuple(fmap2.shape) != expected:
            raise InputError(f"{name}: fmap2 level {level} has shape {tuple(fmap2.shape)}, expected {expected}")
        if min(expected[1:3]) < 1:
            raise InputError(f"{name}: fmap2 level {level} is empty: {expected}")
    if not all(t.is_contiguous() for t in tensors):
        raise InputError(f"{name}: fmap1 and the fmap2 levels must be contiguous (channels-last)")
    check_device(name, coords, *tensors)


@triton_op("raft_engine::corr_ondemand", mutates_args=())
def corr_ondemand(
    fmap1: torch.Tensor, fmap2_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int
) -> torch.Tensor:
    """Triton on-demand lookup; same contract as `corr_ondemand_ref`.

    Args:
        fmap1: (B, H, W, D) features of image 1, channels-last, contiguous.
        fmap2_pyramid: 1 to 4 levels; per level l, (B, H >> l, W >> l, D): fmap2 average-pooled l times,
            channels-last, contiguous, of fmap1's dtype (float32, float16 or bfloat16).
        coords: (B, 2, H, W) float32, x first, in level-0 cells: where each cell's window is centred.
        radius: the window's radius r: (2r+1) x (2r+1) integer offsets around the centre.

    Returns:
        (B, L*(2r+1)^2, H, W) float32, equal to `corr_lookup` on the dense pyramid of the same features.

    Raises:
        InputError: inputs that `check_ondemand_inputs` refuses.
    """
    check_ondemand_inputs(fmap1, fmap2_pyramid, coords, radius)
    batch, height, width, dim = fmap1.shape
    levels = len(fmap2_pyramid)
    out = torch.empty(batch, levels * (2 * radius + 1) ** 2, height, width, device=coords.device, dtype=torch.float32)
    padded = list(fmap2_pyramid) + [fmap2_pyramid[0]] * (MAX_LEVELS - levels)
    num_cells = batch * height * width

    def grid(meta):
        return (triton.cdiv(num_cells, meta["BLOCK_CELLS"]),)

    with on_device(coords):
        wrap_triton(_corr_ondemand_kernel)[grid](
            fmap1,
            *padded,
            coords,
            out,
            height,
            width,
            num_cells,
            size_class(num_cells),
            1.0 / math.sqrt(dim),
            *coords.stride(),
            dim=dim,
            NUM_LEVELS=levels,
            RADIUS=radius,
            PATCH_PAD=next_power_of_2((2 * radius + 2) ** 2),
            WINDOW_PAD=next_power_of_2((2 * radius + 1) ** 2),
        )
    return out
