"""A batch job's units of work: the clips given (video files, folders of frames, text files that list
them) and their shards, runs of consecutive frames that overlap by one frame, so that every pair of a
clip is in exactly one shard."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raft_engine.errors import InputError, MissingFileError
from raft_engine.io.frames import IMAGE_SUFFIXES, is_video_path, natural_key

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


@dataclass(frozen=True)
class Clip:
    """One clip: `name` (its outputs' folder under OUT), `path`, `kind` ("video" or "folder")."""

    name: str
    path: Path
    kind: str


@dataclass(frozen=True)
class Shard:
    """Frames `start` to `stop` of a clip, both included: its pairs start -> start + 1, ..., stop - 1 -> stop.
    Carries what a worker needs to run it alone."""

    clip: str
    path: str
    kind: str
    start: int
    stop: int

    @property
    def pairs(self) -> range:
        """The first frame of each pair."""
        return range(self.start, self.stop)

    def row(self) -> dict[str, Any]:
        return asdict(self)


def _clip(path: Path, origin: str) -> Clip:
    if not path.exists():
        raise MissingFileError(f"no such clip: {path}{origin}")
    if path.is_dir():
        return Clip(path.name, path, "folder")
    if is_video_path(path):
        return Clip(path.stem, path, "video")
    raise InputError(f"{path}{origin} is neither a video file, a folder of frames, nor a list of them")


def find_clips(inputs: list[str]) -> list[Clip]:
    """The clips of `inputs`, in order: each a video file or a folder of frames, or a text file (.txt, .lst)
    listing them one per line (relative to the list's folder; blank lines and # comments skipped). A missing
    path, an empty list or two clips of one name raise, naming them."""
    if not inputs:
        raise InputError("no inputs: give video files, folders of frames, or text files that list them")
    clips: list[Clip] = []
    for text in inputs:
        path = Path(text)
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
            listed = [line for line in lines if line]
            if not listed:
                raise InputError(f"{path} lists no clips")
            clips += [_clip((path.parent / line).absolute(), f" (listed in {path})") for line in listed]
        else:
            clips.append(_clip(path.absolute(), ""))  # absolute: the workers run in folders of their own
    names: dict[str, Path] = {}
    for clip in clips:
        if clip.name in names and names[clip.name] != clip.path:
            raise InputError(
                f"two clips are named {clip.name!r} ({names[clip.name]} and {clip.path}): their outputs would share "
                "a folder; rename one"
            )
        names[clip.name] = clip.path
    return list({clip.path: clip for clip in clips}.values())  # the same clip twice: once


def folder_frames(path: Path) -> list[Path]:
    """The images of a folder of frames, in natural name order."""
    return sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)


def count_frames(clip: Clip) -> int:
    """The clip's frames; a video that cannot be read raises FileFormatError."""
    if clip.kind == "folder":
        return len(folder_frames(clip.path))
    from raft_engine.io.video import read_video

    return read_video(clip.path).count_frames()


def plan_shards(clip: Clip, frames: int, shard_frames: int) -> list[Shard]:
    """Shards of `shard_frames` pairs (shard_frames + 1 frames, the last shorter): 0..K, K..2K, ..."""
    return [
        Shard(clip.name, str(clip.path), clip.kind, start, min(start + shard_frames, frames - 1))
        for start in range(0, frames - 1, shard_frames)
    ]


def shard_frames(shard: Shard) -> Iterator[np.ndarray]:
    """The frames of a shard, decoded in the worker: (H, W, 3) uint8 RGB, start to stop."""
    if shard.kind == "folder":
        from raft_engine.io.images import read_image

        files = folder_frames(Path(shard.path))
        if len(files) <= shard.stop:
            raise InputError(f"{shard.path} holds {len(files)} frames now; its shard needs frame {shard.stop}")
        for file in files[shard.start : shard.stop + 1]:
            yield read_image(file)
        return
    from raft_engine.io.video import read_video

    count = 0
    for frame in read_video(shard.path).frames(shard.start, shard.stop + 1):
        count += 1
        yield frame
    if count != shard.stop - shard.start + 1:
        raise InputError(
            f"{shard.path} ended after frame {shard.start + count - 1}; its shard needs frame {shard.stop}"
        )
