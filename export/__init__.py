"""ONNX export and ONNX Runtime serving, installed as `raft_engine.export`.

Needs the `onnx` and `onnxscript` packages to export, `onnxruntime` (or `onnxruntime-gpu`) to run, and
`tritonclient[http]` for `triton_flow`, the client of a Triton Inference Server.
"""

from raft_engine.export.onnx_export import ExportError, ExportReport, export_onnx
from raft_engine.export.ort_session import OrtFlowSession
from raft_engine.export.triton_server import (
    TritonFlowClient,
    TritonModel,
    export_triton,
    triton_flow,
    triton_model_config,
)

__all__ = [
    "ExportError",
    "ExportReport",
    "OrtFlowSession",
    "TritonFlowClient",
    "TritonModel",
    "export_onnx",
    "export_triton",
    "triton_flow",
    "triton_model_config",
]
