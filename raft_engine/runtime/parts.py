"""Backend resolution and part assembly: which kernels a FlowEngine's model runs (the Triton kernels or
their PyTorch references), put together as RAFT models that share one set of weights, one per
correlation mode."""

from __future__ import annotations

import logging
from types import ModuleType

import torch

from raft_engine.errors import InputError, MissingDependency
from raft_engine.interpreter import interpreting, triton_available
from raft_engine.model.correlation import DenseCorrelation, OnDemandCorrelation, corr_lookup_ref, corr_ondemand_ref
from raft_engine.model.raft import RAFT
from raft_engine.model.upsampling import BilinearUpsampler, ConvexUpsampler, Upsampler, convex_upsample_ref
from raft_engine.runtime.options import BACKENDS

log = logging.getLogger(__name__)


def resolve_backend(backend: str, device: torch.device) -> str:
    """ "auto": Triton kernels on CUDA (the PyTorch reference, logged, where triton is missing), the
    PyTorch reference on the CPU."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if triton_available():
            return "triton"
        log.warning("backend='auto' on CUDA: the triton package is not installed, so the PyTorch reference runs")
        return "torch"
    if backend == "triton" and device.type == "cpu" and not interpreting():
        raise InputError(
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
        raise MissingDependency(
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
