"""Pictures of a `FlowTrace`: PNG and GIF files and an index.html that shows them in order.

Pillow only. Sequential maps (correlation) go from dark blue to yellow, signed maps (features) from
blue through white to red, each normalised on its own.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from raft_engine.io import flow_to_color
from raft_engine.runtime.trace import FlowTrace, PixelTrace

_SEQUENTIAL = np.array([[20, 12, 60], [60, 40, 120], [35, 115, 140], [95, 195, 100], [250, 230, 40]], np.float64)
_DIVERGING = np.array([[60, 75, 190], [245, 245, 245], [180, 15, 40]], np.float64)
_MARKERS = [(255, 255, 255), (255, 60, 60), (60, 255, 60), (60, 160, 255), (255, 200, 0), (255, 0, 255)]


def _ramp(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    position = np.clip(values, 0, 1) * (len(anchors) - 1)
    low = np.minimum(np.floor(position).astype(int), len(anchors) - 2)
    frac = (position - low)[..., None]
    return ((1 - frac) * anchors[low] + frac * anchors[low + 1]).round().astype(np.uint8)


def sequential(values: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8, min..max of `values` over the colour ramp."""
    low, high = float(values.min()), float(values.max())
    return _ramp((values - low) / (high - low) if high > low else np.zeros_like(values), _SEQUENTIAL)


def diverging(values: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8, -max|v|..max|v| from blue through white to red."""
    scale = float(np.abs(values).max())
    return _ramp(0.5 + 0.5 * values / scale if scale > 0 else np.full_like(values, 0.5), _DIVERGING)


def _scale_for(height: int, width: int, target: int = 256) -> int:
    return max(1, target // max(1, min(height, width)))


def _enlarge(image: np.ndarray, factor: int) -> Image.Image:
    return Image.fromarray(image).resize((image.shape[1] * factor, image.shape[0] * factor), Image.Resampling.NEAREST)


def _mark(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, colour, label: str | None = None) -> None:
    draw.line([(x - size, y), (x + size, y)], fill=colour, width=2)
    draw.line([(x, y - size), (x, y + size)], fill=colour, width=2)
    draw.ellipse([x - size / 2, y - size / 2, x + size / 2, y + size / 2], outline=colour, width=2)
    if label:
        draw.text((x + size + 2, y - size - 2), label, fill=colour)


def channel_grid(features: torch.Tensor, count: int = 32, columns: int = 8) -> np.ndarray:
    """(1, C, H, W) -> a grid of the first `count` channels, each normalised on its own, 1 px gaps."""
    maps = features[0, :count].float().numpy()
    rows = -(-len(maps) // columns)
    height, width = maps.shape[1:]
    grid = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1, 3), 40, np.uint8)
    for index, values in enumerate(maps):
        r, c = divmod(index, columns)
        grid[r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width] = diverging(
            values
        )
    return grid


def _crop(values: np.ndarray, cx: float, cy: float, half: int) -> np.ndarray:
    """The (2 * half + 1)^2 cells around the cell nearest (cx, cy), NaN outside the map."""
    out = np.full((2 * half + 1, 2 * half + 1), np.nan)
    x0, y0 = int(round(cx)) - half, int(round(cy)) - half
    for r in range(2 * half + 1):
        for c in range(2 * half + 1):
            y, x = y0 + r, x0 + c
            if 0 <= y < values.shape[0] and 0 <= x < values.shape[1]:
                out[r, c] = values[y, x]
    return out


Section = tuple[str, list[tuple[str, str]]]  # (title, [(file name, caption)])


class _Files:
    """Saves pictures into one folder and remembers, in order, what it wrote."""

    def __init__(self, out: Path):
        self.out = out
        self.written: list[Path] = []

    def save(self, image: Image.Image, name: str, **kwargs) -> str:
        image.save(self.out / name, **kwargs)
        self.written.append(self.out / name)
        return name


def _input_and_flow(trace: FlowTrace, image1: np.ndarray, files: _Files) -> Section:
    """Image 1 and the final flow, with the test pixels marked."""
    flow_image = Image.fromarray(flow_to_color(trace.flow[0]))
    input_image = Image.fromarray(np.ascontiguousarray(image1)).convert("RGB")
    for image in (flow_image, input_image):
        draw = ImageDraw.Draw(image)
        for i, pixel in enumerate(trace.pixels):
            _mark(draw, *pixel.pixel, 7, _MARKERS[i % len(_MARKERS)], str(i + 1))
    return (
        "Input and flow",
        [
            (files.save(input_image, "image1.png"), "Image 1 with the test pixels."),
            (
                files.save(flow_image, "flow.png"),
                "The final flow (colour wheel: hue is direction, saturation magnitude).",
            ),
        ],
    )


def _response_frames(pixel: PixelTrace, level: int, response: np.ndarray, radius: int, colour) -> list[Image.Image]:
    """One frame per iteration: the response map, the correspondence's cross and the lookup window's box."""
    factor = _scale_for(*response.shape)
    frames = []
    for k, (cx, cy) in enumerate(pixel.correspondence):
        frame = _enlarge(sequential(response), factor).convert("RGB")
        draw = ImageDraw.Draw(frame)
        x, y = ((cx / 2**level) + 0.5) * factor, ((cy / 2**level) + 0.5) * factor
        half = (radius + 0.5) * factor
        draw.rectangle([x - half, y - half, x + half, y + half], outline=colour, width=1)
        _mark(draw, x, y, max(4, factor), colour)
        draw.text((4, 4), f"iteration {k}" if k < len(pixel.correspondence) - 1 else "final", fill=colour)
        frames.append(frame)
    return frames


def _response_maps(pixel: PixelTrace, i: int, radius: int, files: _Files) -> list[tuple[str, str]]:
    """Test pixel `i`: per level, a GIF of its correlation with image 2 over the iterations."""
    colour = _MARKERS[i % len(_MARKERS)]
    items = []
    for level, response in enumerate(pixel.response):
        frames = _response_frames(pixel, level, response, radius, colour)
        name = files.save(
            frames[0],
            f"pixel{i + 1}_level{level}.gif",
            save_all=True,
            append_images=frames[1:],
            duration=400,
            loop=0,
        )
        items.append(
            (
                name,
                f"Pixel {i + 1} ({pixel.pixel[0]:g}, {pixel.pixel[1]:g}), level {level}: its "
                f"correlation with all of image 2 ({response.shape[1]}x{response.shape[0]} cells); "
                "the cross is the correspondence at each iteration, the box the lookup window.",
            )
        )
    return items


def _window_pair(sheet: Image.Image, draw, pixel: PixelTrace, k: int, level: int, window, radius: int, corner) -> None:
    """Iteration k, level `level`: the zoomed response with the window's place, and the window, at `corner`."""
    cell, side, half = 12, 2 * radius + 1, radius + 2
    panel = (2 * half + 1) * cell
    left, top = corner
    cx, cy = pixel.correspondence[k]
    lx, ly = cx / 2**level, cy / 2**level
    zoom = _crop(pixel.response[level], lx, ly, half)
    values = np.r_[zoom[np.isfinite(zoom)], window.ravel()]
    low, high = values.min(), values.max()
    span = high - low if high > low else 1.0
    shown = _ramp(np.where(np.isfinite(zoom), (zoom - low) / span, 0), _SEQUENTIAL)
    shown[~np.isfinite(zoom)] = (90, 90, 90)  # outside image 2
    sheet.paste(_enlarge(shown, cell), (left, top))
    # Where the window lies on the zoomed response (centred on the sub-cell correspondence).
    wx = left + (half + 0.5 + lx - round(lx) - (radius + 0.5)) * cell
    wy = top + (half + 0.5 + ly - round(ly) - (radius + 0.5)) * cell
    draw.rectangle([wx, wy, wx + side * cell, wy + side * cell], outline=(255, 255, 255))
    sheet.paste(_enlarge(_ramp((window - low) / span, _SEQUENTIAL), cell), (left + panel + 10, top))


def _windows(pixel: PixelTrace, i: int, radius: int, files: _Files) -> tuple[str, str]:
    """Test pixel `i`: the zoomed response beside the window the update block read, per iteration and level."""
    cell = 12
    side = 2 * radius + 1
    half = radius + 2
    panel = (2 * half + 1) * cell
    block = panel + 10 + side * cell + 30
    width = len(pixel.response) * block + 40
    sheet = Image.new("RGB", (width, len(pixel.window) * (panel + 10) + 20), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for k, windows in enumerate(pixel.window):
        top = 20 + k * (panel + 10)
        for level, window in enumerate(windows):
            _window_pair(sheet, draw, pixel, k, level, window, radius, (level * block, top))
            if k == 0:
                draw.text((level * block, 4), f"level {level}: response | window", fill=(220, 220, 220))
        draw.text((width - 36, top), f"k={k}", fill=(220, 220, 220))
    return (
        files.save(sheet, f"pixel{i + 1}_windows.png"),
        f"Pixel {i + 1}: per iteration (rows) and level, the response map around the "
        f"correspondence ({2 * half + 1}x{2 * half + 1} cells) beside the bilinearly resampled "
        f"{side}x{side} window fed to the update block (same colour scale).",
    )


def _pixel(trace: FlowTrace, i: int, files: _Files) -> Section:
    """Test pixel `i`: its response maps over the iterations, then its lookup windows."""
    pixel = trace.pixels[i]
    items = _response_maps(pixel, i, trace.radius, files)
    items.append(_windows(pixel, i, trace.radius, files))
    return f"Pixel {i + 1}", items


def _feature_maps(trace: FlowTrace, files: _Files) -> Section:
    """The first 32 channels of the feature maps, the context features and the initial hidden state."""
    items = []
    for name, tensor, caption in (
        ("fmap1", trace.fmap1, "Feature map of image 1 (first 32 channels)."),
        ("fmap2", trace.fmap2, "Feature map of image 2 (first 32 channels)."),
        ("context", trace.context, "Context features (first 32 channels)."),
        ("hidden", trace.hidden, "Initial hidden state of the update block (first 32 channels)."),
    ):
        grid = channel_grid(tensor)
        factor = _scale_for(grid.shape[0], grid.shape[1], target=512)
        items.append((files.save(_enlarge(grid, factor), f"{name}.png"), caption))
    return "Feature maps", items


def _motion_features(trace: FlowTrace, files: _Files) -> Section:
    """The motion features over the iterations (GIF), and their mean magnitude per iteration (strip)."""
    grids = [channel_grid(motion, count=16) for motion in trace.motion_features]
    factor = _scale_for(grids[0].shape[0], grids[0].shape[1], target=256)
    frames = [_enlarge(g, factor) for g in grids]
    for k, frame in enumerate(frames):
        ImageDraw.Draw(frame).text((4, 4), f"iteration {k}", fill=(0, 0, 0))
    strip = np.concatenate([m[0].abs().mean(dim=0).numpy() for m in trace.motion_features], axis=1)
    return (
        "Motion features",
        [
            (
                files.save(frames[0], "motion.gif", save_all=True, append_images=frames[1:], duration=400, loop=0),
                "Motion features (first 16 channels) over the iterations.",
            ),
            (
                files.save(_enlarge(sequential(strip), max(1, 64 // strip.shape[0])), "motion_strip.png"),
                "Mean |motion feature| per iteration, left to right.",
            ),
        ],
    )


def _index_page(sections: list[Section]) -> str:
    """index.html: the sections in order, each picture with its caption."""
    body = []
    for title, items in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        for name, caption in items:
            body.append(
                f'<figure><img src="{html.escape(name)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>RAFT inspection</title><style>"
        "body{font-family:sans-serif;background:#111;color:#ddd;margin:2em}img{max-width:100%;"
        "image-rendering:pixelated}figure{margin:1em 0}</style></head><body><h1>RAFT inspection</h1>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(trace: FlowTrace, image1: np.ndarray, out_dir: str | Path) -> list[Path]:
    """Write the pictures of `trace` into `out_dir` -> the files written, index.html last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _Files(out)
    sections = [_input_and_flow(trace, image1, files)]
    sections += [_pixel(trace, i, files) for i in range(len(trace.pixels))]
    sections.append(_feature_maps(trace, files))
    sections.append(_motion_features(trace, files))
    (out / "index.html").write_text(_index_page(sections))
    return [*files.written, out / "index.html"]
