"""Warm start for the next pair of a sequence: the previous pair's 1/8 flow carried forward.

The flow of pair (t-1 -> t) lives on frame t-1's grid; pair (t -> t+1) starts on frame t's grid. The
published Sintel submission code therefore moves each vector to where it points (`forward_interpolate`
in its utils: every cell (x, y) lands at (x + u, y + v); landings outside the grid are dropped) and
gives every cell of the new grid the vector that landed nearest to it (SciPy's `griddata`, method
"nearest"). `forward_interpolate` here computes the same on the tensors' device, in torch: the nearest
landing of each cell by exact Euclidean distance, in chunks, with no CPU round trip and no SciPy.
"""

from __future__ import annotations

import torch

from raft_engine.errors import InputError

# Distances are computed for at most this many (cell, landing) pairs at once: 2^22 pairs, about 64 MiB
# of intermediates. The 1/8 grid of 1080p has 32,400 cells: about 1.05e9 pairs in 251 chunks.
CHUNK_PAIRS = 1 << 22


def forward_interpolate(flow_low: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flow on one frame's 1/8 grid, in cells, x first -> the same flow carried to the
    next frame's grid: each cell takes the vector that landed nearest to it. A pair whose vectors all
    land outside the grid gets zero flow (the published code would fail there)."""
    if flow_low.ndim != 4 or flow_low.shape[1] != 2:
        raise InputError(f"flow_low must be (B, 2, H, W), got {tuple(flow_low.shape)}")
    if not flow_low.dtype.is_floating_point:
        raise InputError(f"flow_low must be floating point, got {flow_low.dtype}")
    batch, _, height, width = flow_low.shape
    flow = flow_low.float()
    ys, xs = torch.meshgrid(
        torch.arange(height, device=flow.device, dtype=torch.float32),
        torch.arange(width, device=flow.device, dtype=torch.float32),
        indexing="ij",
    )
    cells = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # (HW, 2)
    carried = torch.zeros_like(flow)
    for b in range(batch):
        vectors = flow[b].reshape(2, -1).t()  # (HW, 2)
        landed = cells + vectors
        # As published: a landing counts when 0 < x < W and 0 < y < H.
        inside = (landed[:, 0] > 0) & (landed[:, 0] < width) & (landed[:, 1] > 0) & (landed[:, 1] < height)
        landed, vectors = landed[inside], vectors[inside]
        if landed.shape[0] == 0:
            continue
        nearest = _nearest(cells, landed)
        carried[b] = vectors[nearest].t().reshape(2, height, width)
    return carried


def _nearest(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of `points` (N, 2) for each of `queries` (M, 2), exact, in chunks."""
    rows = max(1, CHUNK_PAIRS // points.shape[0])
    found = []
    for start in range(0, queries.shape[0], rows):
        # Squared distances in float32 from differences (not the |a|^2 - 2ab + |b|^2 expansion, which
        # loses the sub-cell differences that decide the nearest landing).
        difference = queries[start : start + rows, None, :] - points[None, :, :]
        found.append(difference.square().sum(dim=-1).argmin(dim=1))
    return torch.cat(found)
