"""ONNX export of RAFT with a fixed iteration count, verified against PyTorch with ONNX Runtime.

The graph takes `image1`, `image2`: float32 (B, 3, H, W) in 0..255 (the 2 * (x / 255) - 1
normalisation is inside), H and W multiples of 8, and returns `flow`: float32 (B, 2, H, W), and
optionally `flow_low` (B, 2, H/8, W/8). The iterations are unrolled. Kernels are replaced by their
PyTorch references, so the graph holds standard ONNX operators only (GridSample needs opset 16).

fp16: the encoders and the update block run in float16 while the correlation lookup (GridSample)
and InstanceNorm stay float32, the engine's own mixed-precision mode. That suits ONNX Runtime's CUDA
GridSample, which is float32-only, and avoids fp16 InstanceNormalization, which is wrong in ONNX
Runtime and TensorRT; the alternative (a Gather-based lookup in fp16) was not needed for that.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raft_engine.export.ort_session import check_dense_volume
from raft_engine.inputs import positive_int
from raft_engine.model import RAFT
from raft_engine.scenes import scene_tensors

log = logging.getLogger(__name__)

ONNX_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MIN_OPSET = 16  # GridSample
DEFAULT_OPSET = 18
# ONNX Runtime against PyTorch float32, relative L2 error of the flow. fp16: the half-precision
# model's own drift, measured 1.4e-3 (RAFT-small) and 4.3e-4 (RAFT-large) with synthetic weights on a
# generated 128x160 pair, 6 iterations.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}


class ExportError(RuntimeError):
    """The exported graph does not do what was asked (wrong shapes, custom ops, numbers off)."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    variant: str
    iters: int
    height: int
    width: int
    batch: int | str  # an int, or "dynamic"
    dtype: str
    opset: int
    outputs: tuple[str, ...]
    # Verification: ONNX Runtime (CPU) against PyTorch float32 on a generated pair; None if skipped.
    relative_error: float | None
    max_abs_error_px: float | None

    def __str__(self) -> str:
        text = (
            f"exported RAFT-{self.variant} to {self.path}: {self.iters} iterations, {self.height}x{self.width}, "
            f"batch {self.batch}, {self.dtype}, opset {self.opset}, outputs {', '.join(self.outputs)}"
        )
        if self.relative_error is not None:
            text += (
                f"; ONNX Runtime vs PyTorch fp32: relative error {self.relative_error:.2e}, "
                f"max {self.max_abs_error_px:.4f} px"
            )
        return text


class _Exported(nn.Module):
    def __init__(self, model: RAFT, iters: int, flow_low: bool) -> None:
        super().__init__()
        self.model = model
        self.iters = iters
        self.flow_low = flow_low

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        output = self.model(image1, image2, iters=self.iters)
        return (output.flow, output.flow_low) if self.flow_low else output.flow


def reference_model(model: RAFT) -> RAFT:
    """A CPU copy of `model` with the PyTorch reference parts (dense correlation, reference upsampling)."""
    copied = copy.deepcopy(model).eval().cpu()
    return RAFT(model.config, **copied.parts())


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
) -> ExportReport:
    """Export `model` to ONNX at a fixed input size and iteration count; see the module docstring.

    batch: the batch size of the graph, or of the example used to trace it with dynamic_batch=True
        (at least 2). The correlation volume of that batch, batch * ((H/8) * (W/8))^2 elements, must not
        exceed 2^31-1 (`dense_volume_elements`): ONNX Runtime's CUDA kernels index with 32-bit integers.
    verify: run ONNX Runtime (CPU) on a generated pair and compare with PyTorch float32; an error
        above `TOLERANCE[dtype]` raises ExportError.
    """
    if not isinstance(model, RAFT):
        raise TypeError(f"model must be a raft_engine.RAFT (see load_model), got {type(model).__name__}")
    if height is None or width is None:
        raise ValueError("height and width are required: an ONNX export has a fixed input size")
    iters, height, width, batch = (
        positive_int(n, v) for n, v in (("iters", iters), ("height", height), ("width", width), ("batch", batch))
    )
    if height % 8 or width % 8:
        raise ValueError(
            f"height and width must be multiples of 8, got {height}x{width}; pad the images "
            "(OrtFlowSession pads and crops like FlowEngine)"
        )
    minimum = model.config.min_image_size
    if height < minimum or width < minimum:
        raise ValueError(f"{height}x{width} is too small for RAFT: at least {minimum}x{minimum}")
    if dtype not in ONNX_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(ONNX_DTYPES)}")
    opset = positive_int("opset", opset)
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: RAFT's lookup needs GridSample, opset >= {MIN_OPSET}")
    if opset >= 20:
        warnings.warn(
            f"opset {opset} writes GridSample mode 'linear', which TensorRT's ONNX parser has been seen to "
            "read as nearest; opset 16-19 avoid it",
            stacklevel=2,
        )

    # torch.export specialises a batch dimension of 1, so a dynamic batch is traced with two pairs.
    traced_batch = max(batch, 2) if dynamic_batch else batch
    # Refused before any tracing: past 2^31-1 elements, the correlation volume is out of reach of
    # ONNX Runtime's 32-bit indexing on the GPU, and verification on the CPU would build it at full size.
    advice = None
    if traced_batch != batch:
        advice = f"dynamic_batch=True traces the graph with {traced_batch} pairs: export a fixed batch of 1"
    check_dense_volume(traced_batch, height, width, advice)
    exported = _Exported(reference_model(model).to_compute_dtype(ONNX_DTYPES[dtype]), iters, flow_low).eval()
    # Generated scenes: realistic inputs for tracing and verification.
    image1, image2, _ = scene_tensors(range(traced_batch), height, width)
    outputs = ("flow", "flow_low") if flow_low else ("flow",)
    dynamic_shapes = None
    if dynamic_batch:
        batch_dim = torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = {"image1": {0: batch_dim}, "image2": {0: batch_dim}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name: batch will not be used")
        program = torch.onnx.export(
            exported,
            (image1, image2),
            input_names=["image1", "image2"],
            output_names=list(outputs),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    if program is None:  # torch.onnx.export returns None only for the legacy exporter, never with dynamo=True
        raise ExportError("torch.onnx.export returned no ONNX program")
    onnx_model = program.model_proto
    _check_graph(onnx_model, dynamic_batch, batch, height, width, outputs)
    metadata = {
        "raft_engine.version": _version(),
        "raft_engine.variant": model.config.variant,
        "raft_engine.iterations": str(iters),
        "raft_engine.height": str(height),
        "raft_engine.width": str(width),
        "raft_engine.batch": "dynamic" if dynamic_batch else str(batch),
        "raft_engine.dtype": dtype,
        "raft_engine.outputs": ",".join(outputs),
        "raft_engine.input": "image1, image2: float32 (B, 3, H, W) RGB in 0..255; the graph normalises "
        "with 2 * (x / 255) - 1. H, W: multiples of 8 (pad like FlowEngine).",
    }
    for key, value in metadata.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    import onnx

    # Written beside the target and moved there only once verified: a failed export leaves no file
    # behind, and never replaces an earlier good one.
    staged = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        onnx.save(onnx_model, str(staged))
        relative = max_abs = None
        if verify:
            relative, max_abs = _verify(model, staged, image1, image2, iters, outputs)
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
        opset,
        outputs,
        relative,
        max_abs,
    )
    log.info("%s", report)
    return report


def _version() -> str:
    from raft_engine import __version__

    return __version__


def _check_graph(model, dynamic_batch: bool, batch: int, height: int, width: int, outputs) -> None:
    custom = sorted({node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx")})
    if custom:
        raise ExportError(f"the exported graph uses custom operator domains {custom}; only standard ONNX is allowed")
    names = [o.name for o in model.graph.output]
    if names != list(outputs):
        raise ExportError(f"the exported graph has outputs {names}, expected {list(outputs)}")
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        first = dims[0].dim_param if dims[0].HasField("dim_param") else dims[0].dim_value
        if dynamic_batch and not isinstance(first, str):
            raise ExportError(f"input {graph_input.name} came out with a fixed batch of {first}, not a dynamic one")
        if not dynamic_batch and first != batch:
            raise ExportError(f"input {graph_input.name} has batch {first}, expected {batch}")
        if [d.dim_value for d in dims[1:]] != [3, height, width]:
            raise ExportError(
                f"input {graph_input.name} has shape {[d.dim_value for d in dims[1:]]}, expected [3, {height}, {width}]"
            )


def _verify(
    model: RAFT, path: Path, image1: torch.Tensor, image2: torch.Tensor, iters: int, outputs
) -> tuple[float, float]:
    import onnxruntime

    from raft_engine.export.ort_session import quiet_session_options

    session = onnxruntime.InferenceSession(str(path), quiet_session_options(), providers=["CPUExecutionProvider"])
    result = session.run(None, {"image1": image1.numpy(), "image2": image2.numpy()})
    with torch.no_grad():
        expected = reference_model(model)(image1, image2, iters=iters)

    def relative_error(actual: np.ndarray, wanted: np.ndarray) -> float:
        error = float(np.linalg.norm(actual - wanted) / max(np.linalg.norm(wanted), 1e-12))
        return error if math.isfinite(error) else float("inf")  # NaN must fail the check, not pass it

    flow = expected.flow.numpy()
    relative = relative_error(result[0], flow)
    if "flow_low" in outputs:
        relative = max(relative, relative_error(result[1], expected.flow_low.numpy()))
    return relative, float(np.abs(result[0] - flow).max())
