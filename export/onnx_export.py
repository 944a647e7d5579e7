"""ONNX export of RAFT with a fixed iteration count, verified against PyTorch with ONNX Runtime.

The graph takes `image1`, `image2`: float32 (B, 3, H, W) in 0..255 (the 2 * (x / 255) - 1
normalisation is inside), H and W multiples of 8, and returns `flow`: float32 (B, 2, H, W), and
optionally `flow_low` (B, 2, H/8, W/8). The iterations are unrolled. Kernels are replaced by their
PyTorch references, so the graph holds standard ONNX operators only (GridSample needs opset 16).

Correlation (`corr`): "volume" builds the published all-pairs volume and its pyramid, (H/8 * W/8)^2
elements per level 0: 1.07e9 (4.3 GB) per pair at 1088x1920, out of reach at 4K. "ondemand" computes
the same numbers at lookup time from the features (`raft_engine.model.correlation.corr_ondemand_gather`:
Gather, MatMul and elementwise operators), in memory linear in the image size. "auto" takes the volume
while its pyramid fits `corr_budget` bytes (FlowEngine's rule) and 2^31-1 elements, else on-demand.

Dynamic size (`dynamic_size=True`): one graph for any height and width that are multiples of 8 and at
least the model's minimum (128: RAFT's 1/8 grid must survive 3 poolings), up to 8192; on-demand only, since
a dense volume of a size nobody checked can pass ONNX Runtime's 32-bit indexing limit.

fp16: the encoders and the update block run in float16 while the correlation lookup (GridSample)
and InstanceNorm stay float32, the engine's own mixed-precision mode. That suits ONNX Runtime's CUDA
GridSample, which is float32-only, and avoids fp16 InstanceNormalization, which is wrong in ONNX
Runtime and TensorRT; the alternative (a Gather-based lookup in fp16) was not needed for that.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raft_engine.errors import ExportError, InputError, InputTypeError
from raft_engine.export.limits import MAX_DYNAMIC_SIDE, MAX_TENSOR_ELEMENTS, check_tensors, dense_volume_elements
from raft_engine.export.onnx_checks import TOLERANCE, check_graph, verify_graph
from raft_engine.io.files import check_output_file
from raft_engine.model.consistency import ALPHA1, ALPHA2, check_alphas, forward_backward_check
from raft_engine.model.correlation import OnDemandCorrelation, corr_ondemand_gather, dense_pyramid_bytes
from raft_engine.model.raft import RAFT
from raft_engine.runtime.inputs import positive_int
from raft_engine.runtime.options import CORR_MODES, DEFAULT_CORR_BUDGET  # corr="auto": FlowEngine's budget, 2 GiB
from raft_engine.scenes import scene_tensors

log = logging.getLogger(__name__)

ONNX_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MIN_OPSET = 16  # GridSample
DEFAULT_OPSET = 18
# The size a dynamic-size graph is traced and verified at when height and width are not given; unequal
# sides, or torch.export would be free to take the two dimensions for one.
DYNAMIC_TRACE_SIZE = (256, 320)


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote, and how the graph compared with PyTorch; `str()` gives it as one line.

    Attributes:
        path: the .onnx file written.
        variant: the model's variant ("large" or "small").
        iters: the iteration count unrolled in the graph.
        height: the input height; for a dynamic-size graph, the height it was traced and verified at.
        width: the input width; for a dynamic-size graph, the width it was traced and verified at.
        batch: the graph's batch size, or "dynamic".
        dtype: "fp32" or "fp16".
        corr: the correlation in the graph, "volume" or "ondemand".
        dynamic_size: whether the graph takes any height and width (multiples of 8).
        opset: the ONNX opset.
        outputs: the graph's output names, in order.
        relative_error: ONNX Runtime (CPU) against PyTorch float32 on a generated pair, relative; None if
            verification was skipped.
        max_abs_error_px: the largest difference of that comparison, in pixels; None if skipped.
    """

    path: Path
    variant: str
    iters: int
    height: int
    width: int
    batch: int | str  # an int, or "dynamic"
    dtype: str
    corr: str  # "volume" or "ondemand"
    dynamic_size: bool
    opset: int
    outputs: tuple[str, ...]
    # Verification: ONNX Runtime (CPU) against PyTorch float32 on a generated pair; None if skipped.
    relative_error: float | None
    max_abs_error_px: float | None

    def __str__(self) -> str:
        text = (
            f"exported RAFT-{self.variant} to {self.path}: {self.iters} iterations, "
            f"{self._size()}, batch {self.batch}, {self.dtype}, {self.corr} correlation, opset {self.opset}, "
            f"outputs {', '.join(self.outputs)}"
        )
        if self.relative_error is not None:
            text += (
                f"; ONNX Runtime vs PyTorch fp32: relative error {self.relative_error:.2e}, "
                f"max {self.max_abs_error_px:.4f} px"
            )
        return text

    def _size(self) -> str:
        if self.dynamic_size:
            return f"any size (multiples of 8, traced and verified at {self.height}x{self.width})"
        return f"{self.height}x{self.width}"


def output_names(flow_low: bool, bidirectional: bool) -> tuple[str, ...]:
    """The graph's outputs, in order."""
    if not bidirectional:
        return ("flow", "flow_low") if flow_low else ("flow",)
    both = ("flow", "flow_backward", "occlusion", "occlusion_backward")
    return (*both, "flow_low", "flow_low_backward") if flow_low else both


class _Exported(nn.Module):
    """What the graph computes: RAFT's forward with a fixed iteration count; bidirectional, both directions
    and the forward-backward check's masks (over the padded input the graph sees)."""

    def __init__(
        self, model: RAFT, iters: int, flow_low: bool, bidirectional: bool = False, alphas: tuple[float, float] = (0, 0)
    ) -> None:
        super().__init__()
        self.model = model
        self.iters = iters
        self.flow_low = flow_low
        self.bidirectional = bidirectional
        self.alphas = alphas

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.bidirectional:
            output = self.model(image1, image2, iters=self.iters)
            return (output.flow, output.flow_low) if self.flow_low else output.flow
        output = self.model.forward_bidirectional(image1, image2, iters=self.iters)
        batch = image1.shape[0]
        forward, backward = output.flow[:batch], output.flow[batch:]
        occlusion = forward_backward_check(forward, backward, *self.alphas)
        occlusion_backward = forward_backward_check(backward, forward, *self.alphas)
        flows = (forward, backward, occlusion, occlusion_backward)
        return (*flows, output.flow_low[:batch], output.flow_low[batch:]) if self.flow_low else flows


def reference_model(model: RAFT, corr: str = "volume") -> RAFT:
    """A CPU copy of `model` with the PyTorch reference parts: the dense correlation ("volume") or the
    on-demand one in standard operators ("ondemand"), and the reference upsampling."""
    copied = copy.deepcopy(model).eval().cpu()
    if corr == "volume":
        return RAFT(model.config, **copied.parts())
    config = model.config
    correlation = OnDemandCorrelation(config.corr_levels, config.corr_radius, torch.float32, corr_ondemand_gather)
    return RAFT(config, **copied.parts(), correlation=correlation)


def resolve_corr(
    corr: str, config, batch: int, height: int, width: int, dynamic_size: bool, corr_budget: float
) -> tuple[str, str]:
    """The correlation an export uses, "volume" or "ondemand", and why, for `batch` pairs at height x width."""
    if corr not in CORR_MODES:
        raise InputError(f"unknown corr {corr!r}; expected one of {CORR_MODES}")
    if isinstance(corr_budget, bool) or not isinstance(corr_budget, (int, float)) or not corr_budget > 0:
        raise InputError(f"corr_budget must be a positive number of bytes, got {corr_budget!r}")
    if dynamic_size:
        if corr == "volume":
            raise InputError(
                "dynamic_size=True needs corr='ondemand' (or 'auto'): the dense volume grows with the square of the "
                "image area and passes ONNX Runtime's 32-bit indexing limit at 2160x3840 for one pair"
            )
        return "ondemand", "a dynamic-size graph must serve any size"
    if corr != "auto":
        return corr, "asked for"
    needed = dense_pyramid_bytes(batch, height // 8, width // 8, config.corr_levels, torch.float32)
    if dense_volume_elements(batch, height, width) > MAX_TENSOR_ELEMENTS:
        return "ondemand", f"the dense volume would pass {MAX_TENSOR_ELEMENTS:,} elements"
    pyramid = f"the dense pyramid takes {needed / 2**30:.2f} GiB, budget {corr_budget / 2**30:.2f} GiB"
    return ("ondemand" if needed > corr_budget else "volume"), pyramid


def _check_size(model: RAFT, height: int | None, width: int | None, dynamic_size: bool) -> tuple[int, int]:
    if dynamic_size and height is None and width is None:
        height, width = DYNAMIC_TRACE_SIZE
    if height is None or width is None:
        if dynamic_size:
            raise InputError("give both height and width (the size to trace at), or neither (256x320)")
        raise InputError(
            "height and width are required: an ONNX export has a fixed input size (dynamic_size=True for any size)"
        )
    height, width = positive_int("height", height), positive_int("width", width)
    if height % 8 or width % 8:
        raise InputError(
            f"height and width must be multiples of 8, got {height}x{width}; pad the images "
            "(OrtFlowSession pads and crops like FlowEngine)"
        )
    minimum = model.config.min_image_size
    if height < minimum or width < minimum:
        raise InputError(f"{height}x{width} is too small for RAFT: at least {minimum}x{minimum}")
    if dynamic_size:
        if height > MAX_DYNAMIC_SIDE or width > MAX_DYNAMIC_SIDE:
            raise InputError(f"a dynamic-size graph takes sides up to {MAX_DYNAMIC_SIDE}, got {height}x{width}")
        if height == width:
            # torch.export would see one value in both dimensions and may tie them into one.
            raise InputError(f"trace a dynamic-size graph at unequal height and width, got {height}x{width}")
    return height, width


def export_onnx(
    model: RAFT,
    path: str | os.PathLike,
    iters: int = 12,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    flow_low: bool = False,
    verify: bool = True,
    corr: str = "auto",
    dynamic_size: bool = False,
    corr_budget: float = DEFAULT_CORR_BUDGET,
    progress: Callable[[str], None] | None = None,
    bidirectional: bool = False,
    alpha1: float = ALPHA1,
    alpha2: float = ALPHA2,
) -> ExportReport:
    """Export `model` to ONNX with a fixed iteration count; see the module docstring.

    The graph is written beside `path` and moved there only once verified: a failed export leaves no file
    behind, and never replaces an earlier good one.

    Args:
        model: the RAFT model (see `load_model`); a CPU copy with the PyTorch reference parts is traced.
        path: the .onnx file, checked (suffix, folder) before any work; missing folders are created.
        iters: the iteration count, unrolled in the graph.
        height: the input height (a multiple of 8, at least the model's minimum); with dynamic_size=True
            the height the graph is traced and verified at. Required with width, except with
            dynamic_size=True, where neither given means 256x320.
        width: the input width, as height.
        batch: the batch size of the graph, or of the example used to trace it with dynamic_batch=True
            (at least 2). With the dense volume, batch * ((H/8) * (W/8))^2 elements must not exceed 2^31-1
            (`dense_volume_elements`): ONNX Runtime's CUDA kernels index with 32-bit integers.
        dynamic_batch: give the graph a dynamic batch dimension (torch.export specialises a batch of 1, so
            it is traced with at least two pairs).
        dtype: "fp32" or "fp16" (the encoders and the update block in float16; see the module docstring).
        opset: the ONNX opset, at least 16 (GridSample); 20 and later warn, as they write GridSample mode
            'linear', which TensorRT's ONNX parser has been seen to read as nearest.
        flow_low: also output flow_low, the (B, 2, H/8, W/8) flow.
        verify: run ONNX Runtime (CPU) on a generated pair and compare with PyTorch float32 (a dynamic-size
            graph also at the smallest size it takes); an error above `TOLERANCE[dtype]` raises ExportError.
        corr: "volume", "ondemand" or "auto" (the volume while its pyramid fits corr_budget bytes and the
            32-bit limit; on-demand otherwise and for dynamic sizes).
        dynamic_size: one graph for any height and width, multiples of 8 from the model's minimum to 8192.
        corr_budget: the bytes the dense pyramid may take with corr="auto" (FlowEngine's budget, 2 GiB).
        progress: called with the name of each stage as it starts ("trace", "check", "verify", "write"):
            a command line shows them; the export prints nothing itself.
        bidirectional: both directions in one graph (`RAFT.forward_bidirectional`), with outputs flow,
            flow_backward, occlusion, occlusion_backward (bool, the forward-backward check with alpha1 and
            alpha2 over the padded input), and flow_low, flow_low_backward with flow_low. Its correlation runs
            2B pairs at once: the dense volume's limits count them.
        alpha1: the forward-backward check's first constant (`forward_backward_check`), with bidirectional=True.
        alpha2: the forward-backward check's second constant, with bidirectional=True.

    Returns:
        The report of what was written, with the verification's errors.

    Raises:
        InputTypeError: `model` is not a raft_engine.RAFT.
        InputError: an argument the export cannot take (size, dtype, opset, corr, corr_budget, alphas, a
            suffix other than .onnx), or a graph whose tensors would pass the 32-bit limit; before any tracing.
        PathError: `path` cannot take the file.
        ExportError: ONNX Runtime's flow differs from PyTorch's by more than the dtype's tolerance; nothing
            is written to `path`.
    """
    if not isinstance(model, RAFT):
        raise InputTypeError(f"model must be a raft_engine.RAFT (see load_model), got {type(model).__name__}")
    path = check_output_file(path, [".onnx"], what="the ONNX file")
    height, width = _check_size(model, height, width, dynamic_size)
    iters, batch = positive_int("iters", iters), positive_int("batch", batch)
    stage = progress or (lambda name: None)
    if dtype not in ONNX_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; expected one of {tuple(ONNX_DTYPES)}")
    check_alphas(alpha1, alpha2)
    opset = _check_opset(opset)
    # torch.export specialises a batch dimension of 1, so a dynamic batch is traced with two pairs.
    traced_batch = max(batch, 2) if dynamic_batch else batch
    pairs = 2 * traced_batch if bidirectional else traced_batch  # what the correlation runs at once
    corr, reason = resolve_corr(corr, model.config, pairs, height, width, dynamic_size, corr_budget)
    log.info("export: %s correlation (%s)", corr, reason)
    # Refused before any tracing: past 2^31-1 elements, a tensor is out of reach of ONNX Runtime's 32-bit
    # indexing on the GPU (the dense volume first of all, and verification on the CPU would build it).
    advice = None
    if traced_batch != batch:
        advice = f"dynamic_batch=True traces the graph with {traced_batch} pairs: export a fixed batch of 1"
    check_tensors(corr, pairs, height, width, model.config.variant, advice)
    reference = reference_model(model, corr).to_compute_dtype(ONNX_DTYPES[dtype])
    exported = _Exported(reference, iters, flow_low, bidirectional, (alpha1, alpha2)).eval()
    # Generated scenes: realistic inputs for tracing and verification.
    image1, image2, _ = scene_tensors(range(traced_batch), height, width)
    outputs = output_names(flow_low, bidirectional)
    stage("trace")
    onnx_model = _trace(exported, image1, image2, outputs, opset, corr, dynamic_batch, dynamic_size)
    stage("check")
    check_graph(onnx_model, dynamic_batch, dynamic_size, batch, height, width, outputs)
    metadata = {
        "raft_engine.version": _version(),
        "raft_engine.variant": model.config.variant,
        "raft_engine.iterations": str(iters),
        "raft_engine.height": "dynamic" if dynamic_size else str(height),
        "raft_engine.width": "dynamic" if dynamic_size else str(width),
        "raft_engine.min_size": str(model.config.min_image_size),
        "raft_engine.batch": "dynamic" if dynamic_batch else str(batch),
        "raft_engine.dtype": dtype,
        "raft_engine.corr": corr,
        "raft_engine.outputs": ",".join(outputs),
        "raft_engine.bidirectional": "true" if bidirectional else "false",
        "raft_engine.alpha1": repr(float(alpha1)),
        "raft_engine.alpha2": repr(float(alpha2)),
        "raft_engine.input": "image1, image2: float32 (B, 3, H, W) RGB in 0..255; the graph normalises "
        "with 2 * (x / 255) - 1. H, W: "
        + (
            f"any multiples of 8 from {model.config.min_image_size} to {MAX_DYNAMIC_SIDE}"
            if dynamic_size
            else f"{height}x{width}"
        )
        + " (pad like FlowEngine).",
    }
    for key, value in metadata.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    import onnx

    # Written beside the target and moved there only once verified: a failed export leaves no file
    # behind, and never replaces an earlier good one.
    staged = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        stage("write")
        onnx.save(onnx_model, str(staged))
        relative = max_abs = None
        if verify:
            stage("verify")
            relative, max_abs = verify_graph(model, staged, image1, image2, iters, outputs, corr, (alpha1, alpha2))
            if dynamic_size:  # the same file at another size: the smallest it takes, not square
                minimum = model.config.min_image_size
                small1, small2, _ = scene_tensors(range(1), minimum, minimum + 8)
                small_relative, small_max = verify_graph(
                    model, staged, small1, small2, iters, outputs, corr, (alpha1, alpha2)
                )
                relative, max_abs = max(relative, small_relative), max(max_abs, small_max)
            if not relative <= TOLERANCE[dtype]:
                raise ExportError(
                    f"ONNX Runtime's flow differs from PyTorch's: relative error {relative:.3e} (max {max_abs:.4f} "
                    f"px), over the {dtype} tolerance {TOLERANCE[dtype]:.0e}; nothing was written to {path}"
                )
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    report = ExportReport(
        path,
        model.config.variant,
        iters,
        height,
        width,
        "dynamic" if dynamic_batch else batch,
        dtype,
        corr,
        dynamic_size,
        opset,
        outputs,
        relative,
        max_abs,
    )
    log.info("%s", report)
    return report


def _check_opset(opset: int) -> int:
    opset = positive_int("opset", opset)
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: RAFT's lookup needs GridSample, opset >= {MIN_OPSET}")
    if opset >= 20:
        warnings.warn(
            f"opset {opset} writes GridSample mode 'linear', which TensorRT's ONNX parser has been seen to "
            "read as nearest; opset 16-19 avoid it",
            stacklevel=3,
        )
    return opset


def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool) -> dict | None:
    """torch.export's dynamic_shapes for (image1, image2): a symbolic batch, and sides 8 * cells with
    cells from 16 (the 128-pixel minimum) to MAX_DYNAMIC_SIDE / 8."""
    if not (dynamic_batch or dynamic_size):
        return None
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_size:
        # Only sides of 8 * n exist in the graph: the encoders stride by 8 and the upsampling multiplies back.
        dims[2] = 8 * torch.export.Dim("height_cells", min=16, max=MAX_DYNAMIC_SIDE // 8)
        dims[3] = 8 * torch.export.Dim("width_cells", min=16, max=MAX_DYNAMIC_SIDE // 8)
    return {"image1": dims, "image2": dict(dims)}


def _trace(
    exported: nn.Module,
    image1: torch.Tensor,
    image2: torch.Tensor,
    outputs: tuple[str, ...],
    opset: int,
    corr: str,
    dynamic_batch: bool,
    dynamic_size: bool,
):
    """The ONNX ModelProto of `exported` traced on (image1, image2)."""
    # The on-demand lookup has ~5x the nodes of the dense one (a gather and a product per row of window
    # corners, level and iteration), and the exporter's pattern rewriter takes most of the time on them:
    # RAFT-small, 12 iterations at 128x160, 18 s and 4,416 nodes with constant folding and clean-up passes
    # only, against 313 s and 4,405 nodes with the full optimizer (2 cores, one busy with another job).
    # The volume graph keeps the full optimizer.
    full_optimizer = corr == "volume"
    # The exporter logs a warning for each torchvision operator it cannot register when torchvision is
    # missing (nms, roi_align, ...): none is in RAFT's graph, so they are not the user's concern.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    with warnings.catch_warnings(), torch.no_grad(), _quieter(registration, logging.ERROR):
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name: .* will not be used")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.export")
        program = torch.onnx.export(
            exported,
            (image1, image2),
            input_names=["image1", "image2"],
            output_names=list(outputs),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(dynamic_batch, dynamic_size),
            optimize=full_optimizer,
            verbose=False,
        )
    if program is None:  # torch.onnx.export returns None only for the legacy exporter, never with dynamo=True
        raise ExportError("torch.onnx.export returned no ONNX program")
    if not full_optimizer:
        import onnx_ir
        import onnxscript.optimizer
        from onnx_ir.passes import common

        # The passes log every initializer they merge (~2,000 lines at INFO): keep them to warnings.
        chatty = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
        levels = [logger.level for logger in chatty]
        try:
            for logger in chatty:
                logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
            onnxscript.optimizer.fold_constants(program.model)
            onnx_ir.passes.Sequential(
                common.RemoveUnusedNodesPass(),
                common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                common.DeduplicateInitializersPass(),
                common.CommonSubexpressionEliminationPass(),
                common.RemoveUnusedNodesPass(),
            )(program.model)
        finally:
            for logger, level in zip(chatty, levels, strict=True):
                logger.setLevel(level)
        return onnx_ir.serde.serialize_model(program.model)
    return program.model_proto


@contextlib.contextmanager
def _quieter(logger: logging.Logger, level: int) -> Iterator[None]:
    """Inside: `logger` shows records from `level` up only; its level comes back after."""
    saved = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        logger.setLevel(saved)


def _version() -> str:
    from raft_engine import __version__

    return __version__
