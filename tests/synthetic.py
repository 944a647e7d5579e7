"""Synthetic weights for the reference fixture (tests/data/README.md gives the rule)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
SEEDS = {"official": 7, "torchvision": 11}


def layout(name: str) -> dict[str, list[int]]:
    with open(DATA / "state_dict_layouts.json") as f:
        return json.load(f)[name]


def synthetic_state_dict(name: str) -> dict[str, torch.Tensor]:
    """name: official_small, official_large, torchvision_small or torchvision_large."""
    seed = SEEDS[name.split("_")[0]]
    state = {}
    for key, shape in layout(name).items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            value = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            value = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:
            value = torch.randn(shape, generator=g) * (1 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.05 * torch.randn(shape, generator=g)
        state[key] = value
    return state
