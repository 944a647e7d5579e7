"""The demo: a generated pair that the built-in model never saw in training, its estimated flow beside
the exact flow, the end-point error, and a contact sheet of the four pictures."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raft_engine.errors import InputError
from raft_engine.io import flow_to_color, write_flo, write_image
from raft_engine.io.files import make_folder
from raft_engine.runtime.engine import FlowEngine
from raft_engine.scenes import TRAINING_SEED_START, generate_pair


@dataclass(frozen=True)
class DemoResult:
    seed: int
    height: int
    width: int
    largest: float  # the longest exact displacement, px
    epe: float  # mean end-point error, px
    within_1px: float  # fraction of pixels with an error under 1 px
    seconds: float  # the estimate's wall time
    sheet: Path


def smallest_side(min_image_size: int) -> int:
    """The smallest image side a model accepts: sides are padded up to the next multiple of 8 and must then
    reach `min_image_size`, itself a multiple of 8, so a side up to 7 pixels short of it still passes."""
    return min_image_size - 7


def contact_sheet(panels: list[tuple[np.ndarray, str]], columns: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 pictures of one size, each with a caption above it, on a white sheet."""
    from PIL import Image, ImageDraw

    height, width = panels[0][0].shape[:2]
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * width + 10 * (columns - 1), rows * (height + 25)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (picture, caption) in enumerate(panels):
        x, y = (i % columns) * (width + 10), (i // columns) * (height + 25)
        sheet.paste(Image.fromarray(picture), (x, y + 20))
        draw.text((x + 4, y + 4), caption, fill=(0, 0, 0))
    return np.asarray(sheet)


def run_demo(
    engine: FlowEngine, out: str | os.PathLike, seed: int = 3, height: int = 384, width: int = 512, iters: int = 12
) -> DemoResult:
    """Generate held-out pair `seed`, estimate its flow and write into `out`: frame1.png, frame2.png,
    flow.png, truth.png, flow.flo, truth.flo and demo.png (the four pictures side by side)."""
    if not 0 <= seed < TRAINING_SEED_START:
        raise InputError(f"seed must be in 0..{TRAINING_SEED_START - 1}: larger seeds are the training data's")
    smallest = smallest_side(engine.config.min_image_size)
    if min(height, width) < smallest:
        raise InputError(
            f"height and width must be at least {smallest} (RAFT-{engine.config.variant} needs "
            f"{engine.config.min_image_size} after padding to a multiple of 8), got {height}x{width}"
        )
    folder = make_folder(out)
    pair = generate_pair(seed, height, width)
    start = time.perf_counter()
    flow = engine(pair.image1, pair.image2, iters=iters)[0].permute(1, 2, 0).cpu().numpy()
    seconds = time.perf_counter() - start
    error = np.linalg.norm(flow - pair.flow, axis=2)
    largest = float(np.linalg.norm(pair.flow, axis=2).max())
    shown = {
        "frame1.png": (pair.image1, "frame 1"),
        "frame2.png": (pair.image2, "frame 2"),
        "flow.png": (flow_to_color(flow, max_magnitude=largest), f"estimated flow (EPE {error.mean():.2f} px)"),
        "truth.png": (flow_to_color(pair.flow, largest), "ground truth"),
    }
    for name, (picture, _) in shown.items():
        write_image(folder / name, picture)
    write_flo(folder / "flow.flo", flow)
    write_flo(folder / "truth.flo", pair.flow)
    write_image(folder / "demo.png", contact_sheet(list(shown.values())))
    return DemoResult(
        seed, height, width, largest, float(error.mean()), float((error < 1).mean()), seconds, folder / "demo.png"
    )
