"""Correlation lookup and convex upsampling kernels, installed as `raft_engine.kernels`.

One module per operation, each holding the plain PyTorch definition (`*_ref`: the specification,
the CPU path and the ONNX path), the Triton kernel, a launcher that checks its inputs, and the
registration as a PyTorch op (`torch.ops.raft_engine.*`) that torch.compile traces through.
Triton runs on CUDA, or on the CPU through its interpreter (TRITON_INTERPRET=1 before import).
"""

from raft_engine.kernels import convex_upsample, corr_lookup, corr_ondemand

__all__ = ["convex_upsample", "corr_lookup", "corr_ondemand"]
