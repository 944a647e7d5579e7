"""What the runtime and the tools built on it need to know of a device: its name for records, waiting for
its work, and float32 kept as float32 (no TF32) while measuring."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, core count and torch's thread count (platform.processor() is
    empty on most Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    model = names[0] if names else platform.processor() or platform.machine() or "cpu"
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Inside: float32 convolutions (cuDNN) and matrix products in IEEE float32, not TF32 (10-bit
    mantissas), which PyTorch uses for convolutions on Ampere and later GPUs by default. The previous
    settings come back after, also when the body raises. The legacy flags, not `fp32_precision`: once the
    new API is used, torch.export (torch 2.13) fails reading the legacy flag."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
