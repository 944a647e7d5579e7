"""Generated training scenes: deterministic, exact flow, the displacements asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raft_engine.scenes import generate_pair


def _backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    height, width = flow.shape[:2]
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([(xs + flow[..., 0]) / (width - 1) * 2 - 1, (ys + flow[..., 1]) / (height - 1) * 2 - 1], -1)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    warped = F.grid_sample(tensor, torch.from_numpy(grid)[None].float(), align_corners=True)
    inside = (np.abs(grid) <= 1).all(axis=-1)
    return warped[0].permute(1, 2, 0).numpy(), inside


def test_deterministic_by_seed():
    a, b, c = generate_pair(5, 96, 128), generate_pair(5, 96, 128), generate_pair(6, 96, 128)
    for name in ("image1", "image2", "flow"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image1, c.image1)
    assert a.image1.shape == (96, 128, 3) and a.image1.dtype == np.uint8
    assert a.flow.shape == (96, 128, 2) and a.flow.dtype == np.float32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flow_maps_image1_onto_image2(seed):
    """Image 2 sampled at p + flow(p) reproduces image 1 but for occlusions and interpolation."""
    pair = generate_pair(seed, 120, 168, photometric=False)
    warped, inside = _backward_warp(pair.image2, pair.flow)
    error = np.abs(warped - pair.image1.astype(np.float32)).mean(axis=2)[inside]
    moving = np.linalg.norm(pair.flow, axis=2)[inside] > 2
    unwarped = np.abs(pair.image2.astype(np.float32) - pair.image1).mean(axis=2)[inside]
    assert np.median(error[moving]) < 0.2 * np.median(unwarped[moving])
    assert np.mean(error < 10) > 0.8
    # The same scene with its photometric changes: same flow.
    np.testing.assert_array_equal(generate_pair(seed, 120, 168).flow, pair.flow)


def test_displacements_reach_60_px_at_512_wide():
    largest = [np.linalg.norm(generate_pair(seed, 128, 512).flow, axis=2).max() for seed in range(12)]
    assert max(largest) > 60
    assert sum(m > 30 for m in largest) >= 4  # large motions are common, not a rarity


def test_too_small():
    with pytest.raises(ValueError, match="at least 16x16"):
        generate_pair(0, 8, 64)
