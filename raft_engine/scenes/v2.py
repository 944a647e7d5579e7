"""v2 scenes, closer to natural footage (`SceneStyle`): natural textures and photographs, thin
structures, many objects, large motions, a moving camera, objects entering and leaving, motion blur,
lighting, sensor noise and JPEG."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raft_engine.errors import InputError
from raft_engine.scenes.layers import (
    SUPERSAMPLING,
    Layer,
    Pose,
    Projective,
    ScenePair,
    make_texture,
    occlusion_between,
    photometric_changes,
    pixel_grid,
    random_motion,
    random_shape,
    similarity,
)
from raft_engine.scenes.photos import TRAINING_PHOTOS, load_photo

# The flow stays exact for every pixel of frame 1: each layer maps its canonical plane to the image
# at time t by a 3x3 projective matrix M(t) = C(t) A(t) (camera homography C, identity at t = 0, times
# the layer's own similarity A), so the flow at a pixel p of frame 1 is M(1) M(0)^-1 p - p of the
# topmost layer there. Motion blur: a frame is an exposure, the mean of sub-frames rendered at times
# spread around its instant (t = 0 for frame 1, t = 1 for frame 2); the flow still maps the instant
# of frame 1 to the instant of frame 2, i.e. the centres of the two exposures. Each ingredient draws
# from its own random stream (seeded by the pair's seed and the ingredient), so switching one off
# leaves the others' draws alone as far as the scene's structure allows.


@dataclass(frozen=True)
class SceneStyle:
    """Which ingredients a generated pair has. All off: v1, bit for bit.

    Attributes:
        natural_textures: 1/f-spectrum noise and dead-leaves textures.
        photos: textures cut from TRAINING_PHOTOS (never HELD_OUT_PHOTOS).
        thin: thin structures: sticks and wires 1-5 px across.
        many_objects: 4-20 objects, radii log-uniform over 3%-40% of the short side.
        large_motion: a third of the objects translate by up to 1.75x max_displacement.
        camera: a moving camera: a homography (pan, roll, zoom, tilt) instead of the background's motion.
        entering: a third of the objects start at the border, moving into or out of the frame.
        blur: motion blur: each frame, with probability 0.4, an exposure along the motion.
        lighting: exposure, white balance and a smooth illumination field change between frames.
        noise: signal-dependent (shot + read) sensor noise.
        jpeg: a JPEG round trip (PIL) at a random quality 30-95, with probability 0.6.
        wide_camera: a moving camera with a wider range (with or without `camera`): pans up to 1.5x
            max_displacement (the whole frame moving 50-130 px, as in real footage), roll up to 6 degrees,
            zoom up to +-12%, tilt 0.2 per frame size; the same draws as `camera`'s, rescaled.
    """

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
        """The v1 style: every ingredient off."""
        return cls()

    @classmethod
    def v2(cls) -> SceneStyle:
        """The v2 style: every ingredient on."""
        return cls(**{name: True for name in cls.__dataclass_fields__})

    @property
    def is_v1(self) -> bool:
        """Whether every ingredient is off: the pairs are v1's, bit for bit."""
        return not any(getattr(self, name) for name in self.__dataclass_fields__)

    def without(self, *names: str) -> SceneStyle:
        """This style with the named ingredients switched off.

        Args:
            *names: ingredients (fields), or groups of STYLE_GROUPS.

        Returns:
            A new `SceneStyle`.

        Raises:
            InputError: a name that is neither a field nor a group.
        """
        off: set[str] = set()
        for name in names:
            if name in STYLE_GROUPS:
                off.update(STYLE_GROUPS[name])
            elif name in self.__dataclass_fields__:
                off.add(name)
            else:
                known = sorted([*self.__dataclass_fields__, *STYLE_GROUPS])
                raise InputError(f"unknown scene ingredient {name!r}; expected one of {known}")
        return dataclasses.replace(self, **{name: False for name in off})

    @classmethod
    def parse(cls, scenes: str, without: str = "") -> SceneStyle:
        """The style of 'v1' or 'v2', minus a comma-separated list of ingredients or groups.

        Args:
            scenes: 'v1' or 'v2'.
            without: a comma-separated list of ingredients or groups of STYLE_GROUPS ('' for none).

        Returns:
            The `SceneStyle`.

        Raises:
            InputError: `scenes` is neither 'v1' nor 'v2', or a name is neither a field nor a group.
        """
        if scenes not in ("v1", "v2"):
            raise InputError(f"scenes must be 'v1' or 'v2', got {scenes!r}")
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
        return back @ similarity((0.0, 0.0), t * self.roll, math.exp(t * self.zoom)) @ perspective @ to_centre


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
        own = similarity(
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


def layers_v2(
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
    moved = random_motion(rng, start, 0.4 * max_displacement, math.radians(4), 0.06)
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
    objects = [random_shape(rng, height, width) for _ in range(count)]
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
    points = pixel_grid(height, width, factor)
    image = torch.zeros(3, *points.shape[1:])
    for layer, track in zip(layers, tracks, strict=True):
        canonical = track.at(t).to_canonical(points)
        inside = layer.coverage(canonical)
        if layer.shape == "full":
            image = layer.colour(canonical)
        elif bool(inside.any()):
            image[:, inside] = layer.colour(canonical[:, inside][:, None, :])[:, 0]
    return F.avg_pool2d(image[None], factor)[0] if factor > 1 else image


def _flow_tracks(
    layers: list[Layer], tracks: list[Track], height: int, width: int, backward: bool = False
) -> torch.Tensor:
    """(2, H, W) float64: at each pixel centre of frame 1, M(1) M(0)^-1 p - p of the topmost layer (with
    backward=True, of frame 2: M(0) M(1)^-1 p - p)."""
    start, end = (1.0, 0.0) if backward else (0.0, 1.0)
    points = pixel_grid(height, width, 1).double()
    flow = torch.zeros_like(points)
    for layer, track in zip(layers, tracks, strict=True):
        canonical = track.at(start).to_canonical(points)
        inside = layer.coverage(canonical.float())
        flow = torch.where(inside, track.at(end).to_image(canonical) - points, flow)
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
        images = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in photometric_changes(rng, frames)]
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


def generate_v2(
    seed: int, height: int, width: int, max_displacement: float, photometric: bool, style: SceneStyle
) -> ScenePair:
    layers, tracks = layers_v2(seed, style, height, width, max_displacement)
    flow = _flow_tracks(layers, tracks, height, width)
    frames = []
    blur = _stream(seed, "blur")
    speed = float(flow.norm(dim=0).max()) if style.blur else 0.0
    for t in (0.0, 1.0):
        blurred = _exposure(blur, layers, tracks, t, height, width, speed) if style.blur else None
        frames.append(_render_tracks(layers, tracks, t, height, width, SUPERSAMPLING) if blurred is None else blurred)
    image1, image2 = _finish_v2(seed, style, frames, photometric)
    poses1, poses2 = [track.at(0.0) for track in tracks], [track.at(1.0) for track in tracks]
    return ScenePair(
        image1,
        image2,
        flow.permute(1, 2, 0).numpy().astype(np.float32),
        seed,
        occlusion_between(layers, poses1, poses2, height, width, torch.float64).numpy(),
        _flow_tracks(layers, tracks, height, width, backward=True).permute(1, 2, 0).numpy().astype(np.float32),
        occlusion_between(layers, poses2, poses1, height, width, torch.float64).numpy(),
    )
