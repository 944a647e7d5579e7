"""Windowed lookup in the correlation pyramid: the motion encoder's correlation input.

For every cell of the 1/8 grid and every pyramid level l, bilinearly sample the cell's correlation
map at level l on a (2r+1) x (2r+1) window of integer offsets around coords / 2^l, zero outside the
map, and stack the windows of all levels along channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def corr_lookup_ref(corr_pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int) -> torch.Tensor:
    """Reference lookup.

    corr_pyramid: per level, (B*H*W, 1, H_l, W_l) correlation maps of each 1/8 cell of image 1
        against image 2 at level l (average-pooled l times).
    coords: (B, 2, H, W) float32, x first, in level-0 cells: where each cell's window is centred.
    Returns (B, L*(2r+1)^2, H, W) float32: level-major, then the window in published order.
    """
    batch, _, height, width = coords.shape
    centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2).float()
    offsets = window_offsets(radius, coords.device).unsqueeze(0)
    windows = []
    for level, corr in enumerate(corr_pyramid):
        level_h, level_w = corr.shape[-2:]
        points = centres / 2**level + offsets
        # Pixel coordinates -> grid_sample's [-1, 1] with align_corners=True: pixel centres at the
        # ends, as published. Zero padding outside the map.
        x, y = points.unbind(dim=-1)
        grid = torch.stack([2 * x / (level_w - 1) - 1, 2 * y / (level_h - 1) - 1], dim=-1)
        sampled = F.grid_sample(corr.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        windows.append(sampled.view(batch, height, width, -1))
    return torch.cat(windows, dim=-1).permute(0, 3, 1, 2).contiguous()
