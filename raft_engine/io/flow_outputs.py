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

from raft_engine.errors import InputError, PathError
from raft_engine.io.files import check_output_file, check_output_folder, write_atomically
from raft_engine.io.flow_files import KITTI_SCALE, as_flow_array, kitti_flow_bytes, write_flo
from raft_engine.io.images import write_image, write_mask
from raft_engine.io.video import VideoWriter
from raft_engine.io.visualize import flow_to_color


def kitti_clipped_bytes(flow: np.ndarray) -> tuple[bytes, int]:
    """A KITTI 16-bit PNG flow file's contents in which pixels beyond the format's range (-512 to 511.98 px)
    are marked invalid -> (the contents, how many were)."""
    valid = np.all((flow >= -512) & (flow <= 32767 / KITTI_SCALE), axis=2)
    return kitti_flow_bytes(flow, valid), int(valid.size - valid.sum())


def write_kitti_clipped(path: str | Path, flow: np.ndarray) -> int:
    """A KITTI 16-bit PNG flow file in which pixels beyond the format's range are marked invalid -> how many
    were (see `kitti_clipped_bytes`)."""
    contents, invalid = kitti_clipped_bytes(flow)
    write_atomically(path, contents)
    return invalid


@dataclass
class SequenceOutputs:
    """The outputs of a sequence's flows; None where not asked for.

    video: a video file of the colour-coded flow (H.264 for .mp4). image_dir, flo_dir, kitti_dir:
    folders of flow pictures (PNG), .flo files and KITTI PNG files; occlusion_dir: a folder of the
    forward-backward check's masks (1-bit PNG). bidirectional: the pairs come with their backward flow and
    masks; each folder then gets the backward files beside the forward ones, named STEM.backward.EXT, and
    the masks STEM.png (image 1's pixels) and STEM.backward.png (image 2's); the video shows the forward
    flow only. max_magnitude: the flow length drawn at full saturation (None: each picture's own maximum)."""

    video: Path | None = None
    image_dir: Path | None = None
    flo_dir: Path | None = None
    kitti_dir: Path | None = None
    occlusion_dir: Path | None = None
    bidirectional: bool = False
    max_magnitude: float | None = None
    beyond_kitti: int = field(default=0, init=False)  # pixels marked invalid in the KITTI files so far
    written: int = field(default=0, init=False)
    _stack: contextlib.ExitStack | None = field(default=None, init=False, repr=False)
    _writer: VideoWriter | None = field(default=None, init=False, repr=False)

    def describe(self) -> str:
        paths = (self.video, self.image_dir, self.flo_dir, self.kitti_dir, self.occlusion_dir)
        return ", ".join(str(p) for p in paths if p is not None)

    def prepare(self) -> SequenceOutputs:
        """Create the output folders (and the video's), before any work: a path that cannot be written
        fails now, naming it."""
        if self.video is not None:
            check_output_file(self.video, what="the flow video")
        for folder in filter(None, (self.image_dir, self.flo_dir, self.kitti_dir, self.occlusion_dir)):
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

    def write(
        self,
        stem: str,
        flow: object,
        backward: object | None = None,
        occlusion: object | None = None,
        occlusion_backward: object | None = None,
    ) -> None:
        """One pair's flow ((H, W, 2) numpy or (2, H, W) torch) to every output, named `stem`; with
        `bidirectional`, also its backward flow and the two (H, W) bool masks."""
        flow = as_flow_array(flow)
        if self._writer is not None:
            self._writer.write(flow_to_color(flow, self.max_magnitude))
        self._files(stem, flow)
        if self.bidirectional:
            if backward is None or occlusion is None or occlusion_backward is None:
                raise InputError(f"pair {stem}: bidirectional outputs need the backward flow and both masks")
            self._files(f"{stem}.backward", as_flow_array(backward, "backward"))
            if self.occlusion_dir is not None:
                write_mask(self.occlusion_dir / f"{stem}.png", occlusion)
                write_mask(self.occlusion_dir / f"{stem}.backward.png", occlusion_backward)
        self.written += 1

    def _files(self, stem: str, flow: np.ndarray) -> None:
        """A flow to the folders of pictures, .flo and KITTI files, named `stem`."""
        if self.image_dir is not None:
            write_image(self.image_dir / f"{stem}.png", flow_to_color(flow, self.max_magnitude))
        if self.flo_dir is not None:
            write_flo(self.flo_dir / f"{stem}.flo", flow)
        if self.kitti_dir is not None:
            self.beyond_kitti += write_kitti_clipped(self.kitti_dir / f"{stem}.png", flow)
