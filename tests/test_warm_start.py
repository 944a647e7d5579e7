"""forward_interpolate carries a 1/8 flow to the next frame's grid exactly as the published Sintel
submission code does (SciPy griddata, nearest landing), in torch on the tensors' device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import raft_engine.model.warm_start as warm_start
from raft_engine.model.warm_start import forward_interpolate


def published_forward_interpolate(flow: np.ndarray) -> np.ndarray:
    """The published definition (core/utils/utils.py), written out: SciPy's nearest-neighbour griddata."""
    from scipy import interpolate

    dx, dy = flow
    height, width = dx.shape
    x0, y0 = np.meshgrid(np.arange(width), np.arange(height))
    x1, y1 = (x0 + dx).reshape(-1), (y0 + dy).reshape(-1)
    valid = (x1 > 0) & (x1 < width) & (y1 > 0) & (y1 < height)
    points = (x1[valid], y1[valid])
    flow_x = interpolate.griddata(points, dx.reshape(-1)[valid], (x0, y0), method="nearest")
    flow_y = interpolate.griddata(points, dy.reshape(-1)[valid], (x0, y0), method="nearest")
    return np.stack([flow_x, flow_y]).astype(np.float32)


@pytest.mark.parametrize("size", [(9, 13), (17, 23), (32, 40)])
def test_equals_the_published_forward_interpolation(size):
    generator = torch.Generator().manual_seed(sum(size))
    # Smooth motion plus noise, large enough that many vectors leave the grid and others collide.
    flow = 2.5 * torch.randn(2, 2, *size, generator=generator) + torch.tensor([3.0, -1.5]).view(1, 2, 1, 1)
    carried = forward_interpolate(flow)
    assert carried.shape == flow.shape and carried.dtype == torch.float32
    for b in range(2):
        expected = published_forward_interpolate(flow[b].numpy())
        torch.testing.assert_close(carried[b], torch.from_numpy(expected), rtol=0, atol=0)
    assert not torch.equal(carried, flow)  # it moved the vectors


def test_chunked_search_equals_one_chunk(monkeypatch):
    flow = 4 * torch.randn(1, 2, 15, 21, generator=torch.Generator().manual_seed(1))
    whole = forward_interpolate(flow)
    monkeypatch.setattr(warm_start, "CHUNK_PAIRS", 50)  # a few cells per chunk
    torch.testing.assert_close(forward_interpolate(flow), whole, rtol=0, atol=0)


def test_a_constant_translation_stays_where_it_lands():
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0] = 2.0  # everything moves 2 cells right: the two left columns receive their neighbours'
    carried = forward_interpolate(flow)
    torch.testing.assert_close(carried, flow, rtol=0, atol=0)


def test_everything_leaving_the_grid_gives_zero_flow():
    flow = torch.full((1, 2, 6, 7), 100.0)
    assert torch.count_nonzero(forward_interpolate(flow)) == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        forward_interpolate(torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="floating point"):
        forward_interpolate(torch.zeros(1, 2, 5, 5, dtype=torch.int64))
