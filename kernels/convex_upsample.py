"""Convex upsampling of a 1/8-resolution flow field by 8, with a learned mask (RAFT-large).

Each full-resolution pixel (8h + i, 8w + j) is a convex combination of 8x the flow at the 3x3
neighbourhood of cell (h, w), weighted by a softmax over 9 mask logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 8


def convex_upsample_ref(flow: torch.Tensor, up_mask: torch.Tensor) -> torch.Tensor:
    """Reference convex upsampling.

    flow: (B, 2, H, W) float32, in 1/8-grid units.
    up_mask: (B, 9*8*8, H, W) logits; channel k*64 + 8*i + j weighs neighbour k (row-major over the
        3x3 neighbourhood, zero-padded at the border) for sub-pixel (i, j).
    Returns (B, 2, 8H, 8W) float32 in full-resolution pixels.
    """
    batch, _, height, width = flow.shape
    weights = torch.softmax(up_mask.float().view(batch, 1, 9, FACTOR, FACTOR, height, width), dim=2)
    neighbours = F.unfold(FACTOR * flow.float(), kernel_size=3, padding=1)
    neighbours = neighbours.view(batch, 2, 9, 1, 1, height, width)
    up = (weights * neighbours).sum(dim=2)  # (B, 2, i, j, H, W)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2, FACTOR * height, FACTOR * width)


def bilinear_upsample_ref(flow: torch.Tensor) -> torch.Tensor:
    """RAFT-small's upsampling: bilinear with align_corners=True, values scaled by 8."""
    batch, _, height, width = flow.shape
    size = (FACTOR * height, FACTOR * width)
    return FACTOR * F.interpolate(flow.float(), size=size, mode="bilinear", align_corners=True)
