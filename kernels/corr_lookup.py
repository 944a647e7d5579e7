"""Windowed lookup in the dense correlation pyramid: the motion encoder's correlation input.

For every cell of the 1/8 grid and every pyramid level l, bilinearly sample the cell's correlation
map at level l on a (2r+1) x (2r+1) window of integer offsets around coords / 2^l, zero outside the
map, and stack the windows of all levels along channels.

Published: 4 grid_sample calls, reshapes and a concat per iteration. Here: one launch for all levels,
writing the (B, L*(2r+1)^2, H, W) output in the published channel order.
"""

from __future__ import annotations

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
from raft_engine.model.correlation import corr_lookup_ref, sample_windows, window_offsets

# The PyTorch references live in the core (raft_engine.model.correlation / .upsampling), which needs no
# Triton; they are re-exported here beside their kernel.
__all__ = ["MAX_LEVELS", "check_lookup_inputs", "corr_lookup", "corr_lookup_ref", "sample_windows", "window_offsets"]

MAX_LEVELS = 4


def _lookup_configs() -> list[triton.Config]:
    if interpreting():  # few, large programs: the interpreter's cost is per program
        return [triton.Config({"BLOCK_CELLS": 64})]
    # Compiled for sm_90 (tests/sm90.py), 16 cells with fewer than 8 warps and 32 cells spill registers
    # at radius 4 (a window of 81 taps x 4 corners per cell): those are left out.
    sizes = [(4, 2), (4, 4), (4, 8), (8, 2), (8, 4), (8, 8), (16, 8)]
    return [triton.Config({"BLOCK_CELLS": cells}, num_warps=warps) for cells, warps in sizes]


@triton.autotune(configs=_lookup_configs(), key=["NUM_LEVELS", "RADIUS", "size_bucket"])
@triton.jit
def _corr_lookup_kernel(
    level0,
    level1,
    level2,
    level3,  # (B*H*W, H >> l, W >> l) contiguous; unused ones alias level0
    coords,  # (B, 2, H, W) float32, any strides
    out,  # (B, NUM_LEVELS * (2r+1)^2, H, W) float32, contiguous
    height,
    width,  # the 1/8 grid
    num_cells,  # B * H * W
    size_bucket,  # size_class(num_cells): for the autotuning key only
    stride_cb,
    stride_cc,
    stride_ch,
    stride_cw,
    NUM_LEVELS: tl.constexpr,
    RADIUS: tl.constexpr,
    WINDOW_PAD: tl.constexpr,  # (2r+1)^2 rounded up to a power of two
    BLOCK_CELLS: tl.constexpr,
):
    SIDE: tl.constexpr = 2 * RADIUS + 1
    WINDOW: tl.constexpr = SIDE * SIDE
    cells, cell_ok, b, hw, coord_offset = program_cells(
        height, width, num_cells, stride_cb, stride_ch, stride_cw, BLOCK_CELLS
    )
    x = tl.load(coords + coord_offset, mask=cell_ok, other=0.0)
    y = tl.load(coords + coord_offset + stride_cc, mask=cell_ok, other=0.0)
    plane = height * width
    k = tl.arange(0, WINDOW_PAD)
    k_ok = k < WINDOW
    dx = (k // SIDE - RADIUS)[None, :]  # horizontal offset: the slow index (published order)
    dy = (k % SIDE - RADIUS)[None, :]
    ok = cell_ok[:, None] & k_ok[None, :]
    out_cell = out + b[:, None] * (NUM_LEVELS * WINDOW * plane) + hw[:, None]

    for level in tl.static_range(NUM_LEVELS):
        base = level_base(level, level0, level1, level2, level3)
        level_h = height >> level
        level_w = width >> level
        x0, y0, fx, fy = level_centre(x, y, level, level_h, level_w, RADIUS)
        fx = fx[:, None]
        fy = fy[:, None]
        px = x0[:, None] + dx
        py = y0[:, None] + dy
        in_x0 = (px >= 0) & (px < level_w)
        in_x1 = (px >= -1) & (px < level_w - 1)
        in_y0 = (py >= 0) & (py < level_h)
        in_y1 = (py >= -1) & (py < level_h - 1)
        corr = base + cells[:, None] * (level_h * level_w) + py * level_w + px
        v00 = tl.load(corr, mask=ok & in_x0 & in_y0, other=0.0).to(tl.float32)
        v10 = tl.load(corr + 1, mask=ok & in_x1 & in_y0, other=0.0).to(tl.float32)
        v01 = tl.load(corr + level_w, mask=ok & in_x0 & in_y1, other=0.0).to(tl.float32)
        v11 = tl.load(corr + level_w + 1, mask=ok & in_x1 & in_y1, other=0.0).to(tl.float32)
        value = (1 - fx) * (1 - fy) * v00 + fx * (1 - fy) * v10 + (1 - fx) * fy * v01 + fx * fy * v11
        tl.store(out_cell + (level * WINDOW + k[None, :]) * plane, value, mask=ok)


def check_lookup_inputs(corr_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int) -> None:
    """Refuse inputs that `corr_lookup` cannot take, naming what is wrong.

    Args:
        corr_pyramid: 1 to 4 levels; level l must be (B*H*W, 1, H >> l, W >> l), contiguous and not empty,
            all levels of one dtype: float32, float16 or bfloat16.
        coords: must be (B, 2, H, W) float32.
        radius: must be a positive integer.

    Raises:
        InputError: inputs other than those, tensors on different devices, or CPU tensors without Triton's
            interpreter (TRITON_INTERPRET=1).
    """
    name = "corr_lookup"
    if not 1 <= len(corr_pyramid) <= MAX_LEVELS:
        raise InputError(f"{name}: the kernel takes 1 to {MAX_LEVELS} pyramid levels, got {len(corr_pyramid)}")
    if coords.ndim != 4 or coords.shape[1] != 2:
        raise InputError(f"{name}: coords must be (B, 2, H, W), got {tuple(coords.shape)}")
    if coords.dtype != torch.float32:
        raise InputError(f"{name}: coords must be float32, got {coords.dtype}")
    if not isinstance(radius, int) or radius < 1:
        raise InputError(f"{name}: radius must be a positive integer, got {radius!r}")
    batch, _, height, width = coords.shape
    for level, corr in enumerate(corr_pyramid):
        expected = (batch * height * width, 1, height >> level, width >> level)
        if tuple(corr.shape) != expected:
            raise InputError(
                f"{name}: pyramid level {level} has shape {tuple(corr.shape)}, expected {expected} for coords "
                f"{tuple(coords.shape)}"
            )
        if corr.dtype not in PYRAMID_DTYPES or corr.dtype != corr_pyramid[0].dtype:
            raise InputError(
                f"{name}: pyramid levels must share one dtype of {PYRAMID_DTYPES}, "
                f"got {[c.dtype for c in corr_pyramid]}"
            )
        if not corr.is_contiguous():
            raise InputError(f"{name}: pyramid level {level} must be contiguous")
        if min(corr.shape[-2:]) < 1:
            raise InputError(f"{name}: pyramid level {level} is empty: {tuple(corr.shape)}")
    check_device(name, coords, *corr_pyramid)


@triton_op("raft_engine::corr_lookup", mutates_args=())
def corr_lookup(corr_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int) -> torch.Tensor:
    """Triton lookup; same contract as `corr_lookup_ref`.

    Args:
        corr_pyramid: 1 to 4 levels; per level l, (B*H*W, 1, H >> l, W >> l), contiguous: the correlation map
            of each 1/8 cell of image 1 against image 2, average-pooled l times (float32, float16 or bfloat16).
        coords: (B, 2, H, W) float32, x first, in level-0 cells: where each cell's window is centred.
        radius: the window's radius r: (2r+1) x (2r+1) integer offsets around the centre.

    Returns:
        (B, L*(2r+1)^2, H, W) float32: level-major, then the window in published order.

    Raises:
        InputError: inputs that `check_lookup_inputs` refuses.
    """
    check_lookup_inputs(corr_pyramid, coords, radius)
    batch, _, height, width = coords.shape
    levels = len(corr_pyramid)
    out = torch.empty(batch, levels * (2 * radius + 1) ** 2, height, width, device=coords.device, dtype=torch.float32)
    padded = list(corr_pyramid) + [corr_pyramid[0]] * (MAX_LEVELS - levels)
    num_cells = batch * height * width

    def grid(meta):
        return (triton.cdiv(num_cells, meta["BLOCK_CELLS"]),)

    with on_device(coords):
        wrap_triton(_corr_lookup_kernel)[grid](
            *padded,
            coords,
            out,
            height,
            width,
            num_cells,
            size_class(num_cells),
            *coords.stride(),
            NUM_LEVELS=levels,
            RADIUS=radius,
            WINDOW_PAD=next_power_of_2((2 * radius + 1) ** 2),
        )
    return out
