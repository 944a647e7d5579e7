"""Where the flows of a sequence go, one pair at a time: a video of the colour-coded flow, a folder of
flow pictures, and folders of Middlebury .flo and KITTI 16-bit PNG files, each file named after the
first frame of its pair and written whole."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from raft_engine.errors import PathError
from raft_engine.io.files import check_output_file, check_output_folder
from raft_engine.io.flow_files import KITTI_SCALE, as_flow_array, write_flo, write_kitti_flow
from raft_engine.io.images import write_image
from raft_engine.io.video import VideoWriter
from raft_engine.io.visualize import flow_to_color


def write_kitti_clipped(path: str | Path, flow: np.ndarray) -> int:
    """A KITTI 16-bit PNG flow file in which pixels beyond the format's range (-512 to 511.98 px) are
    marked invalid -> how many were."""
    valid = np.all((flow >= -512) & (flow <= 32767 / KITTI_SCALE), axis=2)
    write_kitti_flow(path, flow, valid)
    return int(valid.size - valid.sum())


@dataclass
class SequenceOutputs:
    """The outputs of a sequence's flows; None where not asked for.

    video: a video file of the colour-coded flow (H.264 for .mp4). image_dir, flo_dir, kitti_dir:
    folders of flow pictures (PNG), .flo files and KITTI PNG files. max_magnitude: the flow length
    drawn at full saturation (None: each picture's own maximum)."""

    video: Path | None = None
    image_dir: Path | None = None
    flo_dir: Path | None = None
    kitti_dir: Path | None = None
    max_magnitude: float | None = None
    beyond_kitti: int = field(default=0, init=False)  # pixels marked invalid in the KITTI files so far
    written: int = field(default=0, init=False)
    _stack: contextlib.ExitStack | None = field(default=None, init=False, repr=False)
    _writer: VideoWriter | None = field(default=None, init=False, repr=False)

    def describe(self) -> str:
        return ", ".join(str(p) for p in (self.video, self.image_dir, self.flo_dir, self.kitti_dir) if p is not None)

    def prepare(self) -> SequenceOutputs:
        """Create the output folders (and the video's), before any work: a path that cannot be written
        fails now, naming it."""
        if self.video is not None:
            check_output_file(self.video, what="the flow video")
        for folder in filter(None, (self.image_dir, self.flo_dir, self.kitti_dir)):
            if folder.exists() and not folder.is_dir():
                raise PathError(
                    f"{folder} exists and is not a folder; a sequence writes one file per pair into a folder"
                )
            check_output_folder(folder)
        return self

    def open(self, fps: Fraction) -> SequenceOutputs:
        """Start writing: the video (at `fps`) is opened now. Use as a context manager: leaving it closes
        the video, so that the frames written so far play."""
        self._stack = contextlib.ExitStack()
        if self.video is not None:
            self._writer = self._stack.enter_context(VideoWriter(self.video, fps))
        return self

    def __enter__(self) -> SequenceOutputs:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._stack is not None:
            self._stack.close()
        if self.beyond_kitti:
            warnings.warn(
                f"{self.beyond_kitti} pixels had flow beyond the KITTI PNG range; they are marked invalid there",
                stacklevel=2,
            )

    def write(self, stem: str, flow: object) -> None:
        """One pair's flow ((H, W, 2) numpy or (2, H, W) torch) to every output, named `stem`."""
        flow = as_flow_array(flow)
        if self._writer is not None or self.image_dir is not None:
            colours = flow_to_color(flow, self.max_magnitude)
            if self._writer is not None:
                self._writer.write(colours)
            if self.image_dir is not None:
                write_image(self.image_dir / f"{stem}.png", colours)
        if self.flo_dir is not None:
            write_flo(self.flo_dir / f"{stem}.flo", flow)
        if self.kitti_dir is not None:
            self.beyond_kitti += write_kitti_clipped(self.kitti_dir / f"{stem}.png", flow)
        self.written += 1
