"""Serving an exported RAFT graph with ONNX Runtime, with FlowEngine's padding and results.

Inputs are numpy arrays, PIL images or torch tensors; CUDA tensors go to a CUDA session through IO
binding, without a trip through host memory. Under a GPU provider, the nodes that ONNX Runtime
places on the CPU are found by profiling one run and reported with a warning.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from raft_engine.inputs import ImageLike, Padder, check_padding, check_pair, to_image_batch
from raft_engine.model import FlowResult

if TYPE_CHECKING:
    import onnxruntime

PROVIDER_CHOICES = ("auto", "cuda", "tensorrt", "cpu")
_GPU = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# Small integer shape computations that ONNX Runtime keeps on the CPU on purpose.
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape"}


def quiet_session_options() -> onnxruntime.SessionOptions:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: constant-folding notes are not the user's business
    return options


def _provider_list(providers: str, device_id: int, cuda_graph: bool) -> list:
    import onnxruntime

    if providers not in PROVIDER_CHOICES:
        raise ValueError(f"unknown providers {providers!r}; expected one of {PROVIDER_CHOICES}")
    available = onnxruntime.get_available_providers()
    if providers == "auto":
        providers = "cuda" if "CUDAExecutionProvider" in available and torch.cuda.is_available() else "cpu"
    if providers == "cpu":
        if cuda_graph:
            raise ValueError("cuda_graph=True needs the cuda provider")
        return ["CPUExecutionProvider"]
    wanted = _GPU[providers]
    if wanted not in available:
        raise ValueError(
            f"ONNX Runtime here has no {wanted} (available: {', '.join(available)}); install "
            "onnxruntime-gpu, or use providers='cpu'"
        )
    if hasattr(onnxruntime, "preload_dlls"):  # onnxruntime-gpu: load CUDA/cuDNN from the pip packages or torch
        onnxruntime.preload_dlls()
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id), "enable_cuda_graph": "1" if cuda_graph else "0"})
    if providers == "tensorrt":
        if cuda_graph:
            raise ValueError("cuda_graph=True is for the cuda provider")
        return [("TensorrtExecutionProvider", {"device_id": str(device_id)}), cuda, "CPUExecutionProvider"]
    return [cuda, "CPUExecutionProvider"]


class OrtFlowSession:
    """An exported RAFT graph (`raft_engine.export.export_onnx`) in ONNX Runtime.

    providers: "cuda", "tensorrt" (with CUDA and CPU fallback), "cpu", or "auto" (CUDA when there is
        a GPU and onnxruntime-gpu, else CPU).
    padding: "sintel" or "kitti", as FlowEngine; images must pad to the graph's input size.
    cuda_graph: let ONNX Runtime record the CUDA provider's work as a CUDA graph (fixed batch only).
    check_placement: under a GPU provider, profile one run to find nodes placed on the CPU and warn
        about them (`cpu_nodes`); default on for CUDA, off for TensorRT, whose engine build it repeats.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: str = "auto",
        padding: str = "sintel",
        cuda_graph: bool = False,
        device_id: int = 0,
        check_placement: bool | None = None,
    ) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such ONNX file: {path}")
        check_padding(padding)
        self.path = path
        self.padding = padding
        self.device_id = device_id
        provider_list = _provider_list(providers, device_id, cuda_graph)
        self.session = onnxruntime.InferenceSession(str(path), quiet_session_options(), providers=provider_list)
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("raft_engine.height", "raft_engine.width", "raft_engine.batch") if k not in meta]
        if missing:
            raise ValueError(f"{path} was not exported by raft_engine.export (metadata {missing} missing)")
        self.metadata = dict(meta)
        self.height, self.width = int(meta["raft_engine.height"]), int(meta["raft_engine.width"])
        self.batch = None if meta["raft_engine.batch"] == "dynamic" else int(meta["raft_engine.batch"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        if cuda_graph and self.batch is None:
            raise ValueError("cuda_graph=True needs a graph exported with a fixed batch")
        self.cuda_graph = cuda_graph
        self._static: dict[str, torch.Tensor] = {}
        self.cpu_nodes: Counter = Counter()
        if check_placement is None:
            check_placement = self.providers[0] == "CUDAExecutionProvider"
        if self.on_gpu and check_placement:
            self.cpu_nodes = self._cpu_placed_nodes(provider_list)
            if self.cpu_nodes:
                listing = ", ".join(f"{op} x{count}" for op, count in sorted(self.cpu_nodes.items()))
                warnings.warn(
                    f"{path.name}: under {self.providers[0]}, these nodes run on the CPU: {listing}", stacklevel=2
                )

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses, in priority order."""
        return self.session.get_providers()

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in _GPU.values()

    def __repr__(self) -> str:
        return (
            f"OrtFlowSession({self.path.name}: RAFT-{self.metadata.get('raft_engine.variant')}, "
            f"{self.height}x{self.width}, batch {self.batch or 'dynamic'}, providers {self.providers})"
        )

    def _cpu_placed_nodes(self, provider_list) -> Counter:
        """Profile one run on zeros and count the nodes (by op type) that ran on the CPU provider."""
        import onnxruntime

        options = quiet_session_options()
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as folder:
            options.profile_file_prefix = str(Path(folder) / "placement")
            session = onnxruntime.InferenceSession(str(self.path), options, providers=provider_list)
            zeros = np.zeros((self.batch or 1, 3, self.height, self.width), np.float32)
            session.run(None, {"image1": zeros, "image2": zeros})
            events = json.loads(Path(session.end_profiling()).read_text())
        # One "<node>_kernel_time" event per node run, with its provider and op type.
        return Counter(
            event["args"]["op_name"]
            for event in events
            if event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and event["args"].get("provider") == "CPUExecutionProvider"
            and event["args"].get("op_name") not in _SHAPE_OPS
        )

    def estimate(self, image1: ImageLike, image2: ImageLike) -> FlowResult:
        """Flow from image1 to image2, cropped back to the input size; torch tensors on the input's
        device (CUDA input to a CUDA session never visits the host)."""
        batch1, batch2 = to_image_batch(image1, "image1"), to_image_batch(image2, "image2")
        check_pair(batch1, batch2)
        height, width = batch1.shape[-2:]
        padder = Padder(height, width, self.padding)
        if padder.padded_size != (self.height, self.width):
            raise ValueError(
                f"this graph was exported for {self.height}x{self.width}; images of {height}x{width} "
                f"pad to {padder.padded_size[0]}x{padder.padded_size[1]}"
            )
        batch = batch1.shape[0]
        if self.batch is not None and batch != self.batch:
            raise ValueError(f"this graph was exported for batch {self.batch}, got {batch} pair(s)")
        padded1 = padder.pad(batch1).contiguous()
        padded2 = padder.pad(batch2).contiguous()
        if padded1.is_cuda and padded1.device.index != self.device_id:
            raise ValueError(f"the images are on {padded1.device}, this session on cuda:{self.device_id}")
        if self.cuda_graph and not padded1.is_cuda:
            # ONNX Runtime's graph replays on fixed device buffers: host images are copied there.
            gpu = torch.device("cuda", self.device_id)
            outputs = [o.to(batch1.device) for o in self._run_bound(padded1.to(gpu), padded2.to(gpu))]
        elif self.on_gpu and padded1.is_cuda:
            outputs = self._run_bound(padded1, padded2)
        else:
            result = self.session.run(None, {"image1": padded1.cpu().numpy(), "image2": padded2.cpu().numpy()})
            outputs = [torch.from_numpy(r).to(batch1.device) for r in result]
        flow = padder.unpad(outputs[0])
        flow_low = outputs[1] if len(outputs) > 1 else None
        return FlowResult(flow=flow, flow_low=flow_low)

    def __call__(self, image1: ImageLike, image2: ImageLike) -> torch.Tensor:
        return self.estimate(image1, image2).flow

    def _run_bound(self, image1: torch.Tensor, image2: torch.Tensor) -> list[torch.Tensor]:
        batch = image1.shape[0]
        device = image1.device
        shapes = {
            "flow": (batch, 2, self.height, self.width),
            "flow_low": (batch, 2, self.height // 8, self.width // 8),
        }
        if self.cuda_graph:
            # ONNX Runtime replays its graph on the buffers it was recorded with: keep them fixed.
            if not self._static:
                self._static = {"image1": torch.empty_like(image1), "image2": torch.empty_like(image2)}
                self._static.update({n: torch.empty(shapes[n], device=device) for n in self.outputs})
            self._static["image1"].copy_(image1)
            self._static["image2"].copy_(image2)
            buffers = self._static
        else:
            buffers = {"image1": image1, "image2": image2}
            buffers.update({n: torch.empty(shapes[n], device=device) for n in self.outputs})
        binding = self.session.io_binding()
        for name, tensor in buffers.items():
            bind = binding.bind_input if name.startswith("image") else binding.bind_output
            bind(name, "cuda", self.device_id, np.float32, tuple(tensor.shape), tensor.data_ptr())
        torch.cuda.current_stream(device).synchronize()  # inputs written by torch before ONNX Runtime reads them
        self.session.run_with_iobinding(binding)
        outputs = [buffers[n] for n in self.outputs]
        return [o.clone() for o in outputs] if self.cuda_graph else outputs
