"""Where a sequence's frames come from: a folder of images, a list of image files, or a video file,
with a selection of frames (`start`, `end`, `every`), decoded one at a time as they are needed and each
checked against the first frame's size."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from raft_engine.errors import InputError, MissingFileError
from raft_engine.io.video import VIDEO_SUFFIXES

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})


def natural_key(path: Path) -> list:
    """Sort key of a file name in natural order: frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def is_video_path(path: str | Path | None) -> bool:
    """Whether `path` names a video file by its suffix (.mp4, .mkv, ...)."""
    return path is not None and Path(path).suffix.lower() in VIDEO_SUFFIXES


def collect_frames(inputs: list[str]) -> tuple[list[Path], bool]:
    """-> (image files in order, whether they are exactly one pair given as two files). One folder: its
    images in natural name order. Files: in the order given."""
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        frames = sorted((p for p in paths[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        if len(frames) < 2:
            raise InputError(f"folder {paths[0]} holds {len(frames)} image(s); at least 2 frames are needed")
        return frames, False
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path} is a folder; give either one folder or a list of image files")
        if not path.is_file():
            raise MissingFileError(f"no such image file: {path}")
    if len(paths) < 2:
        raise InputError("give two frames, a list of frames, or a folder of frames")
    return paths, len(paths) == 2


@dataclass(frozen=True)
class Selection:
    """Which frames of a source to read: from `start` (counted from 0), before `end` (None: to the last),
    every `every`-th one."""

    start: int = 0
    end: int | None = None
    every: int = 1

    def __post_init__(self) -> None:
        if self.start < 0:
            raise InputError(f"start must be >= 0, got {self.start}")
        if self.end is not None and self.end <= self.start:
            raise InputError(f"end must be greater than start ({self.start}), got {self.end}")
        if self.every < 1:
            raise InputError(f"every must be >= 1, got {self.every}")

    @property
    def is_all(self) -> bool:
        return (self.start, self.end, self.every) == (0, None, 1)


@dataclass(frozen=True)
class FrameSource:
    """A sequence's frames: those that a `Selection` picks, decoded as `read()` yields them, each checked
    against the first one's size.

    label: the input, for messages. count: the frames selected, where known before decoding. fps: the
    input's frame rate, where known. stem(k): the name of pair k's output files, after its first frame
    (a file's stem, or a video frame's number as six digits)."""

    label: str
    stem: Callable[[int], str]
    count: int | None
    fps: Fraction | None
    read: Callable[[], Iterator[np.ndarray]]


def image_frames(paths: list[Path], selection: Selection = Selection()) -> FrameSource:
    """The selected frames of a list of image files; two of them with the same stem (the outputs would
    overwrite each other) raise `InputError`."""
    from raft_engine.io.images import read_image

    selected = paths[selection.start : selection.end : selection.every]
    stems = [frame.stem for frame in selected[:-1]]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise InputError(
            f"several frames are named {clashes[0]!r} (in other folders or formats); their flows "
            "would overwrite each other in the output folder"
        )

    def read() -> Iterator[np.ndarray]:
        first: tuple[Path, tuple[int, ...]] | None = None
        for path in selected:
            image = read_image(path)
            if first is None:
                first = path, image.shape
            elif image.shape != first[1]:
                (h, w), (first_h, first_w) = image.shape[:2], first[1][:2]
                raise InputError(f"{path} is {h}x{w} (HxW), but {first[0]} is {first_h}x{first_w}: every frame "
                                 "must have the size of the first")  # fmt: skip
            yield image

    label = f"{len(paths)} frames" if selection.is_all else "the selected frames"
    return FrameSource(label, lambda k: stems[k], len(selected), None, read)


def video_frames(path: Path, selection: Selection = Selection()) -> FrameSource:
    """The selected frames of a video file (PyAV), decoded as they are read."""
    from raft_engine.io.video import read_video

    video = read_video(path)
    start, end, every = selection.start, selection.end, selection.every
    count = None
    if video.frame_count is not None:
        count = len(range(start, video.frame_count if end is None else min(end, video.frame_count), every))

    def read() -> Iterator[np.ndarray]:
        first_shape = None
        for index, frame in zip(itertools.count(start, every), itertools.islice(video, start, end, every)):
            if first_shape is None:
                first_shape = frame.shape
            elif frame.shape != first_shape:
                raise InputError(f"{path}: frame {index} is {frame.shape[0]}x{frame.shape[1]} (HxW), but frame "
                                 f"{start} is {first_shape[0]}x{first_shape[1]}")  # fmt: skip
            yield frame

    return FrameSource(str(path), lambda k: f"{start + k * every:06d}", count, video.fps, read)
