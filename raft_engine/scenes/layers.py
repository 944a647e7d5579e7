"""What every generated scene is made of: layers (a texture, a shape and a pose) painted back to front,
their poses and projective maps, textures, rendering and the exact flow between two poses, and the
photometric changes between frames.

Seeds below `TRAINING_SEED_START` are held out: the training code never draws them.
"""

from __future__ import annotations

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
    """A generated image pair and its exact ground truth.

    Attributes:
        image1: (H, W, 3) uint8.
        image2: (H, W, 3) uint8.
        flow: (H, W, 2) float32, image 1 -> image 2, every pixel.
        seed: the seed the pair was generated from.
        occlusion: (H, W) bool, True where a pixel of image 1 is not seen in image 2 (`occlusion_between`);
            None when not given.
        flow_backward: the same as `flow`, from image 2 to image 1; None when not given.
        occlusion_backward: the same as `occlusion`, from image 2 to image 1; None when not given.
    """

    image1: np.ndarray
    image2: np.ndarray
    flow: np.ndarray
    seed: int
    occlusion: np.ndarray | None = None
    flow_backward: np.ndarray | None = None
    occlusion_backward: np.ndarray | None = None


@dataclass(frozen=True)
class Pose:
    """A layer's similarity from its canonical plane to the image.

    canonical c -> image p = centre + scale * R(angle) c, in pixels.

    Attributes:
        centre: (x, y), where the canonical origin lies in the image, in pixels.
        angle: the rotation R, in radians.
        scale: image pixels per canonical unit.
    """

    centre: tuple[float, float]
    angle: float
    scale: float

    def matrix(self) -> np.ndarray:
        """The linear part, scale * R(angle): a 2x2 float64 array."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return self.scale * np.array([[cos, -sin], [sin, cos]])

    def to_canonical(self, points: torch.Tensor) -> torch.Tensor:
        """Image points in canonical coordinates.

        Args:
            points: (2, ...) image x, y.

        Returns:
            (2, ...) canonical.
        """
        inverse = torch.from_numpy(np.linalg.inv(self.matrix())).float()
        shifted = points - torch.tensor(self.centre, dtype=torch.float32).view(2, *[1] * (points.ndim - 1))
        return _mix(inverse, shifted)

    def to_image(self, canonical: torch.Tensor) -> torch.Tensor:
        """Canonical points in image coordinates: centre + scale * R(angle) c.

        Args:
            canonical: (2, ...) canonical x, y.

        Returns:
            (2, ...) image x, y, in pixels.
        """
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
    """One layer of a scene: a texture, a shape and its pose in each of two frames.

    A scene's layers are painted back to front.

    Attributes:
        texture: (3, h, w) in 0..1, centred on the canonical origin, 1 texel per unit.
        shape: "full" (the background), "ellipse", "blob" or "box".
        shape_params: the shape's sizes in canonical units: () for "full"; (a, b) for "ellipse" (the
            semi-axes along u and v) and "box" (the half-sides); (r0, a_2, phi_2, a_3, phi_3, ...) for
            "blob", the star shape r(theta) = r0 (1 + sum a_k cos(k theta + phi_k)).
        pose1: the pose in frame 1 (a `Pose`, or a projective map in v2 scenes).
        pose2: the pose in frame 2.
    """

    texture: torch.Tensor  # (3, h, w) in 0..1, centred on the canonical origin, 1 texel per unit
    shape: str  # "full" (the background), "ellipse", "blob" or "box"
    shape_params: tuple[float, ...]
    pose1: Pose | Projective
    pose2: Pose | Projective

    def coverage(self, canonical: torch.Tensor) -> torch.Tensor:
        """Whether canonical points lie inside the layer's shape.

        Args:
            canonical: (2, ...) canonical u, v.

        Returns:
            (...) bool, True inside the shape (everywhere for "full").
        """
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
        """Bilinear texture lookup, mirrored beyond the texture.

        Args:
            canonical: (2, H, W) canonical u, v, 1 texel per unit.

        Returns:
            (3, H, W), the texture's colour there.
        """
        height, width = self.texture.shape[-2:]
        grid = torch.stack([canonical[0] / (width / 2), canonical[1] / (height / 2)], dim=-1)
        sampled = F.grid_sample(
            self.texture[None], grid[None], mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return sampled[0]


def pixel_grid(height: int, width: int, factor: int) -> torch.Tensor:
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
    """A random texture: a gradient, multi-scale noise and painted shapes, with flat areas sometimes.

    Args:
        rng: the random stream it draws from.
        height: H, in texels.
        width: W, in texels.

    Returns:
        (3, H, W) in 0..1.
    """
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


def random_motion(
    rng: np.random.Generator, pose: Pose, max_shift: float, max_angle: float, max_log_scale: float
) -> Pose:
    direction = rng.uniform(0, 2 * math.pi)
    magnitude = max_shift * rng.random() ** 1.3  # small motions more often than large ones
    centre = (pose.centre[0] + magnitude * math.cos(direction), pose.centre[1] + magnitude * math.sin(direction))
    angle = pose.angle + rng.uniform(-max_angle, max_angle)
    scale = pose.scale * math.exp(rng.uniform(-max_log_scale, max_log_scale))
    return Pose(centre, angle, scale)


def random_shape(rng: np.random.Generator, height: int, width: int) -> tuple[str, tuple[float, ...], int]:
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


def render_poses(layers: list[Layer], poses: Sequence[Pose | Projective], height: int, width: int) -> torch.Tensor:
    """(3, H, W) in 0..1: the layers, back to front, each at its pose."""
    points = pixel_grid(height, width, SUPERSAMPLING)
    image = torch.zeros(3, *points.shape[1:])
    for layer, pose in zip(layers, poses, strict=True):
        canonical = pose.to_canonical(points)
        inside = layer.coverage(canonical)
        image = torch.where(inside, layer.colour(canonical), image)
    return F.avg_pool2d(image[None], SUPERSAMPLING)[0]


def flow_between(
    layers: list[Layer],
    poses1: Sequence[Pose | Projective],
    poses2: Sequence[Pose | Projective],
    height: int,
    width: int,
) -> torch.Tensor:
    """(2, H, W): at each pixel centre of the frame at poses1, the motion to poses2 of the topmost
    layer there, occluded at poses2 or not."""
    points = pixel_grid(height, width, 1)
    flow = torch.zeros_like(points)
    for layer, pose1, pose2 in zip(layers, poses1, poses2, strict=True):
        canonical = pose1.to_canonical(points)
        inside = layer.coverage(canonical)
        flow = torch.where(inside, pose2.to_image(canonical) - points, flow)
    return flow


def occlusion_between(
    layers: list[Layer],
    poses1: Sequence[Pose | Projective],
    poses2: Sequence[Pose | Projective],
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Where the pixels of the frame at poses1 are occluded in the frame at poses2.

    Exact, from the scene itself: p belongs to the topmost layer there; its target q is where that layer
    carries p (the flow's target, in `dtype`). p is occluded where q leaves the frame (beyond its pixels'
    extent, -0.5 to W - 0.5 and -0.5 to H - 0.5), or where the layer seen at q at poses2, the topmost one
    whose shape covers q there, is another layer.

    Args:
        layers: the scene's layers, back to front.
        poses1: each layer's pose in the first frame.
        poses2: each layer's pose in the second frame.
        height: H, in pixels.
        width: W, in pixels.
        dtype: the dtype the targets q are computed in.

    Returns:
        (H, W) bool: True where the pixel centre p of the frame at poses1 is occluded in the frame at
        poses2.
    """
    points = pixel_grid(height, width, 1).to(dtype)
    own = torch.full((height, width), -1, dtype=torch.long)
    targets = torch.zeros_like(points)
    for index, (layer, pose1, pose2) in enumerate(zip(layers, poses1, poses2, strict=True)):
        canonical = pose1.to_canonical(points)
        inside = layer.coverage(canonical.float())
        own = torch.where(inside, index, own)
        targets = torch.where(inside, pose2.to_image(canonical), targets)
    seen = torch.full((height, width), -1, dtype=torch.long)
    for index, (layer, pose2) in enumerate(zip(layers, poses2, strict=True)):
        seen = torch.where(layer.coverage(pose2.to_canonical(targets).float()), index, seen)
    x, y = targets[0], targets[1]
    outside = (x < -0.5) | (x >= width - 0.5) | (y < -0.5) | (y >= height - 0.5)
    return outside | (seen != own)


def photometric_changes(rng: np.random.Generator, frames: list[torch.Tensor]) -> list[np.ndarray]:
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


def similarity(centre: tuple[float, float], angle: float, scale: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[scale * cos, -scale * sin, centre[0]], [scale * sin, scale * cos, centre[1]], [0, 0, 1.0]])
