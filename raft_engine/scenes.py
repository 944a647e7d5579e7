"""Generated image pairs with exact ground-truth optical flow, deterministic by seed.

A scene is a textured background and several textured foreground objects, painted back to front.
Every layer moves by its own affine motion between the two frames (translation, rotation, scale;
the background too), so the flow of every pixel of frame 1 is known exactly: it is the motion of the
layer visible there, occluded in frame 2 or not. Textures mix multi-scale noise, gradients and
painted shapes; photometric changes and sensor noise vary per pair and slightly per frame.

`generate_sequence` makes N-frame clips of such scenes: every layer follows a smooth trajectory
(constant acceleration, steady rotation and scaling), and the flow of each consecutive pair is exact
in the same way.

Seeds below `TRAINING_SEED_START` are held out: the training code never draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TRAINING_SEED_START = 1_000_000
SUPERSAMPLING = 2  # colour and coverage are rendered at 2x and box-filtered: anti-aliased edges


@dataclass(frozen=True)
class ScenePair:
    """image1, image2: (H, W, 3) uint8. flow: (H, W, 2) float32, image 1 -> image 2, every pixel."""

    image1: np.ndarray
    image2: np.ndarray
    flow: np.ndarray
    seed: int


@dataclass(frozen=True)
class Pose:
    """canonical c -> image p = centre + scale * R(angle) c, in pixels."""

    centre: tuple[float, float]
    angle: float
    scale: float

    def matrix(self) -> np.ndarray:
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return self.scale * np.array([[cos, -sin], [sin, cos]])

    def to_canonical(self, points: torch.Tensor) -> torch.Tensor:
        """points: (2, ...) image x, y -> (2, ...) canonical."""
        inverse = torch.from_numpy(np.linalg.inv(self.matrix())).float()
        shifted = points - torch.tensor(self.centre, dtype=torch.float32).view(2, *[1] * (points.ndim - 1))
        return torch.einsum("ij,j...->i...", inverse, shifted)

    def to_image(self, canonical: torch.Tensor) -> torch.Tensor:
        forward = torch.from_numpy(self.matrix()).float()
        centre = torch.tensor(self.centre, dtype=torch.float32).view(2, *[1] * (canonical.ndim - 1))
        return torch.einsum("ij,j...->i...", forward, canonical) + centre


@dataclass(frozen=True)
class Layer:
    texture: torch.Tensor  # (3, h, w) in 0..1, centred on the canonical origin, 1 texel per unit
    shape: str  # "full" (the background), "ellipse", "blob" or "box"
    shape_params: tuple[float, ...]
    pose1: Pose
    pose2: Pose

    def coverage(self, canonical: torch.Tensor) -> torch.Tensor:
        u, v = canonical[0], canonical[1]
        if self.shape == "full":
            return torch.ones_like(u, dtype=torch.bool)
        if self.shape == "ellipse":
            a, b = self.shape_params
            return (u / a) ** 2 + (v / b) ** 2 <= 1
        if self.shape == "box":
            a, b = self.shape_params
            return (u.abs() <= a) & (v.abs() <= b)
        radius, *harmonics = self.shape_params  # star-shaped blob: r(theta) = r0 (1 + sum a_k cos(k theta + phi_k))
        theta = torch.atan2(v, u)
        boundary = torch.ones_like(theta)
        for k in range(len(harmonics) // 2):
            boundary = boundary + harmonics[2 * k] * torch.cos((k + 2) * theta + harmonics[2 * k + 1])
        return u**2 + v**2 <= (radius * boundary) ** 2

    def colour(self, canonical: torch.Tensor) -> torch.Tensor:
        """Bilinear texture lookup, mirrored beyond the texture -> (3, ...)."""
        height, width = self.texture.shape[-2:]
        grid = torch.stack([canonical[0] / (width / 2), canonical[1] / (height / 2)], dim=-1)
        sampled = F.grid_sample(
            self.texture[None], grid[None], mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return sampled[0]


def _pixel_grid(height: int, width: int, factor: int) -> torch.Tensor:
    """(2, H*f, W*f) x, y of the sub-pixel sample centres, in pixel units of the output image."""
    ys = (torch.arange(height * factor, dtype=torch.float32) + 0.5) / factor - 0.5
    xs = (torch.arange(width * factor, dtype=torch.float32) + 0.5) / factor - 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])


def _noise(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """Multi-scale coloured noise, (3, H, W), roughly zero-mean."""
    total = torch.zeros(3, height, width)
    octaves = rng.integers(3, 7)
    coarsest = rng.uniform(2, 8)
    mixing = torch.from_numpy(rng.normal(size=(3, 3)) * 0.5 + np.eye(3) * rng.uniform(0, 1)).float()
    for octave in range(octaves):
        cells = coarsest * 2.0**octave
        grid_h = max(2, int(round(cells * height / max(height, width))))
        grid_w = max(2, int(round(cells * width / max(height, width))))
        amplitude = rng.uniform(0.05, 0.35) * (0.5 + rng.random()) ** (octave * rng.uniform(-0.5, 0.8))
        values = torch.from_numpy(rng.normal(size=(3, grid_h, grid_w))).float()
        values = torch.einsum("ij,j...->i...", mixing, values)
        total += amplitude * F.interpolate(values[None], size=(height, width), mode="bicubic", align_corners=False)[0]
    return total


def _paint_shapes(rng: np.random.Generator, texture: torch.Tensor, count: int) -> None:
    _, height, width = texture.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    for _ in range(count):
        colour = torch.from_numpy(rng.random(3)).float().view(3, 1, 1)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(2, 0.25 * max(height, width)) * rng.random() ** 1.5 + 2
        kind = rng.integers(0, 3)
        if kind == 0:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= size**2
        elif kind == 1:
            angle = rng.uniform(0, math.pi)
            along = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
            across = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
            mask = (along.abs() <= size) & (across.abs() <= size * rng.uniform(0.1, 1.0))
        else:  # stripes
            angle = rng.uniform(0, math.pi)
            period = rng.uniform(3, 30)
            phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
            mask = (torch.frac(phase) < 0.5) & ((xs - cx) ** 2 + (ys - cy) ** 2 <= (3 * size) ** 2)
        alpha = rng.uniform(0.5, 1.0)
        texture[:, mask] = (1 - alpha) * texture[:, mask] + alpha * colour.view(3, 1)


def make_texture(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """(3, H, W) in 0..1: a gradient, multi-scale noise and painted shapes, with flat areas sometimes."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xs * math.cos(angle) + ys * math.sin(angle)) * rng.uniform(0, 0.6) + 0.5).clamp(0, 1)
    start, end = (torch.from_numpy(rng.random(3)).float().view(3, 1, 1) for _ in range(2))
    texture = start * (1 - ramp) + end * ramp
    texture = texture + _noise(rng, height, width) * rng.uniform(0.3, 1.2)
    _paint_shapes(rng, texture, int(rng.integers(0, 25)))
    if rng.random() < 0.5:  # fine grain
        texture = texture + 0.05 * rng.random() * torch.from_numpy(rng.normal(size=(3, height, width))).float()
    return texture.clamp(0, 1)


def _motion(rng: np.random.Generator, pose: Pose, max_shift: float, max_angle: float, max_log_scale: float) -> Pose:
    direction = rng.uniform(0, 2 * math.pi)
    magnitude = max_shift * rng.random() ** 1.3  # small motions more often than large ones
    centre = (pose.centre[0] + magnitude * math.cos(direction), pose.centre[1] + magnitude * math.sin(direction))
    angle = pose.angle + rng.uniform(-max_angle, max_angle)
    scale = pose.scale * math.exp(rng.uniform(-max_log_scale, max_log_scale))
    return Pose(centre, angle, scale)


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
            pose2=_motion(rng, background, 0.4 * max_displacement, math.radians(4), 0.06),
        )
    ]
    for _ in range(int(rng.integers(2, 9))):
        kind, params, extent = _object_shape(rng, height, width)
        centre = (rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height)
        pose1 = Pose(centre, rng.uniform(0, 2 * math.pi), 1.0)
        pose2 = _motion(rng, pose1, max_displacement, math.radians(12), 0.12)
        layers.append(Layer(make_texture(rng, extent, extent), kind, params, pose1, pose2))
    return layers


def _object_shape(rng: np.random.Generator, height: int, width: int) -> tuple[str, tuple[float, ...], int]:
    """A foreground object's outline -> (shape, shape_params, texture extent in texels)."""
    radius = min(height, width) * rng.uniform(0.06, 0.35)
    kind = ("ellipse", "blob", "box")[int(rng.integers(0, 3))]
    if kind == "blob":
        harmonics = []
        for _ in range(int(rng.integers(1, 4))):
            harmonics += [rng.uniform(-0.25, 0.25), rng.uniform(0, 2 * math.pi)]
        params = (radius, *harmonics)
    else:
        params = (radius, radius * rng.uniform(0.3, 1.0))
    return kind, params, int(2 * radius * 1.8) + 8


def _render(layers: list[Layer], frame: int, height: int, width: int) -> torch.Tensor:
    return _render_poses(layers, [layer.pose1 if frame == 0 else layer.pose2 for layer in layers], height, width)


def _render_poses(layers: list[Layer], poses: list[Pose], height: int, width: int) -> torch.Tensor:
    """(3, H, W) in 0..1: the layers, back to front, each at its pose."""
    points = _pixel_grid(height, width, SUPERSAMPLING)
    image = torch.zeros(3, *points.shape[1:])
    for layer, pose in zip(layers, poses, strict=True):
        canonical = pose.to_canonical(points)
        inside = layer.coverage(canonical)
        image = torch.where(inside, layer.colour(canonical), image)
    return F.avg_pool2d(image[None], SUPERSAMPLING)[0]


def _ground_truth_flow(layers: list[Layer], height: int, width: int) -> torch.Tensor:
    """(2, H, W): at each pixel centre of frame 1, the motion of the topmost layer there."""
    return _flow_between(layers, [layer.pose1 for layer in layers], [layer.pose2 for layer in layers], height, width)


def _flow_between(layers: list[Layer], poses1: list[Pose], poses2: list[Pose], height: int, width: int) -> torch.Tensor:
    """(2, H, W): at each pixel centre of the frame at poses1, the motion to poses2 of the topmost
    layer there, occluded at poses2 or not."""
    points = _pixel_grid(height, width, 1)
    flow = torch.zeros_like(points)
    for layer, pose1, pose2 in zip(layers, poses1, poses2, strict=True):
        canonical = pose1.to_canonical(points)
        inside = layer.coverage(canonical)
        flow = torch.where(inside, pose2.to_image(canonical) - points, flow)
    return flow


def _photometric(rng: np.random.Generator, frames: list[torch.Tensor]) -> list[np.ndarray]:
    contrast = rng.uniform(0.6, 1.3)
    brightness = rng.uniform(-0.12, 0.12)
    gamma = math.exp(rng.uniform(-0.4, 0.4))
    saturation = rng.uniform(0.4, 1.3)
    noise = rng.uniform(0, 0.025)
    out = []
    for frame in frames:
        gray = frame.mean(dim=0, keepdim=True)
        x = gray + saturation * (frame - gray)
        gain = torch.from_numpy(1 + rng.uniform(-0.03, 0.03, size=3)).float().view(3, 1, 1)
        x = (x - 0.5) * contrast * gain + 0.5 + brightness + rng.uniform(-0.02, 0.02)
        x = x.clamp(0, 1) ** gamma
        x = x + noise * torch.from_numpy(rng.normal(size=x.shape)).float()
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return out


def scene_tensors(
    seeds, height: int, width: int, max_displacement: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs of `seeds` as tensors: image1, image2 (B, 3, H, W) float32 in 0..255, flow (B, 2, H, W)."""
    pairs = [generate_pair(seed, height, width, max_displacement=max_displacement) for seed in seeds]

    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()

    return stack([p.image1 for p in pairs]), stack([p.image2 for p in pairs]), stack([p.flow for p in pairs])


def generate_pair(
    seed: int, height: int = 384, width: int = 512, max_displacement: float | None = None, photometric: bool = True
) -> ScenePair:
    """A pair and its exact flow. max_displacement: the largest object translation in pixels, by
    default 0.15 * width (77 px at 512 wide); rotation and scale add to it near object edges.
    photometric=False leaves out the colour changes and sensor noise (the scene is the same)."""
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    if max_displacement is None:
        max_displacement = 0.15 * width
    rng = np.random.default_rng(seed)
    layers = _layers(rng, height, width, max_displacement)
    frames = [_render(layers, frame, height, width) for frame in (0, 1)]
    flow = _ground_truth_flow(layers, height, width)
    if photometric:
        image1, image2 = _photometric(rng, frames)
    else:
        image1, image2 = ((f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for f in frames)
    return ScenePair(image1, image2, flow.permute(1, 2, 0).numpy().astype(np.float32), seed)


# ------------------------------------------------------------------------------------------------
# Sequences: every layer on a smooth trajectory.


@dataclass(frozen=True)
class Trajectory:
    """A smooth motion in frames t = 0, 1, ...: centre start + velocity t + acceleration t^2 / 2,
    angle start + spin t, scale start * exp(growth t)."""

    start: Pose
    velocity: tuple[float, float]  # px per frame
    acceleration: tuple[float, float]  # px per frame^2
    spin: float  # radians per frame
    growth: float  # log scale per frame

    def pose(self, t: float) -> Pose:
        (x, y), (vx, vy), (ax, ay) = self.start.centre, self.velocity, self.acceleration
        centre = (x + vx * t + 0.5 * ax * t * t, y + vy * t + 0.5 * ay * t * t)
        return Pose(centre, self.start.angle + self.spin * t, self.start.scale * math.exp(self.growth * t))


@dataclass(frozen=True)
class SceneSequence:
    """frames: N (H, W, 3) uint8. flows: N - 1 (H, W, 2) float32; flows[t] maps every pixel of frame t
    to frame t + 1 (occluded there or not), like `ScenePair.flow`."""

    frames: tuple[np.ndarray, ...]
    flows: tuple[np.ndarray, ...]
    seed: int

    def pair(self, t: int) -> ScenePair:
        """Frames t and t + 1 and their flow."""
        return ScenePair(self.frames[t], self.frames[t + 1], self.flows[t], self.seed)


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
        kind, params, extent = _object_shape(rng, height, width)
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
    """`frames` frames of a scene whose background and objects move along smooth trajectories, and the
    exact flow of each consecutive pair. max_displacement: the largest object speed in pixels per
    frame, by default 0.05 * width (26 px at 512 wide); acceleration, rotation and scaling add to it.
    A function of the seed: the first k frames of a longer sequence are the k-frame sequence.
    photometric=False leaves out the colour changes and sensor noise (the scene is the same)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames!r}")
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    if max_displacement is None:
        max_displacement = 0.05 * width
    rng = np.random.default_rng(seed)
    layers, trajectories = _moving_layers(rng, height, width, max_displacement)
    poses = [[trajectory.pose(t) for trajectory in trajectories] for t in range(frames)]
    rendered = [_render_poses(layers, poses[t], height, width) for t in range(frames)]
    flows = tuple(
        _flow_between(layers, poses[t], poses[t + 1], height, width).permute(1, 2, 0).numpy().astype(np.float32)
        for t in range(frames - 1)
    )
    if photometric:
        images = _photometric(rng, rendered)
    else:
        images = [(f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for f in rendered]
    return SceneSequence(tuple(images), flows, seed)
