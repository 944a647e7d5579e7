"""What the kernel modules share: launch checks and the interpreter switch."""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from raft_engine.errors import InputError
from raft_engine.interpreter import interpreting

__all__ = [
    "PYRAMID_DTYPES",
    "check_device",
    "interpreting",
    "level_base",
    "level_centre",
    "next_power_of_2",
    "on_device",
    "program_cells",
    "size_class",
]

PYRAMID_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """All tensors on one device, and one that the kernels can run on."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise InputError(f"{name}: inputs are on different devices: {sorted(str(d) for d in devices)}")
    (device,) = devices
    if device.type == "cpu" and not interpreting():
        raise InputError(
            f"{name}: the Triton kernel got CPU tensors; it runs on CUDA, or on the CPU through Triton's "
            "interpreter when TRITON_INTERPRET=1 is set before triton is imported (or use the torch backend)"
        )
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"{name}: unsupported device {device}")


def on_device(tensor: torch.Tensor):
    """Launch on `tensor`'s GPU: Triton launches on the current CUDA device, whichever the tensors' is."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def size_class(count: int) -> int:
    """Autotuning bucket of a problem size: its power of two. The best block size at 128x160 is not
    the best at 4K, yet each size of its own would retune for every new shape."""
    return max(0, int(count) - 1).bit_length()


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)


# Shared pieces of the two lookup kernels -------------------------------------------------------


@triton.jit
def program_cells(height, width, num_cells, stride_cb, stride_ch, stride_cw, BLOCK_CELLS: tl.constexpr):
    """This program's cells of the 1/8 grid -> (cells, cell_ok, b, hw, coord_offset): the offset of
    each cell's x coordinate in `coords` (y is one channel stride further).

    Offsets, not loaded values: torch.compile's mutation analysis takes a pointer passed into a
    nested jit function as written, and would then copy `coords` around every lookup.
    """
    cells = tl.program_id(0).to(tl.int64) * BLOCK_CELLS + tl.arange(0, BLOCK_CELLS)
    cell_ok = cells < num_cells
    plane = height * width
    b = cells // plane
    hw = cells % plane
    coord_offset = b * stride_cb + (hw // width) * stride_ch + (hw % width) * stride_cw
    return cells, cell_ok, b, hw, coord_offset


@triton.jit
def level_base(level: tl.constexpr, level0, level1, level2, level3):
    """The pointer of pyramid level `level` (a compile-time choice)."""
    if level == 0:
        return level0
    elif level == 1:
        return level1
    elif level == 2:
        return level2
    else:
        return level3


@triton.jit
def level_centre(x, y, level: tl.constexpr, level_h, level_w, RADIUS: tl.constexpr):
    """Coordinates at `level` -> (floor of x, floor of y, fractional x, fractional y).

    Beyond r + 1 cells outside the map every tap is zero; clamping there keeps the int conversion safe.
    """
    cx = tl.minimum(tl.maximum(x * (0.5**level), -RADIUS - 2.0), level_w + RADIUS + 1.0)
    cy = tl.minimum(tl.maximum(y * (0.5**level), -RADIUS - 2.0), level_h + RADIUS + 1.0)
    x0f = tl.floor(cx)
    y0f = tl.floor(cy)
    return x0f.to(tl.int32), y0f.to(tl.int32), cx - x0f, cy - y0f
