"""The benchmark's configurations: the resolutions by name, the backends it measures, the named sweeps
(the option lists they cross and their run counts) and one configuration (`BenchConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from raft_engine.errors import InputError
from raft_engine.runtime.options import DTYPE_NAMES

if TYPE_CHECKING:
    pass


RESOLUTIONS = {"sintel": (440, 1024), "kitti": (376, 1248), "1080p": (1088, 1920), "4k": (2160, 3840)}
# What a benchmark configuration runs: the engine's backends, compiled or not, ONNX Runtime's providers and the peer.
MEASURED_BACKENDS = (
    "torch", "triton", "compiled", "compiled+graphs", "ort-cpu", "ort-cuda", "ort-tensorrt", "torchvision",
)  # fmt: skip


@dataclass(frozen=True)
class Sweep:
    """A named sweep: the option lists it crosses, and the warm-up and timed runs of each configuration."""

    variants: tuple[str, ...]
    resolutions: tuple[str, ...]  # names in RESOLUTIONS, or HxW
    batches: tuple[int, ...]
    iters: tuple[int, ...]
    dtypes: tuple[str, ...]
    backends: tuple[str, ...]
    cpu_backends: tuple[str, ...] | None = None  # the backends off CUDA, where they differ
    warmup: int = 3
    runs: int = 20

    def backends_on(self, device: torch.device) -> list[str]:
        if device.type != "cuda" and self.cpu_backends is not None:
            return list(self.cpu_backends)
        return list(self.backends)

    def sizes(self) -> list[tuple[int, int]]:
        return [parse_resolution(r) for r in self.resolutions]


SWEEPS = {
    # --quick: a smoke test that finishes in under a minute, on any device.
    "quick": Sweep(
        variants=("small",),
        resolutions=("128x160",),
        batches=(1,),
        iters=(4,),
        dtypes=("fp32", "bf16"),
        backends=("torch", "ort-cpu"),
        warmup=1,
        runs=3,
    ),
    # Without --quick or --sweep: RAFT-large at Sintel's size, with every GPU backend, or the CPU's.
    "default": Sweep(
        variants=("large",),
        resolutions=("sintel",),
        batches=(1,),
        iters=(12,),
        dtypes=("fp32",),
        backends=("torch", "triton", "compiled", "compiled+graphs", "ort-cuda", "torchvision"),
        cpu_backends=("torch", "ort-cpu"),
    ),
    # The standard GPU sweep: RAFT-large and small, sintel and 1080p, batch 1/8/32, 12 and 32 iterations.
    "standard": Sweep(
        variants=("large", "small"),
        resolutions=("sintel", "1080p"),
        batches=(1, 8, 32),
        iters=(12, 32),
        dtypes=DTYPE_NAMES,
        backends=MEASURED_BACKENDS,
    ),
    # ptlflow's published setting: 500x1000 (padded to 504x1000), 32 iterations, batch 1.
    "ptlflow": Sweep(
        variants=("large",),
        resolutions=("500x1000",),
        batches=(1,),
        iters=(32,),
        dtypes=("fp32", "fp16"),
        backends=MEASURED_BACKENDS,
    ),
}


@dataclass(frozen=True)
class BenchConfig:
    backend: str
    variant: str
    dtype: str
    batch: int
    height: int
    width: int
    iters: int
    corr: str

    def describe(self) -> str:
        return (
            f"{self.backend} RAFT-{self.variant} {self.dtype} b{self.batch} {self.height}x{self.width} "
            f"{self.iters}it corr={self.corr}"
        )


def parse_resolution(text: str) -> tuple[int, int]:
    """A name of RESOLUTIONS or HxW -> (height, width); anything else raises `InputError`."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(
            f"resolution {text!r}: expected one of {', '.join(RESOLUTIONS)} or HxW (e.g. 436x1024)"
        ) from None
    if height < 1 or width < 1:
        raise InputError(f"resolution {text!r} must be positive")
    return height, width


def build_configs(
    variants: list[str],
    resolutions: list[tuple[int, int]],
    batches: list[int],
    iters: list[int],
    dtypes: list[str],
    corrs: list[str],
    backends: list[str],
) -> list[BenchConfig]:
    """Every combination of the lists, in this order of nesting (backends innermost)."""
    return [
        BenchConfig(backend, variant, dtype, batch, height, width, count, corr)
        for variant in variants
        for height, width in resolutions
        for batch in batches
        for count in iters
        for dtype in dtypes
        for corr in corrs
        for backend in backends
    ]
