"""The photographs that v2 scenes cut textures from (scikit-image's sample images), and those held out
for measuring flow on real images."""

from __future__ import annotations

import numpy as np
import torch

PHOTO_SOURCE = "scikit-image sample images (skimage.data, bundled with the package; no download)"
# Photographs that v2 textures may be cut from. Never the held-out ones below.
TRAINING_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "text",
)
# Held out: what benchmarks/real_flow.py warps by known flows (and the Middlebury stereo pair).
HELD_OUT_PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")

_PHOTO_CACHE: dict[str, torch.Tensor] = {}


def load_photo(name: str) -> torch.Tensor:
    """A scikit-image sample photograph as (3, H, W) float32 in 0..1, decoded once.

    Grey photographs are repeated to 3 channels. Every call for a name returns the same tensor.

    Args:
        name: the name of a `skimage.data` image (those of `TRAINING_PHOTOS` and `HELD_OUT_PHOTOS`), or
            "motorcycle_left" or "motorcycle_right", the two views of the Middlebury stereo pair.

    Returns:
        (3, H, W) float32 in 0..1.
    """
    if name not in _PHOTO_CACHE:
        import skimage.data

        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _ = skimage.data.stereo_motorcycle()
            array = left if name == "motorcycle_left" else right
        else:
            array = getattr(skimage.data, name)()
        array = np.asarray(array)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        array = array[..., :3].astype(np.float32)
        if array.max() > 1.5:
            array = array / 255.0
        _PHOTO_CACHE[name] = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    return _PHOTO_CACHE[name]
