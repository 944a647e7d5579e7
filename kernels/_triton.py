"""What the kernel modules share: launch checks and the interpreter switch."""

from __future__ import annotations

import os

import torch
import triton

PYRAMID_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1 when imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """All tensors on one device, and one that the kernels can run on."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{name}: inputs are on different devices: {sorted(str(d) for d in devices)}")
    (device,) = devices
    if device.type == "cpu" and not interpreting():
        raise ValueError(
            f"{name}: the Triton kernel got CPU tensors; it runs on CUDA, or on the CPU through Triton's "
            "interpreter when TRITON_INTERPRET=1 is set before triton is imported (or use the torch backend)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: unsupported device {device}")


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """What the references compute in: float64 for float64 input (the tests' judge), else float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)
