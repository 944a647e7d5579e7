"""The checks of an exported graph: what its structure must be (standard operators only, the inputs and
outputs asked for, batch and size fixed or free as asked), and what ONNX Runtime computes with it against
PyTorch float32 (`TOLERANCE`; a bidirectional graph's masks to `MASK_TOLERANCE`)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from raft_engine.errors import ExportError
from raft_engine.model.consistency import ALPHA1, ALPHA2, forward_backward_check
from raft_engine.model.correlation import OnDemandCorrelation
from raft_engine.model.raft import RAFT

# ONNX Runtime against PyTorch float32, relative L2 error of the flow. fp16: the half-precision
# model's own drift, measured 1.4e-3 (RAFT-small) and 4.3e-4 (RAFT-large) with synthetic weights on a
# generated 128x160 pair, 6 iterations.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}
# A bidirectional graph's masks against PyTorch's: the fraction of pixels that may differ (those on the
# check's threshold flip with the flows' last bits).
MASK_TOLERANCE = 1e-3


def check_graph(model, dynamic_batch: bool, dynamic_size: bool, batch: int, height: int, width: int, outputs) -> None:
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
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims[1:]]
        if dynamic_size:
            if shape[0] != 3 or not all(isinstance(side, str) for side in shape[1:]):
                raise ExportError(f"input {graph_input.name} came out with shape {shape}, not [3, H, W] with H, W free")
        elif shape != [3, height, width]:
            raise ExportError(f"input {graph_input.name} has shape {shape}, expected [3, {height}, {width}]")


def verify_graph(
    model: RAFT,
    path: Path,
    image1: torch.Tensor,
    image2: torch.Tensor,
    iters: int,
    outputs: tuple[str, ...],
    corr: str,
    alphas: tuple[float, float] = (ALPHA1, ALPHA2),
) -> tuple[float, float]:
    """ONNX Runtime (CPU) against PyTorch float32 on one input -> (relative L2 error of the flows, the
    largest difference in px). A bidirectional graph's masks must agree on all but MASK_TOLERANCE of the
    pixels (a pixel on the check's threshold may flip with the flows' last bits)."""
    import onnxruntime

    from raft_engine.export.ort_session import quiet_session_options

    session = onnxruntime.InferenceSession(str(path), quiet_session_options(), providers=["CPUExecutionProvider"])
    result = dict(zip(outputs, session.run(None, {"image1": image1.numpy(), "image2": image2.numpy()}), strict=True))
    # The judge: PyTorch float32 with the dense volume, or for an on-demand graph FlowEngine's own
    # on-demand reference (`corr_ondemand_ref`, grid_sample on the pooled features; tested equal to the
    # dense path), not the graph's formulation, and no volume at sizes where it would not fit.
    judge = copy.deepcopy(model).eval().cpu()
    if corr == "ondemand":
        config = model.config
        judge = RAFT(config, **judge.parts(), correlation=OnDemandCorrelation(config.corr_levels, config.corr_radius))
    else:
        judge = RAFT(model.config, **judge.parts())
    batch = image1.shape[0]
    with torch.no_grad():
        if "flow_backward" in outputs:
            both = judge.forward_bidirectional(image1, image2, iters=iters)
            expected = {"flow": both.flow[:batch], "flow_backward": both.flow[batch:]}
            expected.update(flow_low=both.flow_low[:batch], flow_low_backward=both.flow_low[batch:])
            expected["occlusion"] = forward_backward_check(expected["flow"], expected["flow_backward"], *alphas)
            expected["occlusion_backward"] = forward_backward_check(
                expected["flow_backward"], expected["flow"], *alphas
            )
        else:
            one = judge(image1, image2, iters=iters)
            expected = {"flow": one.flow, "flow_low": one.flow_low}

    def relative_error(actual: np.ndarray, wanted: np.ndarray) -> float:
        error = float(np.linalg.norm(actual - wanted) / max(np.linalg.norm(wanted), 1e-12))
        return error if math.isfinite(error) else float("inf")  # NaN must fail the check, not pass it

    relative, largest = 0.0, 0.0
    for name in outputs:
        wanted = expected[name].numpy()
        if name.startswith("occlusion"):
            disagreeing = float((result[name] != wanted).mean())
            if disagreeing > MASK_TOLERANCE:
                raise ExportError(f"ONNX Runtime's {name} differs from PyTorch's at {disagreeing:.2%} of the pixels")
            continue
        relative = max(relative, relative_error(result[name], wanted))
        if not name.startswith("flow_low"):
            largest = max(largest, float(np.abs(result[name] - wanted).max()))
    return relative, largest
