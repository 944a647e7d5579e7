"""Flow files: Middlebury .flo and KITTI 16-bit PNG, and the flow arrays they hold.

Flow arrays here are numpy (H, W, 2) float32, (u, v) = (x, y) displacement in pixels; the writers
also take a torch tensor (2, H, W), as a model returns per image. Flow files are written to a
temporary name beside the target and renamed into place: an interrupted write never leaves a
truncated file.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from raft_engine.errors import FileFormatError, InputError, InputTypeError
from raft_engine.io.files import read_bytes, write_atomically

FLO_MAGIC = 202021.25  # "PIEH" read as a little-endian float32
KITTI_SCALE = 64.0
KITTI_OFFSET = 2**15


def as_flow_array(flow, name: str = "flow") -> np.ndarray:
    """A flow as a numpy (H, W, 2) float32 array, from numpy (H, W, 2) or torch (2, H, W).

    Args:
        flow: a numpy array (H, W, 2) or a torch tensor (2, H, W), (u, v) in pixels.
        name: what the flow is called in error messages.

    Returns:
        A contiguous numpy array (H, W, 2) float32.

    Raises:
        InputError: the array or tensor has another shape.
        InputTypeError: `flow` is neither a numpy array nor a torch tensor.
    """
    if hasattr(flow, "detach") and hasattr(flow, "permute"):  # torch.Tensor, without importing torch
        if flow.ndim != 3 or flow.shape[0] != 2:
            raise InputError(f"{name}: expected a torch tensor (2, H, W), got shape {tuple(flow.shape)}")
        flow = flow.detach().float().permute(1, 2, 0).cpu().numpy()
    if not isinstance(flow, np.ndarray):
        raise InputTypeError(
            f"{name}: expected a numpy array (H, W, 2) or a torch tensor (2, H, W), got {type(flow).__name__}"
        )
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"{name}: expected a numpy array (H, W, 2), got shape {flow.shape}")
    return np.ascontiguousarray(flow, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Middlebury .flo: "PIEH", int32 width, int32 height, then float32 (u, v) interleaved, row-major.


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury .flo file.

    Args:
        path: the .flo file.

    Returns:
        The flow, (H, W, 2) float32.

    Raises:
        FileFormatError: the file is not a Middlebury .flo file (too short, another magic number, or a
            header that does not match the file size).
        PathError: the file cannot be read (`MissingFileError` where it does not exist).
    """
    data = read_bytes(path, "flow file")
    if len(data) < 12:
        raise FileFormatError(f"{path}: too short for a .flo file ({len(data)} bytes)")
    magic, width, height = struct.unpack("<fii", data[:12])
    if magic != FLO_MAGIC:
        raise FileFormatError(f"{path}: not a Middlebury .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    if width <= 0 or height <= 0 or len(data) != 12 + 8 * width * height:
        raise FileFormatError(
            f"{path}: header says {width}x{height} (WxH), which does not match the file size {len(data)}"
        )
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(height, width, 2).astype(np.float32)


def flo_bytes(flow) -> bytes:
    """The contents of a Middlebury .flo file of `flow`.

    Args:
        flow: numpy (H, W, 2) or torch (2, H, W), as `as_flow_array` takes.

    Returns:
        The file's bytes: "PIEH", int32 width, int32 height, then float32 (u, v) interleaved, row-major.

    Raises:
        InputError: `flow` is not a flow of one of those shapes (see `as_flow_array`).
    """
    flow = as_flow_array(flow)
    height, width = flow.shape[:2]
    return struct.pack("<fii", FLO_MAGIC, width, height) + flow.astype("<f4").tobytes()


def write_flo(path: str | os.PathLike, flow) -> None:
    """Write `flow` as a Middlebury .flo file, atomically.

    Args:
        path: the file to write.
        flow: numpy (H, W, 2) or torch (2, H, W), as `as_flow_array` takes.

    Raises:
        InputError: `flow` is not a flow of one of those shapes (see `as_flow_array`).
        PathError: the file cannot be written.
    """
    write_atomically(path, flo_bytes(flow))


# ------------------------------------------------------------------------------------------------
# KITTI flow: a 16-bit RGB PNG, R = u * 64 + 2^15, G = v * 64 + 2^15, B = 1 where valid.
# Pillow reduces 16-bit colour PNGs to 8 bits, so the PNG container is handled here.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """pixels: (H, W, 3) uint16 -> a PNG file's contents."""
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").reshape(height, width * 6 // 2).view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = (b"IHDR", header), (b"IDAT", zlib.compress(raw.tobytes(), 6)), (b"IEND", b"")
    return _PNG_SIGNATURE + b"".join(_png_chunk(kind, payload) for kind, payload in chunks)


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
        raise FileFormatError(f"invalid PNG filter type {types.max()}")
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
    data = read_bytes(path, "KITTI flow file")
    if not data.startswith(_PNG_SIGNATURE):
        raise FileFormatError(f"{path}: not a PNG file")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        crc_bytes = data[pos + 8 + length : pos + 12 + length]
        if (
            len(payload) != length
            or len(crc_bytes) != 4
            or struct.unpack(">I", crc_bytes)[0] != zlib.crc32(kind + payload)
        ):
            raise FileFormatError(f"{path}: corrupt PNG chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise FileFormatError(f"{path}: PNG without image data")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or colour != 2:
        raise FileFormatError(
            f"{path}: a KITTI flow PNG is 16-bit RGB; this one has bit depth {depth}, colour type {colour}"
        )
    if interlace:
        raise FileFormatError(f"{path}: interlaced PNGs are not supported")
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error as error:  # chunks with valid CRCs around a cut-short or corrupt deflate stream
        raise FileFormatError(f"{path}: corrupt PNG image data ({error})") from error
    if raw.size != height * (1 + width * 6):
        raise FileFormatError(f"{path}: PNG data size does not match its {width}x{height} header")
    rows = _unfilter(raw, height, width, 6)
    return rows.reshape(height, width, 3, 2).astype(np.uint16) @ np.array([256, 1], np.uint16)


def read_kitti_flow(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI 16-bit PNG flow file.

    Args:
        path: the PNG file.

    Returns:
        (flow, valid): flow (H, W, 2) float32, valid (H, W) bool. Invalid pixels have zero flow.

    Raises:
        FileFormatError: the file is not a 16-bit RGB PNG, is interlaced, or is corrupt.
        PathError: the file cannot be read (`MissingFileError` where it does not exist).
    """
    pixels = _read_png16_rgb(path).astype(np.float32)
    valid = pixels[..., 2] > 0
    flow = (pixels[..., :2] - KITTI_OFFSET) / KITTI_SCALE
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: str | os.PathLike, flow, valid: np.ndarray | None = None) -> None:
    """Write `flow` as a KITTI 16-bit PNG flow file, atomically.

    The format holds |u|, |v| < 512 in steps of 1/64 px.

    Args:
        path: the file to write.
        flow: numpy (H, W, 2) or torch (2, H, W), as `as_flow_array` takes.
        valid: (H, W) bool, default all valid.

    Raises:
        InputError: `valid` does not match the flow's size, or a valid pixel has NaN, Inf or flow beyond the
            format's range (mark it invalid, or store the flow as .flo).
        PathError: the file cannot be written.
    """
    write_atomically(path, kitti_flow_bytes(flow, valid))


def kitti_flow_bytes(flow, valid: np.ndarray | None = None) -> bytes:
    """The contents of a KITTI 16-bit PNG flow file (see `write_kitti_flow`).

    Args:
        flow: numpy (H, W, 2) or torch (2, H, W), as `as_flow_array` takes.
        valid: (H, W) bool, default all valid.

    Returns:
        The PNG file's bytes: R = u * 64 + 2^15, G = v * 64 + 2^15, B = 1 where valid; invalid pixels are
        stored with zero flow.

    Raises:
        InputError: `valid` does not match the flow's size, or a valid pixel has NaN, Inf or flow beyond the
            format's range.
    """
    flow = as_flow_array(flow)
    height, width = flow.shape[:2]
    if valid is None:
        valid = np.ones((height, width), bool)
    valid = np.asarray(valid)
    if valid.shape != (height, width):
        raise InputError(f"valid mask has shape {valid.shape}, flow is {height}x{width}")
    valid = valid.astype(bool)
    encoded = np.rint(flow.astype(np.float64) * KITTI_SCALE) + KITTI_OFFSET
    if not np.isfinite(flow[valid]).all():
        raise InputError("flow has NaN or Inf at valid pixels; mark them invalid")
    outside = valid & ((encoded < 0) | (encoded > 65535)).any(axis=2)
    if outside.any():
        raise InputError(
            f"{int(outside.sum())} valid pixels have flow beyond the KITTI PNG range (|u|, |v| <= 511.98 px); "
            "mark them invalid or store the flow as .flo"
        )
    encoded[~valid] = KITTI_OFFSET
    pixels = np.concatenate([encoded, valid[..., None].astype(np.float64)], axis=2)
    return _png16_rgb(pixels.astype(np.uint16))
