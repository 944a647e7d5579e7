"""The site's pictures of a real pair, from two frames of the MPI-Sintel demo clip (frames 16 and 17):
the home page's frames-and-flow picture and the inspection's pictures on "How RAFT works".

    python docs/make_pictures.py FRAME1 FRAME2        # e.g. .../sintel_demo/frame_0016.png .../frame_0017.png

Writes docs/pages/images/sintel-flow.jpg and docs/pages/images/raft/; the inspection runs the built-in
model on the CPU (under a minute at 436x1024).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = Path(__file__).resolve().parent / "pages" / "images"
# The inspection's files the page shows; the test pixels are on the apple and in the hair.
PIXELS = ("880,270", "460,180")
SHOWN = ("image1.png", "flow.png", "fmap1.png", "pixel1_level0.gif", "pixel1_level3.gif", "pixel1_windows.png",
         "motion_strip.png")  # fmt: skip
# Pictures of the whole frame go in as JPEGs at most this wide, to keep the repository small.
JPEG = {"image1.png": 768, "flow.png": 768, "fmap1.png": 768}


def frames_and_flow(frame1: Path, frame2: Path, out: Path, width: int = 1200) -> None:
    """The two frames above, the built-in model's flow below them, scaled to `width`, as a JPEG."""
    from raft_engine import FlowEngine, load_model
    from raft_engine.io import flow_to_color, read_image

    image1, image2 = read_image(frame1), read_image(frame2)
    flow = FlowEngine(load_model("builtin"), device="cpu").estimate(image1, image2, iters=12).flow[0]
    colours = flow_to_color(flow)
    height = image1.shape[0]
    gap = 8
    canvas = np.full((2 * height + gap, 2 * image1.shape[1] + gap, 3), 255, np.uint8)
    canvas[:height, : image1.shape[1]] = image1
    canvas[:height, image1.shape[1] + gap :] = image2
    left = (canvas.shape[1] - colours.shape[1]) // 2
    canvas[height + gap :, left : left + colours.shape[1]] = colours
    picture = Image.fromarray(canvas)
    picture = picture.resize((width, round(canvas.shape[0] * width / canvas.shape[1])), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, quality=85, optimize=True)


def inspection(frame1: Path, frame2: Path, out: Path) -> None:
    """`raft-engine inspect` on the pair, keeping the files the page shows."""
    with tempfile.TemporaryDirectory() as folder:
        pixels = [argument for pixel in PIXELS for argument in ("--pixel", pixel)]
        command = [sys.executable, "-m", "raft_engine.cli", "inspect", str(frame1), str(frame2), *pixels]
        subprocess.run([*command, "--iters", "12", "-o", folder], check=True)
        out.mkdir(parents=True, exist_ok=True)
        for name in SHOWN:
            if name in JPEG:
                picture = Image.open(Path(folder) / name).convert("RGB")
                scale = min(1.0, JPEG[name] / picture.width)
                size = (round(picture.width * scale), round(picture.height * scale))
                picture.resize(size, Image.Resampling.LANCZOS).save(out / name.replace(".png", ".jpg"), quality=85)
            else:
                shutil.copyfile(Path(folder) / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frame1", type=Path)
    parser.add_argument("frame2", type=Path)
    args = parser.parse_args()
    frames_and_flow(args.frame1, args.frame2, IMAGES / "sintel-flow.jpg")
    inspection(args.frame1, args.frame2, IMAGES / "raft")
    print(f"wrote {IMAGES / 'sintel-flow.jpg'} and {IMAGES / 'raft'}")


if __name__ == "__main__":
    main()
