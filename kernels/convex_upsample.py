"""Convex upsampling of a 1/8-resolution flow field by 8, with a learned mask (RAFT-large).

Each full-resolution pixel (8h + i, 8w + j) is a convex combination of 8x the flow at the 3x3
neighbourhood of cell (h, w), weighted by a softmax over 9 mask logits.

Published: unfold + view + softmax + multiply + sum + permute + reshape, several passes over a
(B, 2, 9, 8, 8, H, W) intermediate. Here: one pass, the softmax done online over the 9 neighbours.
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
    on_device,
    size_class,
)
from raft_engine.model.upsampling import FACTOR, bilinear_upsample_ref, convex_upsample_ref

# The PyTorch references live in the core (raft_engine.model.correlation / .upsampling), which needs no
# Triton; they are re-exported here beside their kernel.
__all__ = ["FACTOR", "bilinear_upsample_ref", "check_upsample_inputs", "convex_upsample", "convex_upsample_ref"]


def _upsample_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_W": 32})]
    # Compiled for sm_90 (tests/sm90.py), 2 warps spill at every block width, 32 cells need 8 warps
    # and 64 cells spill even with 8 (each cell holds 64 sub-pixels x 4 running values).
    sizes = [(8, 4), (8, 8), (16, 4), (16, 8), (32, 8)]
    return [triton.Config({"BLOCK_W": block}, num_warps=warps) for block, warps in sizes]


@triton.autotune(configs=_upsample_configs(), key=["size_bucket"])
@triton.jit
def _convex_upsample_kernel(
    flow,  # (B, 2, H, W) float32, any strides
    up_mask,  # (B, 576, H, W) float logits, any strides
    out,  # (B, 2, 8H, 8W) float32, contiguous
    height,
    width,
    size_bucket,  # size_class(B * H * W): for the autotuning key only
    stride_fb,
    stride_fc,
    stride_fh,
    stride_fw,
    stride_mb,
    stride_mc,
    stride_mh,
    stride_mw,
    BLOCK_W: tl.constexpr,
):
    # Program (b, h, block of w): the 8x8 output pixels of each cell, as (cell, 8 * i + j).
    row = tl.program_id(0).to(tl.int64)
    b = row // height
    h = row % height
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    w_ok = w < width
    sub = tl.arange(0, 64)  # 8 * i + j: sub-pixel row i, column j
    mask_cell = up_mask + b * stride_mb + h * stride_mh + w[:, None] * stride_mw + sub[None, :] * stride_mc

    running_max = tl.full((BLOCK_W, 64), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_W, 64), tl.float32)
    acc_u = tl.zeros((BLOCK_W, 64), tl.float32)
    acc_v = tl.zeros((BLOCK_W, 64), tl.float32)
    for k in tl.static_range(9):
        logit = tl.load(mask_cell + (k * 64) * stride_mc, mask=w_ok[:, None], other=0.0).to(tl.float32)
        # As a block, not a scalar: Triton's interpreter turns (block & scalar) masks into int32.
        nh = h + (k // 3 - 1) + tl.zeros((BLOCK_W,), tl.int64)
        nw = w + (k % 3 - 1)
        inside = w_ok & (nw >= 0) & (nw < width) & (nh >= 0) & (nh < height)  # unfold pads with zeros
        neighbour = flow + b * stride_fb + nh * stride_fh + nw * stride_fw
        u = 8.0 * tl.load(neighbour, mask=inside, other=0.0)
        v = 8.0 * tl.load(neighbour + stride_fc, mask=inside, other=0.0)
        new_max = tl.maximum(running_max, logit)
        rescale = tl.exp(running_max - new_max)
        weight = tl.exp(logit - new_max)
        total = total * rescale + weight
        acc_u = acc_u * rescale + weight * u[:, None]
        acc_v = acc_v * rescale + weight * v[:, None]
        running_max = new_max

    out_width = 8 * width
    pixel = (8 * h + sub[None, :] // 8) * out_width + 8 * w[:, None] + sub[None, :] % 8
    target = out + b * (2 * 8 * height * out_width) + pixel
    tl.store(target, acc_u / total, mask=w_ok[:, None])
    tl.store(target + 8 * height * out_width, acc_v / total, mask=w_ok[:, None])


def check_upsample_inputs(flow: torch.Tensor, up_mask: torch.Tensor) -> None:
    """Refuse inputs that `convex_upsample` cannot take, naming what is wrong.

    Args:
        flow: the flow to upsample, which must be (B, 2, H, W) float32.
        up_mask: its mask logits, which must be (B, 9*8*8, H, W) float32, float16 or bfloat16.

    Raises:
        InputError: a shape or dtype other than those, tensors on different devices, or CPU tensors without
            Triton's interpreter (TRITON_INTERPRET=1).
    """
    name = "convex_upsample"
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise InputError(f"{name}: flow must be (B, 2, H, W), got {tuple(flow.shape)}")
    if flow.dtype != torch.float32:
        raise InputError(f"{name}: flow must be float32, got {flow.dtype}")
    batch, _, height, width = flow.shape
    expected = (batch, 9 * FACTOR * FACTOR, height, width)
    if tuple(up_mask.shape) != expected:
        raise InputError(
            f"{name}: up_mask has shape {tuple(up_mask.shape)}, expected {expected} for flow {tuple(flow.shape)}"
        )
    if up_mask.dtype not in PYRAMID_DTYPES:
        raise InputError(f"{name}: up_mask must be one of {PYRAMID_DTYPES}, got {up_mask.dtype}")
    check_device(name, flow, up_mask)


@triton_op("raft_engine::convex_upsample", mutates_args=())
def convex_upsample(flow: torch.Tensor, up_mask: torch.Tensor) -> torch.Tensor:
    """Triton convex upsampling; same contract as `convex_upsample_ref`.

    Args:
        flow: (B, 2, H, W) float32, in 1/8-grid units.
        up_mask: (B, 9*8*8, H, W) logits (float32, float16 or bfloat16); channel k*64 + 8*i + j weighs
            neighbour k (row-major over the 3x3 neighbourhood, zero-padded at the border) for sub-pixel (i, j).

    Returns:
        (B, 2, 8H, 8W) float32 in full-resolution pixels.

    Raises:
        InputError: inputs that `check_upsample_inputs` refuses.
    """
    check_upsample_inputs(flow, up_mask)
    batch, _, height, width = flow.shape
    out = torch.empty(batch, 2, FACTOR * height, FACTOR * width, device=flow.device, dtype=torch.float32)

    def grid(meta):
        return (batch * height, triton.cdiv(width, meta["BLOCK_W"]))

    with on_device(flow):
        wrap_triton(_convex_upsample_kernel)[grid](
            flow,
            up_mask,
            out,
            height,
            width,
            size_class(batch * height * width),
            *flow.stride(),
            *up_mask.stride(),
        )
    return out
