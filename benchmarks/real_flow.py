"""Optical flow on real images: our RAFT models against OpenCV's DIS (preset medium) and Farneback.

One run, three measures, every method on the same inputs:

(a) photos: held-out photographs (scikit-image's sample images that training never draws,
    `raft_engine.scenes.HELD_OUT_PHOTOS`) warped by known flows: an affine motion, a homography, and a
    piecewise motion (a background homography and three pieces cut from the photos, each moving
    rigidly, occluding and disoccluding). Frame 1 is the photograph's own pixels (the pieces pasted at
    integer offsets); frame 2 samples the photographs through the inverse motions (bicubic), so the
    flow of every pixel of frame 1 is exact. EPE (px) and the 3 px outlier rate (fraction of pixels
    with end-point error > 3 px) over the pixels visible in both frames ("noc": the target is inside
    frame 2 and not covered there by another layer), and EPE over all pixels ("all"). Mean over the
    pairs. Also, as real ground truth, the Middlebury 2014 stereo pair scikit-image ships
    (motorcycle_left/right, downsampled 4x with its disparity): flow left -> right = (-d, 0) where d is
    finite (Middlebury's convention x_right = x_left - d, checked below: see `stereo_pair`).
(b) sintel: consecutive pairs of the Sintel demo frames (default ../shared/data/sintel_demo, read in
    place); no ground truth, so the photometric error: the mean absolute difference (0-255 levels,
    mean over RGB) between frame 1 and frame 2 warped back by the flow (bilinear), over the pixels
    that pass a forward-backward consistency check (Sundaram et al. 2010: |f(p) + b(p + f(p))|^2 <
    0.01 (|f|^2 + |b|^2) + 0.5 px^2, and p + f(p) inside frame 2), pooled over all pairs. The fraction
    of pixels that pass is reported with it: a method cannot look good by passing only easy pixels
    without that fraction showing it.
(c) held_out: the generated held-out set (`raft_engine.training.loop.HELD_OUT`: v1 scenes, seeds 0-7 at
    384x512): EPE (mean over pairs of the per-pair mean) and 3 px outliers.

Our models run through the public API (`load_model`, `FlowEngine`), float32 on the CPU, 12 iterations
unless --iters says otherwise. DIS: `cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)` on
greyscale frames. Farneback: `cv2.calcOpticalFlowFarneback(pyr_scale=0.5, levels=5, winsize=15,
iterations=3, poly_n=7, poly_sigma=1.5, flags=0)`: OpenCV's tutorial settings (0.5, 3, 15, 3, 5, 1.2)
with two changes its documentation motivates: poly_n=7 with poly_sigma=1.5 (the documented pairing
for the larger neighbourhood, smoother and more robust) and 5 pyramid levels instead of 3, so that
motions of 100 px (the coarsest level is 1/32 of the image) stay within its reach.

    OMP_NUM_THREADS=1 python benchmarks/real_flow.py --model builtin --model run=/work/runs/x/checkpoint.pth \\
        --json results.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

FB_ALPHA1, FB_ALPHA2 = 0.01, 0.5  # Sundaram, Brox and Keutzer (ECCV 2010)
OUTLIER_PX = 3.0
DEFAULT_SINTEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "sintel_demo"
FARNEBACK = {"pyr_scale": 0.5, "levels": 5, "winsize": 15, "iterations": 3, "poly_n": 7, "poly_sigma": 1.5, "flags": 0}

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (H, W, 3) uint8 x2 -> (H, W, 2) float32


# ------------------------------------------------------------------------------------------------
# Measures


def sample(image: np.ndarray, points: np.ndarray, mode: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """image (H, W, C) sampled at points (..., 2) x, y in pixels (pixel centres at integers); values
    beyond the border are the border's (replicated). -> (..., C) float32 and the mask of points
    inside [0, W-1] x [0, H-1]."""
    height, width = image.shape[:2]
    grid = np.stack([points[..., 0] / (width - 1) * 2 - 1, points[..., 1] / (height - 1) * 2 - 1], axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    flat = torch.from_numpy(grid.reshape(1, -1, 1, 2).astype(np.float32))
    out = F.grid_sample(tensor, flat, mode=mode, padding_mode="border", align_corners=True)
    values = out[0, :, :, 0].permute(1, 0).numpy().reshape(*points.shape[:-1], image.shape[2])
    inside = (
        (points[..., 0] >= 0) & (points[..., 0] <= width - 1) & (points[..., 1] >= 0) & (points[..., 1] <= height - 1)
    )
    return values, inside


def pixel_grid(height: int, width: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    return np.stack([xs, ys], axis=-1)


def warp_back(image2: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image2 sampled at p + flow(p) for every pixel p of frame 1 (bilinear) and the mask of p + flow(p)
    inside frame 2."""
    return sample(image2, pixel_grid(*flow.shape[:2]) + flow)


def endpoint_errors(flow: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """EPE (px) and the fraction of pixels with EPE > 3 px, over `valid` (all pixels when None)."""
    error = np.linalg.norm(flow.astype(np.float64) - truth, axis=-1)
    if valid is not None:
        error = error[valid]
    if error.size == 0:
        raise ValueError("no valid pixels")
    return {"epe": float(error.mean()), "outliers": float((error > OUTLIER_PX).mean())}


def fb_residual(forward: np.ndarray, backward: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> the backward flow sampled where the forward flow lands (H, W, 2; bilinear), the length of
    forward + that (H, W; 0 for perfectly consistent flows) and where it lands inside frame 2 (H, W)."""
    back, inside = warp_back(backward, forward)
    return back, np.sqrt(((forward + back) ** 2).sum(-1)), inside


def fb_consistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of frame 1 whose forward flow lands inside frame 2 and comes back by the
    backward flow (sampled there, bilinear) within the Sundaram et al. tolerance."""
    back, residual, inside = fb_residual(forward, backward)
    tolerance = FB_ALPHA1 * ((forward**2).sum(-1) + (back**2).sum(-1)) + FB_ALPHA2
    return inside & (residual**2 < tolerance)


def photometric_error(image1: np.ndarray, image2: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Sum of the mean-over-RGB absolute differences between frame 1 and frame 2 warped back by the
    flow over `mask`, and the count of pixels summed (to pool over pairs)."""
    warped, _ = warp_back(image2.astype(np.float32), flow)
    difference = np.abs(warped - image1.astype(np.float32)).mean(-1)
    return float(difference[mask].sum()), int(mask.sum())


# ------------------------------------------------------------------------------------------------
# (a) Held-out photographs warped by known flows


def _homography(centre, shift, angle, log_scale, tilt=(0.0, 0.0)) -> np.ndarray:
    """frame 1 -> frame 2: about `centre`, rotate, scale, tilt (projective terms, per px), then shift."""
    cx, cy = centre
    cos, sin = math.cos(angle), math.sin(angle)
    scale = math.exp(log_scale)
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    similar = np.array([[scale * cos, -scale * sin, 0], [scale * sin, scale * cos, 0], [0, 0, 1.0]])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1.0]])
    back = np.array([[1, 0, cx + shift[0]], [0, 1, cy + shift[1]], [0, 0, 1.0]])
    return back @ similar @ perspective @ to_centre


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 2) points through a 3x3 homography."""
    x, y = points[..., 0], points[..., 1]
    w = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    return np.stack(
        [
            (matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]) / w,
            (matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]) / w,
        ],
        axis=-1,
    )


@dataclass(frozen=True)
class PieceLayer:
    """A layer of a warped-photo pair, in frame-1 coordinates: content(x) = source photo at x + offset
    (an integer offset: frame 1 is the photo's own pixels), cut by an ellipse (None: the full frame),
    moved to frame 2 by `motion` (3x3, frame 1 -> frame 2)."""

    source: np.ndarray  # (h, w, 3) uint8
    offset: tuple[int, int]
    ellipse: tuple[float, float, float, float, float] | None  # cx, cy, a, b, angle
    motion: np.ndarray

    def covers(self, points: np.ndarray) -> np.ndarray:
        if self.ellipse is None:
            return np.ones(points.shape[:-1], dtype=bool)
        cx, cy, a, b, angle = self.ellipse
        dx, dy = points[..., 0] - cx, points[..., 1] - cy
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        return (u / a) ** 2 + (v / b) ** 2 <= 1

    def colour(self, points: np.ndarray) -> np.ndarray:
        shifted = points + np.array(self.offset, dtype=np.float64)
        values, _ = sample(self.source, shifted, mode="bicubic")
        return values


def render_layers(layers: list[PieceLayer], height: int, width: int) -> dict[str, np.ndarray]:
    """Frames, exact flow and the visible-in-both mask of a stack of layers (back to front)."""
    grid = pixel_grid(height, width)
    image1 = np.zeros((height, width, 3), dtype=np.float32)
    image2 = np.zeros((height, width, 3), dtype=np.float32)
    flow = np.zeros((height, width, 2), dtype=np.float64)
    top1 = np.full((height, width), -1)
    for index, layer in enumerate(layers):
        covered = layer.covers(grid)
        offset = np.array(layer.offset)
        # Frame 1: the source's own pixels (integer offset), replicated beyond its border.
        ys = np.clip(np.arange(height) + offset[1], 0, layer.source.shape[0] - 1)
        xs = np.clip(np.arange(width) + offset[0], 0, layer.source.shape[1] - 1)
        image1[covered] = layer.source[ys][:, xs][covered]
        flow[covered] = apply_homography(layer.motion, grid)[covered] - grid[covered]
        top1[covered] = index
        # Frame 2: each pixel q shows the layer's content at motion^-1(q) where the layer covers it.
        origin = apply_homography(np.linalg.inv(layer.motion), grid)
        shown = layer.covers(origin)
        image2[shown] = layer.colour(origin)[shown]
    # Visible in both: the target is inside frame 2 and no layer above the pixel's covers it there.
    target = grid + flow
    height_ok = (target[..., 1] >= 0) & (target[..., 1] <= height - 1)
    valid = (target[..., 0] >= 0) & (target[..., 0] <= width - 1) & height_ok
    for index, layer in enumerate(layers):
        above = top1 < index
        origin = apply_homography(np.linalg.inv(layer.motion), target)
        valid &= ~(above & layer.covers(origin))
    frames = [np.clip(np.round(image), 0, 255).astype(np.uint8) for image in (image1, image2)]
    return {"image1": frames[0], "image2": frames[1], "flow": flow.astype(np.float32), "valid": valid}


def photo_pairs(names: tuple[str, ...] | None = None) -> list[dict]:
    """For each held-out photo (by default all but motorcycle_right, the stereo pair's other half):
    an affine, a homography and a piecewise pair, deterministic."""
    from raft_engine.scenes import HELD_OUT_PHOTOS, load_photo

    names = names or tuple(n for n in HELD_OUT_PHOTOS if n != "motorcycle_right")
    photos: dict[str, np.ndarray] = {
        n: (load_photo(n).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for n in names
    }
    pairs = []
    for index, name in enumerate(names):
        photo = photos[name]
        height, width = photo.shape[:2]
        centre = (width / 2, height / 2)
        for case in ("affine", "homography", "piecewise"):
            rng = np.random.default_rng([index, ("affine", "homography", "piecewise").index(case)])
            direction = rng.uniform(0, 2 * math.pi)
            magnitude = rng.uniform(10, 40) if case != "homography" else rng.uniform(15, 50)
            shift = (magnitude * math.cos(direction), magnitude * math.sin(direction))
            angle, log_scale = math.radians(rng.uniform(-6, 6)), rng.uniform(-0.1, 0.1)
            tilt = (0.0, 0.0)
            if case == "homography":
                tilt = (rng.uniform(-0.25, 0.25) / width, rng.uniform(-0.25, 0.25) / height)
            if case == "piecewise":
                shift, angle, log_scale = (shift[0] / 3, shift[1] / 3), angle / 3, log_scale / 3
                tilt = (rng.uniform(-0.1, 0.1) / width, rng.uniform(-0.1, 0.1) / height)
            layers = [PieceLayer(photo, (0, 0), None, _homography(centre, shift, angle, log_scale, tilt))]
            if case == "piecewise":
                for piece in range(3):
                    source = photos[names[(index + 1 + piece) % len(names)]]
                    a = min(height, width) * rng.uniform(0.1, 0.22)
                    b = a * rng.uniform(0.5, 1.0)
                    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
                    offset = (
                        int(rng.integers(0, max(1, source.shape[1] - width + 1))),
                        int(rng.integers(0, max(1, source.shape[0] - height + 1))),
                    )
                    direction, magnitude = rng.uniform(0, 2 * math.pi), rng.uniform(20, 90)
                    motion = _homography(
                        (cx, cy),
                        (magnitude * math.cos(direction), magnitude * math.sin(direction)),
                        math.radians(rng.uniform(-8, 8)),
                        rng.uniform(-0.08, 0.08),
                    )
                    ellipse = (cx, cy, a, b, rng.uniform(0, math.pi))
                    layers.append(PieceLayer(source, offset, ellipse, motion))
            pairs.append({"name": f"{name}/{case}", "case": case, **render_layers(layers, height, width)})
    return pairs


def stereo_pair() -> dict:
    """Middlebury 2014 Motorcycle as scikit-image ships it (4x downsampled): left -> right flow (-d, 0)
    where the disparity d is finite. Middlebury's convention: a left pixel x corresponds to x - d in the
    right image (the scene is to the left in the right camera), and disparity maps are of the left view.
    `check_stereo_convention` measures it: with (-d, 0) the warped right image matches the left one,
    with (+d, 0) it does not."""
    import skimage.data

    left, right, disparity = skimage.data.stereo_motorcycle()
    valid = np.isfinite(disparity)
    flow = np.zeros((*disparity.shape, 2), dtype=np.float32)
    flow[..., 0] = np.where(valid, -disparity, 0)
    return {
        "name": "motorcycle/stereo",
        "image1": left,
        "image2": right,
        "flow": flow,
        "valid": valid,
        "all_valid": valid,
    }


def check_stereo_convention(pair: dict) -> dict[str, float]:
    """Median photometric error (0-255) over valid pixels for the flow as defined, its sign flipped,
    shifted by +-0.5 px vertically and scaled by 0.95 and 1.05: the definition should be the minimum."""
    out = {}
    for label, flow in (
        ("as_defined", pair["flow"]),
        ("sign_flipped", pair["flow"] * np.array([-1, 1], dtype=np.float32)),
        ("down_0.5px", pair["flow"] + np.array([0, 0.5], dtype=np.float32)),
        ("up_0.5px", pair["flow"] - np.array([0, 0.5], dtype=np.float32)),
        ("scaled_0.95", pair["flow"] * 0.95),
        ("scaled_1.05", pair["flow"] * 1.05),
    ):
        warped, inside = warp_back(pair["image2"].astype(np.float32), flow)
        difference = np.abs(warped - pair["image1"]).mean(-1)[pair["valid"] & inside]
        out[label] = float(np.median(difference))
    return out


# ------------------------------------------------------------------------------------------------
# (b) Sintel demo frames, (c) the held-out generated set


def sintel_frames(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted(folder.glob("*.png"))
    if len(paths) < 2:
        raise FileNotFoundError(f"no Sintel frames (*.png) in {folder}")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def held_out_pairs() -> list[dict]:
    from raft_engine.scenes import generate_pair
    from raft_engine.training.loop import HELD_OUT

    pairs = []
    for seed in HELD_OUT["seeds"]:
        pair = generate_pair(seed, HELD_OUT["height"], HELD_OUT["width"])
        pairs.append({"name": f"seed {seed}", "image1": pair.image1, "image2": pair.image2, "flow": pair.flow})
    return pairs


def measure_truth(method: FlowFn, pairs: list[dict], use_valid: bool = True) -> dict:
    """Mean over pairs of EPE and outliers (over valid pixels), and of EPE over all pixels."""
    rows = {}
    for pair in pairs:
        flow = method(pair["image1"], pair["image2"])
        valid = pair.get("valid") if use_valid else None
        noc = endpoint_errors(flow, pair["flow"], valid)
        rows[pair["name"]] = {**noc, "epe_all": endpoint_errors(flow, pair["flow"], pair.get("all_valid"))["epe"]}
    return {
        "epe": float(np.mean([r["epe"] for r in rows.values()])),
        "outliers": float(np.mean([r["outliers"] for r in rows.values()])),
        "epe_all": float(np.mean([r["epe_all"] for r in rows.values()])),
        "pairs": rows,
    }


def measure_sintel(method: FlowFn, frames: list[np.ndarray]) -> dict:
    """Photometric error over the pixels that pass the forward-backward check, the fraction passing,
    and the median forward-backward residual (px) over pixels landing inside the next frame: how far
    apart the two flows are where they should cancel, which says why pixels fail."""
    total, count, pixels = 0.0, 0, 0
    residuals = []
    for image1, image2 in zip(frames[:-1], frames[1:], strict=True):
        forward, backward = method(image1, image2), method(image2, image1)
        mask = fb_consistent(forward, backward)
        _, residual, inside = fb_residual(forward, backward)
        residuals.append(residual[inside])
        error, counted = photometric_error(image1, image2, forward, mask)
        total, count, pixels = total + error, count + counted, pixels + mask.size
    return {
        "photometric_error": total / max(count, 1),
        "fb_pass": count / pixels,
        "fb_residual": float(np.median(np.concatenate(residuals))),
        "pairs": len(frames) - 1,
    }


# ------------------------------------------------------------------------------------------------
# Methods


def raft_method(source: str, iters: int) -> FlowFn:
    from raft_engine import FlowEngine, load_model

    engine = FlowEngine(load_model(source), device="cpu", dtype="fp32")

    def flow(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
        return engine(image1, image2, iters=iters)[0].permute(1, 2, 0).numpy()

    return flow


def opencv_method(name: str) -> FlowFn:
    cv2: Any = importlib.import_module("cv2")  # Any: OpenCV's stubs lack DIS and Farneback's keywords

    def grey(image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)

    if name == "dis-medium":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda image1, image2: dis.calc(grey(image1), grey(image2), None).astype(np.float32)
    if name == "farneback":
        return lambda image1, image2: cv2.calcOpticalFlowFarneback(
            grey(image1), grey(image2), None, **FARNEBACK
        ).astype(np.float32)
    raise ValueError(f"unknown OpenCV method {name!r}")


def run(methods: dict[str, FlowFn], measures: tuple[str, ...], sintel: Path, log=print) -> dict:
    inputs: dict[str, Any] = {}
    if "photos" in measures:
        inputs["photos"] = photo_pairs()
    if "stereo" in measures:
        inputs["stereo"] = [stereo_pair()]
    if "sintel" in measures:
        inputs["sintel"] = sintel_frames(sintel)
    if "held_out" in measures:
        inputs["held_out"] = held_out_pairs()
    results: dict[str, dict] = {}
    for name, method in methods.items():
        results[name] = {}
        for measure in measures:
            start = time.perf_counter()
            if measure == "sintel":
                results[name][measure] = measure_sintel(method, inputs["sintel"])
            else:
                results[name][measure] = measure_truth(method, inputs[measure], use_valid=measure != "held_out")
            results[name][measure]["seconds"] = round(time.perf_counter() - start, 1)
            log(f"{name} {measure}: " + json.dumps({k: v for k, v in results[name][measure].items() if k != "pairs"}))
    return results


def table(results: dict, measures: tuple[str, ...]) -> str:
    columns = []
    for measure in measures:
        if measure == "sintel":
            columns += [
                ("sintel", "photometric_error", "sintel photo-err"),
                ("sintel", "fb_pass", "fb-pass"),
                ("sintel", "fb_residual", "fb-residual px"),
            ]
        else:
            columns += [(measure, "epe", f"{measure} EPE"), (measure, "outliers", ">3px")]
    width = max(len(name) for name in results) + 2
    lines = [" " * width + "".join(f"{title:>18}" for _, _, title in columns)]
    for name, row in results.items():
        lines.append(f"{name:<{width}}" + "".join(f"{row[m][k]:>18.4f}" for m, k, _ in columns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", action="append", default=[], help="weights: 'builtin', a path, or LABEL=SOURCE; repeatable"
    )
    parser.add_argument("--baselines", default="dis-medium,farneback", help="comma-separated; '' for none")
    parser.add_argument("--measures", default="photos,stereo,sintel,held_out")
    parser.add_argument("--sintel", type=Path, default=DEFAULT_SINTEL)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    measures = tuple(m for m in args.measures.split(",") if m)
    methods: dict[str, FlowFn] = {}
    sources = {}
    for spec in args.model:
        label, _, source = spec.partition("=") if "=" in spec else (spec, "", spec)
        methods[label] = raft_method(source, args.iters)
        sources[label] = source
    for name in [b for b in args.baselines.split(",") if b]:
        methods[name] = opencv_method(name)
    start = time.perf_counter()
    results = run(methods, measures, args.sintel, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = {
        "command": "python benchmarks/real_flow.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "iters": args.iters,
            "threads": args.threads,
            "models": sources,
            "farneback": FARNEBACK,
            "fb_check": {"alpha1": FB_ALPHA1, "alpha2": FB_ALPHA2},
            "outlier_px": OUTLIER_PX,
            "sintel": str(args.sintel),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
        },
        "methods": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if "stereo" in measures:
        report["stereo_convention_check"] = check_stereo_convention(stereo_pair())
    print(table(results, measures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
