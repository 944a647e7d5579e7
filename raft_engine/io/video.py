"""Reading and writing video files through PyAV (FFmpeg's libraries in its wheels, libx264 included):
`pip install av`, or the project's `video` extra."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from raft_engine.errors import FileFormatError, InputError, MissingDependency, MissingFileError, PathError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})
VIDEO_INSTALL = 'pip install av, or the project\'s video extra: pip install -e ".[video]"'


def _import_av() -> ModuleType:
    """The av module, or a MissingDependency (a ModuleNotFoundError named "av") that says how to install it."""
    try:
        import av
    except ModuleNotFoundError as error:
        if error.name != "av":
            raise
        raise MissingDependency(f"video needs PyAV (the av package): {VIDEO_INSTALL}", name="av") from error
    return av


def _as_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not 0 < fps < 10_000:
        raise InputError(f"frame rate must be a positive number of frames per second, got {fps!r}")
    # 29.97 -> 2997/100; NTSC rates given as Fractions (30000/1001) stay exact.
    return Fraction(fps).limit_denominator(100_000)


class VideoReader:
    """The frames of a video file, decoded one at a time as they are iterated: (H, W, 3) uint8 RGB.

    Each iteration opens the file anew and decodes from the start; the file is closed when the
    iteration ends or is abandoned. `fps`, `frame_count`, `width`, `height` and `codec` are what the
    container says, read when the reader is made. Needs PyAV.

    Args:
        path: the video file.

    Attributes:
        path: the video file, a Path.
        fps: the frame rate, a Fraction; None when unknown.
        frame_count: the number of frames; None when the container does not record it, as in many MKV
            and WebM files (`count_frames` counts them then).
        width: the frame width in pixels.
        height: the frame height in pixels.
        codec: the name of the video codec.

    Raises:
        MissingFileError: the file does not exist.
        FileFormatError: the file is unreadable (a ValueError naming the file). A decoding error part-way
            raises it too, after the frames before it.
        MissingDependency: PyAV is not installed.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"no such video file: {self.path}")
        self._av = _import_av()
        container = self._open()
        try:
            stream = container.streams.video[0]
            context = stream.codec_context
            if context is None:  # a stream whose codec FFmpeg could not set up (seen in damaged MP4 files)
                raise FileFormatError(f"{self.path} is not a video PyAV can read (its video stream has no codec)")
            self.width: int = context.width
            self.height: int = context.height
            self.codec: str = context.name
            rate = stream.average_rate or stream.guessed_rate
            self.fps: Fraction | None = Fraction(rate) if rate else None
            self.frame_count: int | None = stream.frames or None
        finally:
            container.close()

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, {self.width}x{self.height}, {self.codec}, "
            f"fps={self.fps}, frame_count={self.frame_count})"
        )

    def _open(self) -> Any:
        try:
            container = self._av.open(str(self.path), mode="r")
        except (self._av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise FileFormatError(f"{self.path} is not a video PyAV can read ({_reason(error)})") from error
        if not container.streams.video:
            container.close()
            raise FileFormatError(f"{self.path} is not a video PyAV can read (the file has no video stream)")
        return container

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.frames()

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Frames start, start + 1, ... before stop, counted from 0.

        From a start past 0, decoding begins at the last keyframe at or before it, found by reading the
        packets (not decoding them), where the packets' timestamps are complete and distinct; else, or
        where the decoder does not land on that keyframe, it begins at the first frame. Frames before
        start are decoded but not converted to RGB.

        Args:
            start: the first frame, counted from 0.
            stop: the frame to stop before; None: to the last.

        Yields:
            Each frame, (H, W, 3) uint8 RGB.

        Raises:
            FileFormatError: decoding fails, the decoder gives a frame of an unexpected timestamp, or a
                frame cannot be converted to RGB; after the frames before it.
        """
        seek = self._keyframe_before(start) if start > 0 else None
        container = self._open()
        try:
            stream, decoded, index_of = self._start(container, seek)
            index, started = 0, False
            while stop is None or index < stop:
                try:
                    frame = next(decoded)
                except StopIteration:
                    return
                except self._av.error.FFmpegError as error:
                    raise FileFormatError(
                        f"{self.path}: decoding failed after {index} frame(s) ({_reason(error)})"
                    ) from error
                if index_of is not None:
                    found = index_of.get(frame.pts)
                    if not started and (found is None or found > start):
                        # The seek landed past the frame: decode from the first frame instead.
                        container.close()
                        container = self._open()
                        stream, decoded, index_of = self._start(container, None)
                        continue
                    if found is None or (started and found != index):
                        raise FileFormatError(
                            f"{self.path}: after frame {index - 1} the decoder gave a frame of timestamp "
                            f"{frame.pts}, not frame {index}'s"
                        )
                    index = found
                if index < start:
                    index += 1
                    continue
                if stop is not None and index >= stop:
                    return
                started = True
                try:
                    picture = frame.to_ndarray(format="rgb24")
                except (self._av.error.FFmpegError, ValueError) as error:
                    raise FileFormatError(
                        f"{self.path}: frame {index} cannot be converted to RGB ({_reason(error)})"
                    ) from error
                yield picture
                index += 1
        finally:
            container.close()

    def _start(self, container: Any, seek: tuple[int, dict[int, int]] | None) -> tuple[Any, Any, dict | None]:
        """-> (the video stream, its decoding iterator, {timestamp: frame index} after a seek, else None)."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding: the decoder keeps up with RAFT
        index_of = None
        if seek is not None:
            try:
                container.seek(seek[0], stream=stream, backward=True, any_frame=False)
                index_of = seek[1]
            except self._av.error.FFmpegError:
                container.seek(0, stream=stream, backward=True, any_frame=False)
        return stream, container.decode(stream), index_of

    def _keyframe_before(self, start: int) -> tuple[int, dict[int, int]] | None:
        """-> (the timestamp of the last keyframe at or before frame `start`, {timestamp: frame index}), from
        the packets alone; None where their timestamps cannot say (missing or repeated) or no keyframe comes
        before the frame."""
        container = self._open()
        stamps: list[int] = []
        keys: list[int] = []
        try:
            for packet in container.demux(container.streams.video[0]):
                if not packet.size:
                    continue  # the demuxer's closing empty packet
                if packet.pts is None:
                    return None
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except self._av.error.FFmpegError:
            return None  # decoding from the first frame reports what is wrong, where it is
        finally:
            container.close()
        stamps.sort()
        if start >= len(stamps) or len(set(stamps)) != len(stamps):
            return None
        before = [key for key in keys if key <= stamps[start]]
        if not before:
            return None
        return max(before), {stamp: index for index, stamp in enumerate(stamps)}

    def count_frames(self) -> int:
        """The number of frames: what the container records, else the video packets counted.

        The packets are demuxed, not decoded.

        Raises:
            FileFormatError: reading the packets fails.
        """
        if self.frame_count is not None:
            return self.frame_count
        container = self._open()
        try:
            return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
        except self._av.error.FFmpegError as error:
            raise FileFormatError(f"{self.path}: reading its packets failed ({_reason(error)})") from error
        finally:
            container.close()


def read_video(path: str | os.PathLike) -> VideoReader:
    """A video file's frames as (H, W, 3) uint8 RGB arrays, decoded as they are iterated.

    Never the whole file at once; `.fps` and `.frame_count` say what the container knows. Needs PyAV.

    Args:
        path: the video file.

    Returns:
        A `VideoReader` of the file.

    Raises:
        MissingFileError: the file does not exist.
        FileFormatError: the file is not a video PyAV can read.
        MissingDependency: PyAV is not installed.
    """
    return VideoReader(path)


def video_codec() -> str:
    """The encoder that `VideoWriter` uses: libx264 (H.264), else MPEG-4 part 2.

    libx264 where PyAV's FFmpeg has it, as its wheels do; else MPEG-4 part 2, with a warning.

    Returns:
        "libx264" or "mpeg4".

    Raises:
        MissingDependency: PyAV is not installed.
    """
    av = _import_av()
    if "libx264" in av.codecs_available:
        return "libx264"
    warnings.warn("PyAV's FFmpeg has no libx264 encoder: writing MPEG-4 part 2 video instead of H.264", stacklevel=2)
    return "mpeg4"


class VideoWriter:
    """Writes (H, W, 3) uint8 RGB frames to a video file as they come.

    H.264 (libx264, yuv420p, the pixel format every player decodes) in the container of the file's
    suffix, MP4 for .mp4. The stream takes the first frame's size; yuv420p needs even sides, so an odd
    height or width gets one more row or column, a copy of the last. close() (or leaving a `with` block,
    also through an exception) flushes the encoder and writes the container's index, so that the frames
    written so far play; a writer closed before any frame removes its file.

    Args:
        path: the video file; its suffix picks the container. It is created at once, so that an
            unwritable path fails before any work.
        fps: frames per second (a Fraction keeps NTSC rates exact).
        crf: x264's quality, 0 (lossless) to 51; 18 is visually lossless for flow pictures.

    Attributes:
        path: the video file, a Path.
        fps: the frame rate, a Fraction.
        codec: the encoder, as `video_codec` says.
        frames_written: the number of frames written so far.
        closed: whether `close` was called.

    Raises:
        InputError: `fps` is not a positive number of frames per second.
        PathError: the file cannot be written.
        MissingDependency: PyAV is not installed.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction = 30, crf: int = 18) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self._av = _import_av()
        self.codec = video_codec()
        self.crf = crf
        if self.path.is_dir():
            raise PathError(f"cannot write video {self.path}: it is a folder")
        try:
            # PyAV opens the file only when the first frame is written: create it now, so that an
            # unwritable path fails here, before any work.
            self.path.open("wb").close()
        except OSError as error:
            raise PathError(f"cannot write video {self.path}: {error}") from error
        try:
            self._container = self._av.open(str(self.path), mode="w")
        except (self._av.error.FFmpegError, OSError, ValueError) as error:
            self.path.unlink(missing_ok=True)
            raise PathError(f"cannot write video {self.path}: {error}") from error
        self._stream: Any = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0
        self.closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self, height: int, width: int) -> None:
        self._stream = self._container.add_stream(self.codec, rate=self.fps)
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            self._stream.options = {"crf": str(self.crf)}
        self._size = (height, width)

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame, of the first frame's size.

        Args:
            frame: (H, W, 3) uint8 RGB, of the first frame's size.

        Raises:
            InputError: the writer is closed, or the frame is not an (H, W, 3) uint8 array of the first
                frame's size.
            PathError: the video cannot be written.
        """
        if self.closed:
            raise InputError(f"{self.path}: the video writer is closed")
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
            raise InputError(f"expected an (H, W, 3) uint8 frame, got {getattr(frame, 'shape', type(frame))}")
        height, width = frame.shape[:2]
        if self._size is None:
            self._start(height, width)
        elif (height, width) != self._size:
            raise InputError(
                f"{self.path}: frame {self.frames_written} is {height}x{width} (HxW), the video is "
                f"{self._size[0]}x{self._size[1]}"
            )
        if height % 2 or width % 2:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        picture = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        picture.pts = self.frames_written  # in the stream's time base, 1 / fps
        self._mux(self._stream.encode(picture))
        self.frames_written += 1

    def _mux(self, packets: Iterable) -> None:
        try:
            for packet in packets:
                self._container.mux(packet)
        except (self._av.error.FFmpegError, OSError) as error:
            raise PathError(f"cannot write video {self.path}: {error}") from error

    def close(self) -> None:
        """Flush the encoder and close the file (again: nothing)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._stream is not None:
                self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            if self.frames_written == 0:
                self.path.unlink(missing_ok=True)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float | Fraction = 30) -> int:
    """Write (H, W, 3) uint8 RGB frames as an H.264 video (see `VideoWriter`).

    Args:
        path: the video file; its suffix picks the container.
        frames: (H, W, 3) uint8 RGB frames, all of the first one's size.
        fps: frames per second (a Fraction keeps NTSC rates exact).

    Returns:
        The number of frames written.

    Raises:
        InputError: `fps` or a frame that `VideoWriter` refuses.
        PathError: the file cannot be written.
        MissingDependency: PyAV is not installed.
    """
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


def _reason(error: BaseException) -> str:
    """FFmpeg's or the system's reason, without the errno number PyAV puts before it."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return str(text).splitlines()[0]
