"""v1 scenes, the generator the built-in model was first trained on: a textured background and several
textured foreground objects, each moving by its own affine motion; and `generate_pair`, which makes a
pair of any style (v1, or v2 through `SceneStyle`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from raft_engine.errors import InputError
from raft_engine.scenes.layers import (
    Layer,
    Pose,
    ScenePair,
    flow_between,
    make_texture,
    occlusion_between,
    photometric_changes,
    random_motion,
    random_shape,
    render_poses,
)
from raft_engine.scenes.v2 import SceneStyle, generate_v2


def _layers(rng: np.random.Generator, height: int, width: int, max_displacement: float) -> list[Layer]:
    diagonal = math.hypot(height, width)
    # The background texture covers the frame under any of its poses; mirrored beyond that.
    background = Pose((width / 2, height / 2), rng.uniform(-0.1, 0.1), 1.0)
    layers = [
        Layer(
            texture=make_texture(rng, int(diagonal * 1.2), int(diagonal * 1.2)),
            shape="full",
            shape_params=(),
            pose1=background,
            pose2=random_motion(rng, background, 0.4 * max_displacement, math.radians(4), 0.06),
        )
    ]
    for _ in range(int(rng.integers(2, 9))):
        kind, params, extent = random_shape(rng, height, width)
        centre = (rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height)
        pose1 = Pose(centre, rng.uniform(0, 2 * math.pi), 1.0)
        pose2 = random_motion(rng, pose1, max_displacement, math.radians(12), 0.12)
        layers.append(Layer(make_texture(rng, extent, extent), kind, params, pose1, pose2))
    return layers


def _render(layers: list[Layer], frame: int, height: int, width: int) -> torch.Tensor:
    return render_poses(layers, [layer.pose1 if frame == 0 else layer.pose2 for layer in layers], height, width)


def _ground_truth_flow(layers: list[Layer], height: int, width: int) -> torch.Tensor:
    """(2, H, W): at each pixel centre of frame 1, the motion of the topmost layer there."""
    return flow_between(layers, [layer.pose1 for layer in layers], [layer.pose2 for layer in layers], height, width)


def scene_tensors(
    seeds, height: int, width: int, max_displacement: float | None = None, style: SceneStyle | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs of `seeds` as tensors, a batch of B pairs.

    Args:
        seeds: the seeds of the pairs, B ints.
        height: H, in pixels.
        width: W, in pixels.
        max_displacement: as `generate_pair` takes it.
        style: as `generate_pair` takes it.

    Returns:
        (image1, image2, flow): image1, image2 (B, 3, H, W) float32 in 0..255, flow (B, 2, H, W) float32.
    """
    pairs = [generate_pair(seed, height, width, max_displacement=max_displacement, style=style) for seed in seeds]

    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()

    return stack([p.image1 for p in pairs]), stack([p.image2 for p in pairs]), stack([p.flow for p in pairs])


def generate_pair(
    seed: int,
    height: int = 384,
    width: int = 512,
    max_displacement: float | None = None,
    photometric: bool = True,
    style: SceneStyle | None = None,
) -> ScenePair:
    """A pair and its exact flow.

    Args:
        seed: the seed the pair is drawn from.
        height: in pixels, at least 16.
        width: in pixels, at least 16.
        max_displacement: the largest object translation in pixels, by default 0.15 * width (77 px at 512
            wide); rotation and scale add to it near object edges.
        photometric: False leaves out the colour changes and sensor noise (the scene is the same; with a
            v2 style, also the lighting changes, the extra noise and JPEG stay as the style says).
        style: the ingredients (`SceneStyle`); None or SceneStyle.v1() is v1, the pairs as they always were.

    Returns:
        A `ScenePair`, with the occlusion and the backward flow and occlusion.

    Raises:
        InputError: a size under 16x16.
    """
    if height < 16 or width < 16:
        raise InputError(f"scene size must be at least 16x16, got {height}x{width}")
    if max_displacement is None:
        max_displacement = 0.15 * width
    if style is not None and not style.is_v1:
        return generate_v2(seed, height, width, max_displacement, photometric, style)
    rng = np.random.default_rng(seed)
    layers = _layers(rng, height, width, max_displacement)
    frames = [_render(layers, frame, height, width) for frame in (0, 1)]
    flow = _ground_truth_flow(layers, height, width)
    if photometric:
        image1, image2 = photometric_changes(rng, frames)
    else:
        image1, image2 = ((f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for f in frames)
    poses1, poses2 = [layer.pose1 for layer in layers], [layer.pose2 for layer in layers]
    return ScenePair(
        image1,
        image2,
        flow.permute(1, 2, 0).numpy().astype(np.float32),
        seed,
        occlusion_between(layers, poses1, poses2, height, width).numpy(),
        flow_between(layers, poses2, poses1, height, width).permute(1, 2, 0).numpy().astype(np.float32),
        occlusion_between(layers, poses2, poses1, height, width).numpy(),
    )
