"""Correlation lookup and convex upsampling, installed as `raft_engine.kernels`.

One module per operation. Each holds the plain PyTorch definition (`*_ref`): the specification,
the CPU path and the ONNX path.
"""
