"""ONNX export and ONNX Runtime serving, installed as `raft_engine.export`.

Needs the `onnx` and `onnxscript` packages to export and `onnxruntime` (or `onnxruntime-gpu`) to run.
"""

from raft_engine.export.onnx_export import ExportError, ExportReport, export_onnx
from raft_engine.export.ort_session import OrtFlowSession

__all__ = ["ExportError", "ExportReport", "OrtFlowSession", "export_onnx"]
