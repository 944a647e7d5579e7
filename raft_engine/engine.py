"""FlowEngine: optical flow for image pairs of any size, in any of the supported input forms."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from raft_engine.compiled import CompiledForward
from raft_engine.correlation import (
    DenseCorrelation,
    OnDemandCorrelation,
    corr_lookup_ref,
    corr_ondemand_ref,
    dense_pyramid_bytes,
)
from raft_engine.inputs import (
    ArrayLike,
    DeviceLike,
    DTypeLike,
    ImageLike,
    Padder,
    check_iters,
    check_padding,
    check_pair,
    interpreting,
    parse_device,
    parse_dtype,
    to_image_batch,
)
from raft_engine.model import RAFT, FlowResult

if TYPE_CHECKING:
    from raft_engine.inspection import FlowTrace

from raft_engine.upsampling import BilinearUpsampler, ConvexUpsampler, Upsampler, convex_upsample_ref

__all__ = ["BACKENDS", "CORR_MODES", "FlowEngine", "FlowResult", "build_parts", "resolve_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
CORR_MODES = ("auto", "volume", "ondemand")
DEFAULT_CORR_BUDGET = 2 * 2**30  # bytes: 1080p (5.7 GB of dense pyramid) goes on-demand, 720p (1.1 GB) dense


def triton_available() -> bool:
    """Whether the triton package imports here (it installs on Linux only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """ "auto": Triton kernels on CUDA (the PyTorch reference, logged, where triton is missing), the
    PyTorch reference on the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if triton_available():
            return "triton"
        log.warning("backend='auto' on CUDA: the triton package is not installed, so the PyTorch reference runs")
        return "torch"
    if backend == "triton" and device.type == "cpu" and not interpreting():
        raise ValueError(
            "backend='triton' on the CPU runs Triton's interpreter: set TRITON_INTERPRET=1 before triton is "
            "imported, or use backend='torch'"
        )
    return backend


def triton_kernels() -> ModuleType:
    """raft_engine.kernels, or one clear error when the triton package is missing."""
    try:
        import raft_engine.kernels as kernels
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != "triton":
            raise
        raise ImportError(
            "backend='triton' needs the triton package, which is not installed: pip install triton "
            "(Linux), or use backend='torch'"
        ) from error
    return kernels


def build_parts(model: RAFT, backend: str, corr_dtype: torch.dtype) -> dict[str, RAFT]:
    """Models sharing `model`'s weights, with the dense ("volume") and with the on-demand ("ondemand")
    correlation, both on `backend` ("torch" or "triton")."""
    config = model.config
    levels, radius = config.corr_levels, config.corr_radius
    upsampler: Upsampler = BilinearUpsampler()
    if backend == "triton":
        kernels = triton_kernels()
        dense = DenseCorrelation(levels, radius, corr_dtype, kernels.corr_lookup.corr_lookup)
        ondemand = OnDemandCorrelation(levels, radius, corr_dtype, kernels.corr_ondemand.corr_ondemand)
        if config.convex_upsampling:
            upsampler = ConvexUpsampler(kernels.convex_upsample.convex_upsample)
    else:
        dense = DenseCorrelation(levels, radius, corr_dtype, corr_lookup_ref)
        ondemand = OnDemandCorrelation(levels, radius, corr_dtype, corr_ondemand_ref)
        if config.convex_upsampling:
            upsampler = ConvexUpsampler(convex_upsample_ref)
    return {
        "volume": RAFT(config, **model.parts(), correlation=dense, upsampler=upsampler),
        "ondemand": RAFT(config, **model.parts(), correlation=ondemand, upsampler=upsampler),
    }


class FlowEngine:
    """Optical flow with a RAFT model.

    model: a `RAFT` (e.g. from `load_model`); the engine works on its own copy.
    device: where to run; None means CUDA when available, else the CPU.
    dtype: "fp32" (default), "fp16" or "bf16". The half-precision modes run the encoders and the
        update block in that dtype; the correlation and the coordinates stay float32, like the
        published mixed-precision mode.
    padding: "sintel" (replicate, split evenly) or "kitti" (all of the height at the bottom).
    backend: "triton" (fused kernels), "torch" (the PyTorch reference), or "auto": Triton on CUDA,
        torch on the CPU. Triton on the CPU needs TRITON_INTERPRET=1 (Triton's interpreter; slow).
    corr: "volume" (the published all-pairs pyramid), "ondemand" (the same numbers, computed at
        lookup time in O(HW) memory), or "auto": on-demand when the dense pyramid would exceed
        `corr_budget` bytes, which is logged (logger "raft_engine.engine") and told by `corr_mode_for`.
    corr_dtype: storage of the pyramid (dense) or of the features (on-demand): "fp32" (default),
        "fp16" or "bf16"; lookups accumulate in float32 either way.
    compile: the whole forward under torch.compile(fullgraph=True), one graph per input shape
        (see `raft_engine.compiled`); `warmup` builds one ahead of time.
    cuda_graphs: replay the compiled forward as CUDA graphs (mode "reduce-overhead"); default: on
        when compiling on CUDA. Results are copied out, never overwritten by the next call.
    max_compiled_shapes: how many shapes get a compiled graph; further ones run eagerly, with a warning.
    channels_last: run the convolutions on channels-last tensors.
    """

    def __init__(
        self,
        model: RAFT,
        device: DeviceLike = None,
        dtype: DTypeLike = None,
        padding: str = "sintel",
        backend: str = "auto",
        corr: str = "auto",
        corr_dtype: DTypeLike = None,
        corr_budget: float = DEFAULT_CORR_BUDGET,
        compile: bool = False,
        cuda_graphs: bool | None = None,
        max_compiled_shapes: int = 8,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(model, RAFT):
            raise TypeError(f"model must be a raft_engine.RAFT (see load_model), got {type(model).__name__}")
        check_padding(padding)
        if corr not in CORR_MODES:
            raise ValueError(f"unknown corr {corr!r}; expected one of {CORR_MODES}")
        if isinstance(corr_budget, bool) or not isinstance(corr_budget, (int, float)) or not corr_budget > 0:
            raise ValueError(f"corr_budget must be a positive number of bytes, got {corr_budget!r}")
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.corr_dtype = parse_dtype(corr_dtype)
        self.padding = padding
        self.backend = resolve_backend(backend, self.device)
        self.corr = corr
        self.corr_budget = corr_budget
        if cuda_graphs is None:
            cuda_graphs = compile and self.device.type == "cuda"
        if cuda_graphs and not compile:
            raise ValueError("cuda_graphs=True needs compile=True: the graphs are recorded from the compiled forward")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        self.model = copy.deepcopy(model).eval().to(self.device).to_compute_dtype(self.dtype)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.config = model.config
        self._models = build_parts(self.model, self.backend, self.corr_dtype)
        self._reported: set[tuple[int, int, int]] = set()
        self.compiled = CompiledForward(self._models, cuda_graphs, max_compiled_shapes) if compile else None

    def __repr__(self) -> str:
        return (
            f"FlowEngine(RAFT-{self.config.variant}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, padding={self.padding!r}, "
            f"backend={self.backend!r}, corr={self.corr!r})"
        )

    def model_for(self, corr_mode: str) -> RAFT:
        """The engine's model (its weights, dtype and device) with the "volume" or "ondemand" correlation
        on its backend; `corr_mode_for` tells which one a shape uses."""
        if corr_mode not in self._models:
            raise ValueError(f"unknown correlation mode {corr_mode!r}; expected one of {tuple(self._models)}")
        return self._models[corr_mode]

    def corr_mode_for(self, batch: int, height: int, width: int) -> str:
        """ "volume" or "ondemand": what this engine uses for `batch` pairs of height x width images."""
        if self.corr != "auto":
            return self.corr
        padded_h, padded_w = Padder(height, width, self.padding).padded_size
        needed = dense_pyramid_bytes(batch, padded_h // 8, padded_w // 8, self.config.corr_levels, self.corr_dtype)
        mode = "ondemand" if needed > self.corr_budget else "volume"
        if (batch, height, width) not in self._reported:
            self._reported.add((batch, height, width))
            log.info(
                "corr='auto' chose %r for %d pair(s) of %dx%d: the dense pyramid would take %.2f GiB, budget %.2f GiB",
                mode,
                batch,
                height,
                width,
                needed / 2**30,
                self.corr_budget / 2**30,
            )
        return mode

    def prepare(self, image1: ImageLike, image2: ImageLike) -> tuple[torch.Tensor, torch.Tensor, Padder]:
        """Convert, validate and pad a pair -> (B, 3, H', W') float32 on the device, and the padder."""
        batch1 = to_image_batch(image1, "image1").to(self.device)
        batch2 = to_image_batch(image2, "image2").to(self.device)
        check_pair(batch1, batch2)
        height, width = batch1.shape[-2:]
        padder = Padder(height, width, self.padding)
        padded_h, padded_w = padder.padded_size
        minimum = self.config.min_image_size
        if padded_h < minimum or padded_w < minimum:
            raise ValueError(
                f"images of {height}x{width} (HxW) are too small for RAFT: padded to {padded_h}x{padded_w}, "
                f"they must be at least {minimum}x{minimum}, so that the 1/8 feature grid keeps "
                f"{self.config.min_feature_size // 2 ** (self.config.corr_levels - 1)} cells at the coarsest "
                f"of its {self.config.corr_levels} correlation levels"
            )
        # One memory layout whatever the input's: compiled graphs are specialised to strides.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        padded1 = padder.pad(batch1).contiguous(memory_format=layout)
        padded2 = padder.pad(batch2).contiguous(memory_format=layout)
        return padded1, padded2, padder

    def check_flow_init(self, flow_init: ArrayLike, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        if isinstance(flow_init, np.ndarray):
            flow_init = torch.from_numpy(flow_init)
        if not isinstance(flow_init, torch.Tensor):
            raise TypeError(f"flow_init must be a torch tensor or numpy array, got {type(flow_init).__name__}")
        expected = (batch, 2, *grid)
        if tuple(flow_init.shape) != expected:
            raise ValueError(
                f"flow_init has shape {tuple(flow_init.shape)}, expected {expected}: (B, 2, H/8, W/8) on the "
                "padded 1/8 grid, e.g. the flow_low of the previous result"
            )
        if not flow_init.dtype.is_floating_point:
            raise ValueError(f"flow_init must be floating point, got {flow_init.dtype}")
        flow_init = flow_init.to(self.device, torch.float32)
        if not bool(flow_init.isfinite().all()):
            raise ValueError("flow_init contains NaN or Inf")
        return flow_init

    @torch.inference_mode()
    def estimate(
        self, image1: ImageLike, image2: ImageLike, iters: int = 12, flow_init: ArrayLike | None = None
    ) -> FlowResult:
        """Flow from image1 to image2 (both (H, W, 3)/(3, H, W) or batched; see `to_image_batch`)."""
        iters = check_iters(iters)
        padded1, padded2, padder = self.prepare(image1, image2)
        checked_init = None
        if flow_init is not None:
            grid = (padded1.shape[-2] // 8, padded1.shape[-1] // 8)
            checked_init = self.check_flow_init(flow_init, padded1.shape[0], grid)
        mode = self.corr_mode_for(padded1.shape[0], padder.height, padder.width)
        if self.compiled is not None:
            output = self.compiled(mode, padded1, padded2, iters, checked_init)
        else:
            output = self._models[mode](padded1, padded2, iters=iters, flow_init=checked_init)
        return FlowResult(flow=padder.unpad(output.flow), flow_low=output.flow_low)

    @torch.inference_mode()
    def trace(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int = 12,
        pixels: Iterable[tuple[float, float]] = (),
        flow_init: ArrayLike | None = None,
    ) -> FlowTrace:
        """Run one pair and keep RAFT's internals: feature maps, and for each test pixel (x, y) its
        correlation response maps, correspondences per iteration and lookup windows. See
        `raft_engine.inspection.FlowTrace`; `raft_engine.report.write_report` draws it."""
        from raft_engine.inspection import trace_model

        iters = check_iters(iters)
        padded1, padded2, padder = self.prepare(image1, image2)
        if padded1.shape[0] != 1:
            raise ValueError(f"trace takes one pair of images, got a batch of {padded1.shape[0]}")
        checked_init = None
        if flow_init is not None:
            grid = (padded1.shape[-2] // 8, padded1.shape[-1] // 8)
            checked_init = self.check_flow_init(flow_init, 1, grid)
        model = self.model_for(self.corr_mode_for(1, padder.height, padder.width))
        return trace_model(model, padded1, padded2, padder, iters, pixels, checked_init)

    def warmup(self, batch: int, height: int, width: int, iters: int = 12, warm_start: bool = False) -> float:
        """Run `batch` pairs of height x width once (three times with CUDA graphs: warm-up, record,
        replay) so that the compiled graph of that shape exists before serving -> seconds taken."""
        iters = check_iters(iters)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, batch, 3, height, width), generator=generator, dtype=torch.uint8)
        flow_init = None
        if warm_start:
            padded_h, padded_w = Padder(height, width, self.padding).padded_size
            flow_init = torch.zeros(batch, 2, padded_h // 8, padded_w // 8)
        repeats = 3 if self.compiled is not None and self.compiled.cuda_graphs else 1
        for _ in range(repeats):
            self.estimate(images[0], images[1], iters=iters, flow_init=flow_init)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def __call__(self, image1: ImageLike, image2: ImageLike, iters: int = 12) -> torch.Tensor:
        """The flow (B, 2, H, W) float32 of `estimate`."""
        return self.estimate(image1, image2, iters=iters).flow
