"""Generated N-frame clips: every layer of a v1 scene follows a smooth trajectory (constant
acceleration, steady rotation and scaling), and the flow of each consecutive pair is exact."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    random_shape,
    render_poses,
)


@dataclass(frozen=True)
class Trajectory:
    """A smooth motion in frames t = 0, 1, ...: constant acceleration, steady rotation and scaling.

    Centre start + velocity t + acceleration t^2 / 2, angle start + spin t, scale start * exp(growth t).

    Attributes:
        start: the pose at t = 0.
        velocity: (x, y), px per frame.
        acceleration: (x, y), px per frame^2.
        spin: radians per frame.
        growth: log scale per frame.
    """

    start: Pose
    velocity: tuple[float, float]  # px per frame
    acceleration: tuple[float, float]  # px per frame^2
    spin: float  # radians per frame
    growth: float  # log scale per frame

    def pose(self, t: float) -> Pose:
        """The pose at time t.

        Args:
            t: the time, in frames from the start.

        Returns:
            The `Pose` at t.
        """
        (x, y), (vx, vy), (ax, ay) = self.start.centre, self.velocity, self.acceleration
        centre = (x + vx * t + 0.5 * ax * t * t, y + vy * t + 0.5 * ay * t * t)
        return Pose(centre, self.start.angle + self.spin * t, self.start.scale * math.exp(self.growth * t))


@dataclass(frozen=True)
class SceneSequence:
    """A generated N-frame clip and the exact flow of each consecutive pair.

    Attributes:
        frames: N (H, W, 3) uint8.
        flows: N - 1 (H, W, 2) float32; flows[t] maps every pixel of frame t to frame t + 1 (occluded
            there or not), like `ScenePair.flow`.
        seed: the seed the clip was generated from.
        occlusions: N - 1 (H, W) bool, where a pixel of frame t is not seen in frame t + 1
            (`ScenePair.occlusion`); () when not given.
    """

    frames: tuple[np.ndarray, ...]
    flows: tuple[np.ndarray, ...]
    seed: int
    occlusions: tuple[np.ndarray, ...] = ()

    def pair(self, t: int) -> ScenePair:
        """Frames t and t + 1, their flow and occlusion.

        Args:
            t: the first frame's index, 0 to N - 2.

        Returns:
            A `ScenePair`, without the backward flow and occlusion.
        """
        occlusion = self.occlusions[t] if self.occlusions else None
        return ScenePair(self.frames[t], self.frames[t + 1], self.flows[t], self.seed, occlusion)


def _trajectory(
    rng: np.random.Generator, start: Pose, max_speed: float, max_spin: float, max_growth: float
) -> Trajectory:
    direction = rng.uniform(0, 2 * math.pi)
    speed = max_speed * rng.random() ** 1.3  # slow motions more often than fast ones, as for pairs
    # Up to 5% of the largest speed per frame, in any direction: over 10 frames a path bends or the
    # speed changes by up to half the largest speed.
    turn = rng.uniform(0, 2 * math.pi)
    acceleration = 0.05 * max_speed * rng.random()
    return Trajectory(
        start=start,
        velocity=(speed * math.cos(direction), speed * math.sin(direction)),
        acceleration=(acceleration * math.cos(turn), acceleration * math.sin(turn)),
        spin=rng.uniform(-max_spin, max_spin),
        growth=rng.uniform(-max_growth, max_growth),
    )


def _moving_layers(
    rng: np.random.Generator, height: int, width: int, max_displacement: float
) -> tuple[list[Layer], list[Trajectory]]:
    """The layers of `_layers`, each with a trajectory instead of a second pose."""
    diagonal = math.hypot(height, width)
    # The camera pans slower than the objects move; beyond the texture the background is mirrored.
    background = _trajectory(
        rng, Pose((width / 2, height / 2), rng.uniform(-0.1, 0.1), 1.0), 0.4 * max_displacement, math.radians(1), 0.01
    )
    texture = make_texture(rng, int(diagonal * 1.2), int(diagonal * 1.2))
    layers = [Layer(texture, "full", (), background.pose(0), background.pose(1))]
    trajectories = [background]
    for _ in range(int(rng.integers(2, 9))):
        kind, params, extent = random_shape(rng, height, width)
        centre = (rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height)
        start = Pose(centre, rng.uniform(0, 2 * math.pi), 1.0)
        trajectory = _trajectory(rng, start, max_displacement, math.radians(4), 0.03)
        layers.append(Layer(make_texture(rng, extent, extent), kind, params, trajectory.pose(0), trajectory.pose(1)))
        trajectories.append(trajectory)
    return layers, trajectories


def generate_sequence(
    seed: int,
    frames: int = 8,
    height: int = 384,
    width: int = 512,
    max_displacement: float | None = None,
    photometric: bool = True,
) -> SceneSequence:
    """A clip of a scene whose background and objects move along smooth trajectories.

    `frames` frames and the exact flow of each consecutive pair. A function of the seed: the first k
    frames of a longer sequence are the k-frame sequence.

    Args:
        seed: the seed the clip is drawn from.
        frames: the number of frames, at least 2.
        height: in pixels, at least 16.
        width: in pixels, at least 16.
        max_displacement: the largest object speed in pixels per frame, by default 0.05 * width (26 px at
            512 wide); acceleration, rotation and scaling add to it.
        photometric: False leaves out the colour changes and sensor noise (the scene is the same).

    Returns:
        A `SceneSequence`, with the occlusions.

    Raises:
        InputError: fewer than 2 frames, or a size under 16x16.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise InputError(f"a sequence needs at least 2 frames, got {frames!r}")
    if height < 16 or width < 16:
        raise InputError(f"scene size must be at least 16x16, got {height}x{width}")
    if max_displacement is None:
        max_displacement = 0.05 * width
    rng = np.random.default_rng(seed)
    layers, trajectories = _moving_layers(rng, height, width, max_displacement)
    poses = [[trajectory.pose(t) for trajectory in trajectories] for t in range(frames)]
    rendered = [render_poses(layers, poses[t], height, width) for t in range(frames)]
    flows = tuple(
        flow_between(layers, poses[t], poses[t + 1], height, width).permute(1, 2, 0).numpy().astype(np.float32)
        for t in range(frames - 1)
    )
    occlusions = tuple(
        occlusion_between(layers, poses[t], poses[t + 1], height, width).numpy() for t in range(frames - 1)
    )
    if photometric:
        images = photometric_changes(rng, rendered)
    else:
        images = [(f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for f in rendered]
    return SceneSequence(tuple(images), flows, seed, occlusions)
