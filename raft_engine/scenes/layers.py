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

import dataclasses
import math
from collections.abc import Sequence
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
        return _mix(inverse, shifted)

    def to_image(self, canonical: torch.Tensor) -> torch.Tensor:
        forward = torch.from_numpy(self.matrix()).float()
        centre = torch.tensor(self.centre, dtype=torch.float32).view(2, *[1] * (canonical.ndim - 1))
        return _mix(forward, canonical) + centre


def _mix(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """matrix (n, k) times values (k, ...) -> (n, ...), as elementwise products summed in order: the
    same bits on every CPU (a BLAS product's bits depend on the code path the library picks for the
    processor, and the generated pairs are pinned bit for bit)."""
    rows = []
    for i in range(matrix.shape[0]):
        total = matrix[i, 0] * values[0]
        for j in range(1, matrix.shape[1]):
            total = total + matrix[i, j] * values[j]
        rows.append(total)
    return torch.stack(rows)


@dataclass(frozen=True)
class Layer:
    texture: torch.Tensor  # (3, h, w) in 0..1, centred on the canonical origin, 1 texel per unit
    shape: str  # "full" (the background), "ellipse", "blob" or "box"
    shape_params: tuple[float, ...]
    pose1: Pose | Projective
    pose2: Pose | Projective

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
        values = _mix(mixing, values)
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


def _render_poses(layers: list[Layer], poses: Sequence[Pose | Projective], height: int, width: int) -> torch.Tensor:
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


def _flow_between(
    layers: list[Layer],
    poses1: Sequence[Pose | Projective],
    poses2: Sequence[Pose | Projective],
    height: int,
    width: int,
) -> torch.Tensor:
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
    seeds, height: int, width: int, max_displacement: float | None = None, style: SceneStyle | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs of `seeds` as tensors: image1, image2 (B, 3, H, W) float32 in 0..255, flow (B, 2, H, W)."""
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
    """A pair and its exact flow. max_displacement: the largest object translation in pixels, by
    default 0.15 * width (77 px at 512 wide); rotation and scale add to it near object edges.
    photometric=False leaves out the colour changes and sensor noise (the scene is the same; with a
    v2 style, also the lighting changes, the extra noise and JPEG stay as the style says).
    style: the ingredients (`SceneStyle`); None or SceneStyle.v1() is v1, the pairs as they always were."""
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    if max_displacement is None:
        max_displacement = 0.15 * width
    if style is not None and not style.is_v1:
        return _generate_v2(seed, height, width, max_displacement, photometric, style)
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


# ------------------------------------------------------------------------------------------------
# Scene styles: v1 (above, unchanged) and v2, closer to natural footage.
#
# v2 keeps v1's layered scenes (a background and textured objects painted back to front, each
# moving rigidly) and adds, one switch per ingredient so that an ablation can turn them off one at a
# time: textures with natural-image statistics (1/f noise, dead leaves, photographs), thin
# structures, many objects of many sizes, larger motions, a moving camera (a homography that moves
# every layer), objects entering and leaving the frame, motion blur, lighting changes between the
# frames, signal-dependent sensor noise and JPEG compression.
#
# The flow stays exact for every pixel of frame 1: each layer maps its canonical plane to the image
# at time t by a 3x3 projective matrix M(t) = C(t) A(t) (camera homography C, identity at t = 0, times
# the layer's own similarity A), so the flow at a pixel p of frame 1 is M(1) M(0)^-1 p - p of the
# topmost layer there. Motion blur: a frame is an exposure, the mean of sub-frames rendered at times
# spread around its instant (t = 0 for frame 1, t = 1 for frame 2); the flow still maps the instant
# of frame 1 to the instant of frame 2, i.e. the centres of the two exposures. Each ingredient draws
# from its own random stream (seeded by the pair's seed and the ingredient), so switching one off
# leaves the others' draws alone as far as the scene's structure allows.

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
    """A scikit-image sample photograph as (3, H, W) float32 in 0..1 (grey ones repeated), decoded once."""
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


@dataclass(frozen=True)
class SceneStyle:
    """Which ingredients a generated pair has. All off: v1, bit for bit."""

    natural_textures: bool = False  # 1/f-spectrum noise and dead-leaves textures
    photos: bool = False  # textures cut from TRAINING_PHOTOS (never HELD_OUT_PHOTOS)
    thin: bool = False  # thin structures: sticks and wires 1-5 px across
    many_objects: bool = False  # 4-20 objects, radii log-uniform over 3%-40% of the short side
    large_motion: bool = False  # a third of the objects translate by up to 1.75x max_displacement
    camera: bool = False  # a moving camera: a homography (pan, roll, zoom, tilt) instead of the background's motion
    entering: bool = False  # a third of the objects start at the border, moving into or out of the frame
    blur: bool = False  # motion blur: each frame, with probability 0.4, an exposure along the motion
    lighting: bool = False  # exposure, white balance and a smooth illumination field change between frames
    noise: bool = False  # signal-dependent (shot + read) sensor noise
    jpeg: bool = False  # a JPEG round trip (PIL) at a random quality 30-95, with probability 0.6
    # A moving camera with a wider range (with or without `camera`): pans up to 1.5x max_displacement
    # (the whole frame moving 50-130 px, as in real footage), roll up to 6 degrees, zoom up to +-12%,
    # tilt 0.2 per frame size; the same draws as `camera`'s, rescaled.
    wide_camera: bool = False

    @classmethod
    def v1(cls) -> SceneStyle:
        return cls()

    @classmethod
    def v2(cls) -> SceneStyle:
        return cls(**{name: True for name in cls.__dataclass_fields__})

    @property
    def is_v1(self) -> bool:
        return not any(getattr(self, name) for name in self.__dataclass_fields__)

    def without(self, *names: str) -> SceneStyle:
        """This style with the named ingredients (fields, or groups of STYLE_GROUPS) switched off."""
        off: set[str] = set()
        for name in names:
            if name in STYLE_GROUPS:
                off.update(STYLE_GROUPS[name])
            elif name in self.__dataclass_fields__:
                off.add(name)
            else:
                known = sorted([*self.__dataclass_fields__, *STYLE_GROUPS])
                raise ValueError(f"unknown scene ingredient {name!r}; expected one of {known}")
        return dataclasses.replace(self, **{name: False for name in off})

    @classmethod
    def parse(cls, scenes: str, without: str = "") -> SceneStyle:
        """'v1' or 'v2', minus a comma-separated list of ingredients or groups ('' for none)."""
        if scenes not in ("v1", "v2"):
            raise ValueError(f"scenes must be 'v1' or 'v2', got {scenes!r}")
        style = cls.v1() if scenes == "v1" else cls.v2()
        return style.without(*[name.strip() for name in without.split(",") if name.strip()])


# Groups of ingredients, for a leave-one-group-out ablation.
STYLE_GROUPS: dict[str, tuple[str, ...]] = {
    "textures": ("natural_textures", "photos"),
    "geometry": ("thin", "many_objects", "entering"),
    "motion": ("large_motion", "camera", "wide_camera"),
    "degradations": ("blur", "lighting", "noise", "jpeg"),
}
_STREAMS = {name: index + 1 for index, name in enumerate(SceneStyle.__dataclass_fields__)}


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[name]])


@dataclass(frozen=True)
class Projective:
    """canonical c -> image p ~ matrix @ (c, 1), a 3x3 homography (float64); Pose's interface."""

    matrix: np.ndarray

    def to_canonical(self, points: torch.Tensor) -> torch.Tensor:
        return _apply(np.linalg.inv(self.matrix), points)

    def to_image(self, canonical: torch.Tensor) -> torch.Tensor:
        return _apply(self.matrix, canonical)


def _apply(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """(2, ...) points through a 3x3 homography, in the points' dtype (float64 for the flow)."""
    m = torch.from_numpy(matrix).to(points.dtype)
    x, y = points[0], points[1]
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return torch.stack([(m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w])


def _similarity(centre: tuple[float, float], angle: float, scale: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[scale * cos, -scale * sin, centre[0]], [scale * sin, scale * cos, centre[1]], [0, 0, 1.0]])


@dataclass(frozen=True)
class Camera:
    """A camera motion as a homography about the image centre, C(t) for t in frame intervals:
    C(0) = I, C(1) the motion from frame 1 to frame 2; C(t) scales every parameter by t."""

    centre: tuple[float, float]
    shift: tuple[float, float] = (0.0, 0.0)  # px
    roll: float = 0.0  # radians
    zoom: float = 0.0  # log scale
    tilt: tuple[float, float] = (0.0, 0.0)  # perspective terms, per px

    def matrix(self, t: float) -> np.ndarray:
        cx, cy = self.centre
        to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
        back = np.array([[1, 0, cx + t * self.shift[0]], [0, 1, cy + t * self.shift[1]], [0, 0, 1.0]])
        perspective = np.array([[1, 0, 0], [0, 1, 0], [t * self.tilt[0], t * self.tilt[1], 1.0]])
        return back @ _similarity((0.0, 0.0), t * self.roll, math.exp(t * self.zoom)) @ perspective @ to_centre


@dataclass(frozen=True)
class Track:
    """A layer's motion: own similarity centre + t shift, angle + t spin, scale exp(t growth), seen
    through the camera: M(t) = C(t) A(t)."""

    start: Pose
    shift: tuple[float, float]
    spin: float
    growth: float
    camera: Camera | None

    def at(self, t: float) -> Projective:
        (x, y), (dx, dy) = self.start.centre, self.shift
        own = _similarity(
            (x + t * dx, y + t * dy), self.start.angle + t * self.spin, self.start.scale * math.exp(t * self.growth)
        )
        return Projective(own if self.camera is None else self.camera.matrix(t) @ own)


def _pink_noise(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """(3, H, W) in 0..1: coloured noise with an amplitude spectrum 1/f^beta, beta in 0.8..1.6."""
    beta = rng.uniform(0.8, 1.6)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    amplitude = radius**-beta
    amplitude[0, 0] = 0.0
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, size=amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append(field / (field.std() + 1e-12))
    mixing = rng.normal(size=(3, 3)) * 0.4 + np.eye(3) * rng.uniform(0.2, 1.0)
    noise = np.einsum("ij,jhw->ihw", mixing, np.stack(channels))
    base = rng.random(3)[:, None, None]
    out = base + noise * rng.uniform(0.08, 0.25)
    return torch.from_numpy(out.clip(0, 1)).float()


def _dead_leaves(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """(3, H, W) in 0..1: dead leaves, discs with radii distributed as r^-3 (scale invariant), each a
    flat colour with a slight gradient, the later ones on top."""
    image = np.empty((3, height, width), dtype=np.float32)
    image[:] = rng.random(3)[:, None, None]
    r_min, r_max = rng.uniform(1.5, 4), max(height, width) * rng.uniform(0.15, 0.5)
    count = int(rng.integers(150, 500))
    u = rng.random(count)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5  # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
    radii = np.sort(radii)[::-1]  # large leaves first: the small ones, painted later, stay visible
    centres = rng.random((count, 2)) * [width, height]
    colours = rng.random((count, 3)).astype(np.float32)
    slopes = rng.normal(size=(count, 2)).astype(np.float32) * 0.004
    for (cx, cy), r, colour, (sx, sy) in zip(centres, radii, colours, slopes, strict=True):
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        ys, xs = np.ogrid[y0:y1, x0:x1]
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        shade = 1 + sx * (xs - cx) + sy * (ys - cy)
        patch = image[:, y0:y1, x0:x1]
        patch[:, inside] = (colour[:, None, None] * shade)[:, inside] if inside.any() else patch[:, inside]
    return torch.from_numpy(image.clip(0, 1))


def _photo_texture(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """(3, H, W) in 0..1: a crop of a training photograph, rescaled by 0.5-1.5, maybe flipped; grey
    photographs get a random two-colour tint."""
    photo = load_photo(TRAINING_PHOTOS[int(rng.integers(len(TRAINING_PHOTOS)))])
    _, ph, pw = photo.shape
    scale = math.exp(rng.uniform(math.log(0.5), math.log(1.5)))
    crop_h, crop_w = min(ph, max(4, round(height / scale))), min(pw, max(4, round(width / scale)))
    y0, x0 = int(rng.integers(0, ph - crop_h + 1)), int(rng.integers(0, pw - crop_w + 1))
    crop = photo[:, y0 : y0 + crop_h, x0 : x0 + crop_w]
    texture = F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    if rng.random() < 0.5:
        texture = texture.flip(-1)
    if bool((photo[0] == photo[1]).all()):  # grey: tint
        dark, light = (torch.from_numpy(rng.random(3)).float().view(3, 1, 1) for _ in range(2))
        if rng.random() < 0.5:
            dark, light = dark * 0.3, 0.6 + 0.4 * light
        texture = dark + (light - dark) * texture
    return texture.clamp(0, 1)


def _texture_v2(rng: np.random.Generator, style: SceneStyle, height: int, width: int) -> torch.Tensor:
    kinds = ["v1"] + (["pink", "leaves"] if style.natural_textures else []) + (["photo"] * 2 if style.photos else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "pink":
        return _pink_noise(rng, height, width)
    if kind == "leaves":
        return _dead_leaves(rng, height, width)
    if kind == "photo":
        return _photo_texture(rng, height, width)
    return make_texture(rng, height, width)


def _layers_v2(
    seed: int, style: SceneStyle, height: int, width: int, max_displacement: float
) -> tuple[list[Layer], list[Track]]:
    rng = np.random.default_rng(seed)
    # Textures draw from streams of their own: the texture ingredients (and the textures) change no
    # motion or shape.
    textures = _stream(seed, "photos")
    diagonal = math.hypot(height, width)
    camera = None
    if style.camera or style.wide_camera:
        cam = _stream(seed, "camera")
        direction = cam.uniform(0, 2 * math.pi)
        # v2's draws, in v2's order, kept bit for bit; wide_camera rescales them (the same camera
        # directions and relative sizes, a wider range) and changes nothing else.
        pan = cam.random()
        roll, zoom = cam.uniform(-1, 1) * math.radians(2), cam.uniform(-0.05, 0.05)
        tilt = (cam.uniform(-0.06, 0.06), cam.uniform(-0.06, 0.06))
        magnitude = 0.4 * max_displacement * pan**1.3  # v1's background pan
        if style.wide_camera:
            magnitude = 1.5 * max_displacement * pan**0.8
            roll, zoom, tilt = roll * 3, zoom * 2.4, (tilt[0] * 10 / 3, tilt[1] * 10 / 3)
        camera = Camera(
            centre=(width / 2, height / 2),
            shift=(magnitude * math.cos(direction), magnitude * math.sin(direction)),
            roll=roll,
            zoom=zoom,
            tilt=(tilt[0] / width, tilt[1] / height),
        )
    # The background: as v1's, still (the camera moves it) when there is a camera. A larger texture when
    # the camera may zoom out or tilt, larger still when it pans across most of the frame.
    margin = 2.0 if style.wide_camera else 1.5 if style.camera else 1.2
    start = Pose((width / 2, height / 2), rng.uniform(-0.1, 0.1), 1.0)
    moved = _motion(rng, start, 0.4 * max_displacement, math.radians(4), 0.06)
    shift, spin, growth = (moved.centre[0] - start.centre[0], moved.centre[1] - start.centre[1]), 0.0, 0.0
    if camera is None:
        spin, growth = moved.angle - start.angle, math.log(moved.scale / start.scale)
    else:
        shift = (0.0, 0.0)
    tracks = [Track(start, shift, spin, growth, camera)]
    extent = int(diagonal * margin)
    layers = [Layer(_texture_v2(textures, style, extent, extent), "full", (), tracks[0].at(0.0), tracks[0].at(1.0))]

    count = int(rng.integers(2, 9))
    sizes = None
    if style.many_objects:
        many = _stream(seed, "many_objects")
        count = int(many.integers(4, 21))
        sizes = np.exp(many.uniform(math.log(0.03), math.log(0.4), size=count))
    objects = [_object_shape(rng, height, width) for _ in range(count)]
    if sizes is not None:
        objects = [
            _scaled_shape(kind, params, size * min(height, width))
            for (kind, params, _), size in zip(objects, sizes, strict=True)
        ]
    if style.thin:
        thin = _stream(seed, "thin")
        for _ in range(int(thin.integers(1, 7))):
            half_length = min(height, width) * thin.uniform(0.1, 0.6)
            half_width = thin.uniform(0.5, 2.5)
            objects.append(("box", (half_length, half_width), int(2 * half_length * 1.8) + 8))
        order = thin.permutation(len(objects))
        objects = [objects[i] for i in order]
    large = _stream(seed, "large_motion")
    entering = _stream(seed, "entering")
    texture_rng = _stream(seed, "natural_textures")
    for kind, params, texels in objects:
        centre = (rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height)
        angle0 = rng.uniform(0, 2 * math.pi)
        direction = rng.uniform(0, 2 * math.pi)
        magnitude = max_displacement * rng.random() ** 1.3
        spin = rng.uniform(-1, 1) * math.radians(12)
        growth = rng.uniform(-0.12, 0.12)
        if style.large_motion and large.random() < 1 / 3:  # beyond v1's largest, as often as small ones
            magnitude = max_displacement * large.uniform(0.5, 1.75)
        if style.entering and entering.random() < 1 / 3:
            centre, direction, magnitude = _crossing(entering, params[0], height, width, max_displacement)
        start = Pose(centre, angle0, 1.0)
        shift = (magnitude * math.cos(direction), magnitude * math.sin(direction))
        tracks.append(Track(start, shift, spin, growth, camera))
        texture = _texture_v2(texture_rng, style, texels, texels)
        layers.append(Layer(texture, kind, params, tracks[-1].at(0.0), tracks[-1].at(1.0)))
    return layers, tracks


def _scaled_shape(kind: str, params: tuple[float, ...], radius: float) -> tuple[str, tuple[float, ...], int]:
    """v1's outline, resized to `radius`."""
    factor = radius / params[0]
    if kind == "blob":
        params = (radius, *params[1:])
    else:
        params = (radius, params[1] * factor)
    return kind, params, int(2 * radius * 1.8) + 8


def _crossing(
    rng: np.random.Generator, radius: float, height: int, width: int, max_displacement: float
) -> tuple[tuple[float, float], float, float]:
    """An object that enters or leaves the frame: centre near a border, moving across it."""
    side = int(rng.integers(4))
    along = rng.uniform(0.1, 0.9)
    depth = rng.uniform(-0.8, 0.8) * radius  # > 0: inside the frame
    normal = (0.0, math.pi, 0.5 * math.pi, 1.5 * math.pi)[side]  # inward: from the left, right, top, bottom
    centre = [
        (depth, along * height),
        (width - depth, along * height),
        (along * width, depth),
        (along * width, height - depth),
    ][side]
    inward = rng.random() < 0.5
    direction = normal + (0 if inward else math.pi) + rng.uniform(-0.5, 0.5)
    magnitude = max_displacement * rng.uniform(0.2, 0.8)
    return (float(centre[0]), float(centre[1])), direction, magnitude


def _render_tracks(
    layers: list[Layer], tracks: list[Track], t: float, height: int, width: int, factor: int
) -> torch.Tensor:
    """(3, H, W): the layers at time t, back to front, sampled `factor` x `factor` per pixel and
    box-filtered; texture lookups only where a layer covers a sample."""
    points = _pixel_grid(height, width, factor)
    image = torch.zeros(3, *points.shape[1:])
    for layer, track in zip(layers, tracks, strict=True):
        canonical = track.at(t).to_canonical(points)
        inside = layer.coverage(canonical)
        if layer.shape == "full":
            image = layer.colour(canonical)
        elif bool(inside.any()):
            image[:, inside] = layer.colour(canonical[:, inside][:, None, :])[:, 0]
    return F.avg_pool2d(image[None], factor)[0] if factor > 1 else image


def _flow_tracks(layers: list[Layer], tracks: list[Track], height: int, width: int) -> torch.Tensor:
    """(2, H, W) float64: at each pixel centre of frame 1, M(1) M(0)^-1 p - p of the topmost layer."""
    points = _pixel_grid(height, width, 1).double()
    flow = torch.zeros_like(points)
    for layer, track in zip(layers, tracks, strict=True):
        canonical = track.at(0.0).to_canonical(points)
        inside = layer.coverage(canonical.float())
        flow = torch.where(inside, track.at(1.0).to_image(canonical) - points, flow)
    return flow


def _exposure(
    rng: np.random.Generator, layers: list[Layer], tracks: list[Track], t: float, height: int, width: int, speed: float
) -> torch.Tensor | None:
    """A motion-blurred frame at time t (the mean of sub-frames over an exposure of 0.1-0.5 frame
    intervals centred on t), or None (a sharp frame) with probability 0.6."""
    if rng.random() < 0.6:
        return None
    exposure = rng.uniform(0.1, 0.5)
    count = int(min(7, max(3, math.ceil(exposure * speed / 2))))  # sub-frames <= 2 px apart, up to 7
    times = t + exposure * (np.linspace(0, 1, count) - 0.5)
    return torch.stack([_render_tracks(layers, tracks, float(s), height, width, 1) for s in times]).mean(0)


def _illumination(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """(3, H, W) a smooth multiplicative light: a linear ramp and a soft spot, per-channel gains."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    angle = rng.uniform(0, 2 * math.pi)
    ramp = 1 + rng.uniform(0, 0.3) * (xs * math.cos(angle) + ys * math.sin(angle))
    cx, cy, r = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.3, 1.0)
    spot = rng.uniform(-0.25, 0.35) * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))
    gains = torch.from_numpy(math.exp(rng.uniform(-0.3, 0.3)) * (1 + rng.uniform(-0.06, 0.06, size=3))).float()
    return (ramp + spot).clamp(0.3, 2.0)[None] * gains.view(3, 1, 1)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB")).copy()


def _finish_v2(seed: int, style: SceneStyle, frames: list[torch.Tensor], photometric: bool) -> list[np.ndarray]:
    """Lighting, v1's photometric changes, sensor noise, quantisation and JPEG, in that order."""
    height, width = frames[0].shape[-2:]
    if style.lighting:
        light = _stream(seed, "lighting")
        if light.random() < 0.8:
            frames = [frame * _illumination(light, height, width) for frame in frames]
    if photometric:
        rng = np.random.default_rng([seed, 0])
        images = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in _photometric(rng, frames)]
    else:
        images = [f.clamp(0, 1) for f in frames]
    if style.noise:
        noise = _stream(seed, "noise")
        shot, read = noise.uniform(0, 0.004), noise.uniform(0, 0.0004)
        generator = torch.Generator().manual_seed(int(noise.integers(2**62)))
        images = [x + torch.sqrt(shot * x + read) * torch.randn(x.shape, generator=generator) for x in images]
    out = [(x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy() for x in images]
    if style.jpeg:
        jpeg = _stream(seed, "jpeg")
        if jpeg.random() < 0.6:
            quality = int(jpeg.integers(30, 96))
            out = [_jpeg(image, int(np.clip(quality + jpeg.integers(-5, 6), 5, 95))) for image in out]
    return out


def _generate_v2(
    seed: int, height: int, width: int, max_displacement: float, photometric: bool, style: SceneStyle
) -> ScenePair:
    layers, tracks = _layers_v2(seed, style, height, width, max_displacement)
    flow = _flow_tracks(layers, tracks, height, width)
    frames = []
    blur = _stream(seed, "blur")
    speed = float(flow.norm(dim=0).max()) if style.blur else 0.0
    for t in (0.0, 1.0):
        blurred = _exposure(blur, layers, tracks, t, height, width, speed) if style.blur else None
        frames.append(_render_tracks(layers, tracks, t, height, width, SUPERSAMPLING) if blurred is None else blurred)
    image1, image2 = _finish_v2(seed, style, frames, photometric)
    return ScenePair(image1, image2, flow.permute(1, 2, 0).numpy().astype(np.float32), seed)
