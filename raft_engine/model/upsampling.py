"""Upsampling parts of RAFT: the 1/8-resolution flow to the input resolution.

RAFT-large combines the 3x3 neighbourhood of each cell convexly, with weights predicted by the
update block (`convex_upsample_ref`); RAFT-small upsamples bilinearly (`bilinear_upsample_ref`).
The references here are the specification, the CPU path, the ONNX path and the oracle of the
Triton kernel in `raft_engine.kernels.convex_upsample`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from raft_engine.errors import InputError

FACTOR = 8


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """What the references compute in: float64 for float64 input (the tests' judge), else float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def convex_upsample_ref(flow: torch.Tensor, up_mask: torch.Tensor) -> torch.Tensor:
    """Reference convex upsampling.

    flow: (B, 2, H, W) float32, in 1/8-grid units.
    up_mask: (B, 9*8*8, H, W) logits; channel k*64 + 8*i + j weighs neighbour k (row-major over the
        3x3 neighbourhood, zero-padded at the border) for sub-pixel (i, j).
    Returns (B, 2, 8H, 8W) float32 (float64 for float64 flow) in full-resolution pixels.
    """
    batch, _, height, width = flow.shape
    dtype = compute_dtype(flow)
    weights = torch.softmax(up_mask.to(dtype).view(batch, 1, 9, FACTOR, FACTOR, height, width), dim=2)
    neighbours = F.unfold(FACTOR * flow.to(dtype), kernel_size=3, padding=1)
    neighbours = neighbours.view(batch, 2, 9, 1, 1, height, width)
    up = (weights * neighbours).sum(dim=2)  # (B, 2, i, j, H, W)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2, FACTOR * height, FACTOR * width)


def bilinear_upsample_ref(flow: torch.Tensor) -> torch.Tensor:
    """RAFT-small's upsampling: bilinear with align_corners=True, values scaled by 8."""
    batch, _, height, width = flow.shape
    size = (FACTOR * height, FACTOR * width)
    return FACTOR * F.interpolate(flow.to(compute_dtype(flow)), size=size, mode="bilinear", align_corners=True)


class Upsampler(Protocol):
    """(B, 2, H/8, W/8) flow in cells and the update block's mask (None without a mask head)
    -> (B, 2, H, W) flow in pixels."""

    def __call__(self, flow_low: torch.Tensor, up_mask: torch.Tensor | None) -> torch.Tensor: ...


@dataclass(frozen=True)
class ConvexUpsampler:
    """RAFT-large: convex combination of the 3x3 neighbourhood, weights from the update block's mask.
    upsample_fn: `convex_upsample_ref` or the Triton `convex_upsample`."""

    upsample_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = convex_upsample_ref

    def __call__(self, flow_low: torch.Tensor, up_mask: torch.Tensor | None) -> torch.Tensor:
        if up_mask is None:
            raise InputError("convex upsampling needs the mask of the update block; this model has no mask head")
        return self.upsample_fn(flow_low, up_mask)


@dataclass(frozen=True)
class BilinearUpsampler:
    """RAFT-small: bilinear x8 (align_corners=True), flow values scaled by 8."""

    def __call__(self, flow_low: torch.Tensor, up_mask: torch.Tensor | None) -> torch.Tensor:
        return bilinear_upsample_ref(flow_low)
