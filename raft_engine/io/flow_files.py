"""Reading images, reading and writing video (PyAV, the optional `video` extra), and reading/writing
flow files: Middlebury .flo and KITTI 16-bit PNG.

Flow arrays here are numpy (H, W, 2) float32, (u, v) = (x, y) displacement in pixels; the writers
also take a torch tensor (2, H, W), as a model returns per image. Flow files are written to a
temporary name beside the target and renamed into place: an interrupted write never leaves a
truncated file.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

FLO_MAGIC = 202021.25  # "PIEH" read as a little-endian float32
KITTI_SCALE = 64.0
KITTI_OFFSET = 2**15


def as_flow_array(flow, name: str = "flow") -> np.ndarray:
    """numpy (H, W, 2) or torch (2, H, W) -> numpy (H, W, 2) float32."""
    if hasattr(flow, "detach") and hasattr(flow, "permute"):  # torch.Tensor, without importing torch
        if flow.ndim != 3 or flow.shape[0] != 2:
            raise ValueError(f"{name}: expected a torch tensor (2, H, W), got shape {tuple(flow.shape)}")
        flow = flow.detach().float().permute(1, 2, 0).cpu().numpy()
    if not isinstance(flow, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array (H, W, 2) or a torch tensor (2, H, W), got {type(flow).__name__}"
        )
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{name}: expected a numpy array (H, W, 2), got shape {flow.shape}")
    return np.ascontiguousarray(flow, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit image file -> (H, W, 3) uint8 RGB. Grayscale is repeated to 3 channels; an alpha
    channel is accepted only when fully opaque; 16-bit images are refused rather than truncated."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        opened = Image.open(path)
        # Pillow decodes 16-bit colour PNGs to 8-bit "RGB"; the raw mode of the tile still says 16.
        rawmodes = [str(tile[3]) for tile in opened.tile]  # (codec, extents, offset, rawmode)
        opened.load()
    except (OSError, SyntaxError) as error:  # PIL raises these for unreadable or truncated files
        raise ValueError(f"cannot read image {path}: {error}") from error
    image: Image.Image = opened  # conversions below return plain images
    if image.mode in ("I", "I;16", "I;16B", "F") or any(";16" in mode for mode in rawmodes):
        raise ValueError(
            f"{path} is a 16-bit or floating-point image (mode {image.mode}); convert it to 8-bit RGB first"
        )
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            raise ValueError(f"{path} has transparent pixels; flatten its alpha channel first")
        image = image.convert("RGB")
    if image.mode == "L":
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise ValueError(f"{path} has unsupported image mode {image.mode!r}; convert it to RGB first")
    return np.asarray(image).copy()


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """(H, W, 3) uint8 -> an image file whose format follows the suffix (PNG recommended)."""
    from PIL import Image

    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {getattr(image, 'shape', type(image))}")
    Image.fromarray(image).save(path)


# ------------------------------------------------------------------------------------------------
# Middlebury .flo: "PIEH", int32 width, int32 height, then float32 (u, v) interleaved, row-major.


def read_flo(path: str | os.PathLike) -> np.ndarray:
    data = Path(path).read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path}: too short for a .flo file ({len(data)} bytes)")
    magic, width, height = struct.unpack("<fii", data[:12])
    if magic != FLO_MAGIC:
        raise ValueError(f"{path}: not a Middlebury .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    if width <= 0 or height <= 0 or len(data) != 12 + 8 * width * height:
        raise ValueError(f"{path}: header says {width}x{height} (WxH), which does not match the file size {len(data)}")
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(height, width, 2).astype(np.float32)


def write_flo(path: str | os.PathLike, flow) -> None:
    flow = as_flow_array(flow)
    height, width = flow.shape[:2]
    _write_atomically(path, struct.pack("<fii", FLO_MAGIC, width, height) + flow.astype("<f4").tobytes())


def _write_atomically(path: str | os.PathLike, payload: bytes) -> None:
    """Write `payload` to a temporary file beside `path`, then rename it to `path` (atomic on POSIX and
    Windows): an error, Ctrl-C or a full disk mid-write leaves the previous file or none, never a
    truncated one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(payload)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------
# KITTI flow: a 16-bit RGB PNG, R = u * 64 + 2^15, G = v * 64 + 2^15, B = 1 where valid.
# Pillow reduces 16-bit colour PNGs to 8 bits, so the PNG container is handled here.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _write_png16_rgb(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """pixels: (H, W, 3) uint16."""
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").reshape(height, width * 6 // 2).view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = (b"IHDR", header), (b"IDAT", zlib.compress(raw.tobytes(), 6)), (b"IEND", b"")
    _write_atomically(path, _PNG_SIGNATURE + b"".join(_png_chunk(kind, payload) for kind, payload in chunks))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(raw: np.ndarray, height: int, width: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters -> (H, W*bpp) uint8.

    A byte depends on its left (same byte of the previous pixel), upper and upper-left neighbours,
    so pixels on one anti-diagonal are independent: H + W - 1 vectorised steps instead of H * W.
    """
    rows = raw.reshape(height, 1 + width * bpp)
    types = rows[:, 0].astype(np.int32)
    if types.max(initial=0) > 4:
        raise ValueError(f"invalid PNG filter type {types.max()}")
    filtered = rows[:, 1:].reshape(height, width, bpp).astype(np.int32)
    if not types.any():
        return filtered.astype(np.uint8).reshape(height, width * bpp)
    recon = np.zeros((height + 1, width + 1, bpp), np.int32)  # row 0 and column 0: zero padding
    for diagonal in range(height + width - 1):
        r = np.arange(max(0, diagonal - width + 1), min(height, diagonal + 1))
        c = diagonal - r
        left, up, up_left = recon[r + 1, c], recon[r, c + 1], recon[r, c]
        kind = types[r][:, None]
        predicted = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, up, (left + up) // 2, _paeth(left, up, up_left)],
            default=0,
        )
        recon[r + 1, c + 1] = (filtered[r, c] + predicted) & 0xFF
    return recon[1:, 1:].astype(np.uint8).reshape(height, width * bpp)


def _read_png16_rgb(path: str | os.PathLike) -> np.ndarray:
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length] or b"\0\0\0\0")
        if len(payload) != length or crc != zlib.crc32(kind + payload):
            raise ValueError(f"{path}: corrupt PNG chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError(f"{path}: PNG without image data")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or colour != 2:
        raise ValueError(
            f"{path}: a KITTI flow PNG is 16-bit RGB; this one has bit depth {depth}, colour type {colour}"
        )
    if interlace:
        raise ValueError(f"{path}: interlaced PNGs are not supported")
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error as error:  # chunks with valid CRCs around a cut-short or corrupt deflate stream
        raise ValueError(f"{path}: corrupt PNG image data ({error})") from error
    if raw.size != height * (1 + width * 6):
        raise ValueError(f"{path}: PNG data size does not match its {width}x{height} header")
    rows = _unfilter(raw, height, width, 6)
    return rows.reshape(height, width, 3, 2).astype(np.uint16) @ np.array([256, 1], np.uint16)


def read_kitti_flow(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """-> (flow (H, W, 2) float32, valid (H, W) bool). Invalid pixels have zero flow."""
    pixels = _read_png16_rgb(path).astype(np.float32)
    valid = pixels[..., 2] > 0
    flow = (pixels[..., :2] - KITTI_OFFSET) / KITTI_SCALE
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: str | os.PathLike, flow, valid: np.ndarray | None = None) -> None:
    """valid: (H, W) bool, default all valid. The format holds |u|, |v| < 512 in steps of 1/64 px."""
    flow = as_flow_array(flow)
    height, width = flow.shape[:2]
    if valid is None:
        valid = np.ones((height, width), bool)
    valid = np.asarray(valid)
    if valid.shape != (height, width):
        raise ValueError(f"valid mask has shape {valid.shape}, flow is {height}x{width}")
    valid = valid.astype(bool)
    encoded = np.rint(flow.astype(np.float64) * KITTI_SCALE) + KITTI_OFFSET
    if not np.isfinite(flow[valid]).all():
        raise ValueError("flow has NaN or Inf at valid pixels; mark them invalid")
    outside = valid & ((encoded < 0) | (encoded > 65535)).any(axis=2)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} valid pixels have flow beyond the KITTI PNG range (|u|, |v| <= 511.98 px); "
            "mark them invalid or store the flow as .flo"
        )
    encoded[~valid] = KITTI_OFFSET
    pixels = np.concatenate([encoded, valid[..., None].astype(np.float64)], axis=2)
    _write_png16_rgb(path, pixels.astype(np.uint16))


# ------------------------------------------------------------------------------------------------
# Video, through PyAV (FFmpeg's libraries in its wheels, libx264 included): `pip install av`, or the
# project's `video` extra.

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})
VIDEO_INSTALL = 'pip install av, or the project\'s video extra: pip install -e ".[video]"'


def _import_av() -> ModuleType:
    """The av module, or a ModuleNotFoundError (name "av") that says how to install it."""
    try:
        import av
    except ModuleNotFoundError as error:
        if error.name != "av":
            raise
        raise ModuleNotFoundError(f"video needs PyAV (the av package): {VIDEO_INSTALL}", name="av") from error
    return av


def _as_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not 0 < fps < 10_000:
        raise ValueError(f"frame rate must be a positive number of frames per second, got {fps!r}")
    # 29.97 -> 2997/100; NTSC rates given as Fractions (30000/1001) stay exact.
    return Fraction(fps).limit_denominator(100_000)


class VideoReader:
    """The frames of a video file, decoded one at a time as they are iterated: (H, W, 3) uint8 RGB.

    What the container says, read when the reader is made: `fps` (a Fraction; None when unknown),
    `frame_count` (None when the container does not record it, as in many MKV and WebM files),
    `width`, `height`, `codec`. Each iteration opens the file anew and decodes from the start; the
    file is closed when the iteration ends or is abandoned. Unreadable files raise a ValueError naming
    the file; a decoding error part-way raises a ValueError after the frames before it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such video file: {self.path}")
        self._av = _import_av()
        container = self._open()
        try:
            stream = container.streams.video[0]
            context = stream.codec_context
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
            raise ValueError(f"cannot read video {self.path}: {error}") from error
        if not container.streams.video:
            container.close()
            raise ValueError(f"cannot read video {self.path}: the file has no video stream")
        return container

    def __iter__(self) -> Iterator[np.ndarray]:
        container = self._open()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding: the decoder keeps up with RAFT
            decoded = container.decode(stream)
            index = 0
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    return
                except self._av.error.FFmpegError as error:
                    raise ValueError(f"{self.path}: decoding failed after {index} frame(s): {error}") from error
                yield frame.to_ndarray(format="rgb24")
                index += 1
        finally:
            container.close()


def read_video(path: str | os.PathLike) -> VideoReader:
    """A video file's frames as (H, W, 3) uint8 RGB arrays, decoded as they are iterated (never the
    whole file at once); `.fps` and `.frame_count` say what the container knows. Needs PyAV."""
    return VideoReader(path)


def video_codec() -> str:
    """The encoder that `VideoWriter` uses: libx264 (H.264) where PyAV's FFmpeg has it, as its wheels do;
    else MPEG-4 part 2, with a warning."""
    av = _import_av()
    if "libx264" in av.codecs_available:
        return "libx264"
    warnings.warn("PyAV's FFmpeg has no libx264 encoder: writing MPEG-4 part 2 video instead of H.264", stacklevel=2)
    return "mpeg4"


class VideoWriter:
    """Writes (H, W, 3) uint8 RGB frames to a video file as they come: H.264 (libx264, yuv420p, the
    pixel format every player decodes) in the container of the file's suffix, MP4 for .mp4.

    fps: frames per second (a Fraction keeps NTSC rates exact). crf: x264's quality, 0 (lossless) to 51;
    18 is visually lossless for flow pictures. The stream takes the first frame's size; yuv420p needs
    even sides, so an odd height or width gets one more row or column, a copy of the last. close() (or
    leaving a `with` block, also through an exception) flushes the encoder and writes the container's
    index, so that the frames written so far play; a writer closed before any frame removes its file.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction = 30, crf: int = 18) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self._av = _import_av()
        self.codec = video_codec()
        self.crf = crf
        if self.path.is_dir():
            raise IsADirectoryError(f"cannot write video {self.path}: it is a folder")
        try:
            # PyAV opens the file only when the first frame is written: create it now, so that an
            # unwritable path fails here, before any work.
            self.path.open("wb").close()
        except OSError as error:
            raise OSError(f"cannot write video {self.path}: {error}") from error
        try:
            self._container = self._av.open(str(self.path), mode="w")
        except (self._av.error.FFmpegError, OSError, ValueError) as error:
            self.path.unlink(missing_ok=True)
            raise OSError(f"cannot write video {self.path}: {error}") from error
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
        """Append one (H, W, 3) uint8 RGB frame, of the first frame's size."""
        if self.closed:
            raise ValueError(f"{self.path}: the video writer is closed")
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {getattr(frame, 'shape', type(frame))}")
        height, width = frame.shape[:2]
        if self._size is None:
            self._start(height, width)
        elif (height, width) != self._size:
            raise ValueError(
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
            raise OSError(f"cannot write video {self.path}: {error}") from error

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
    """Write (H, W, 3) uint8 RGB frames as an H.264 video (see `VideoWriter`) -> the number written."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written
