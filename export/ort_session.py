"""Serving an exported RAFT graph with ONNX Runtime, with FlowEngine's padding and results.

Inputs are numpy arrays, PIL images or torch tensors; CUDA tensors go to a CUDA session through IO
binding, without a trip through host memory. Under a GPU provider, the nodes that ONNX Runtime
places on the CPU are found by profiling one run and reported with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raft_engine.errors import FileFormatError, InputError, MissingFileError, ProviderError
from raft_engine.export.limits import DEFAULT_MIN_SIZE, MAX_DYNAMIC_SIDE, check_tensors
from raft_engine.model.consistency import ALPHA1, ALPHA2, check_alphas, forward_backward_check
from raft_engine.model.raft import BidirectionalResult, FlowResult
from raft_engine.runtime.estimator import EstimatorSettings, check_fixed_iters, pairwise_sequence
from raft_engine.runtime.inputs import ArrayLike, ImageLike, Padder, check_padding, check_pair, to_image_batch

if TYPE_CHECKING:
    import onnxruntime

PROVIDER_CHOICES = ("auto", "cuda", "tensorrt", "cpu")
_GPU = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}

# Ops that read only their input's shape, never its data, and return a small int64 tensor.
_SHAPE_OPS = {"Shape", "Size"}
# Element types of shape computations in ONNX Runtime's profile, and the most elements such a tensor
# has: shapes of rank <= 8, and the small index and mask tensors (Gather, Range, Equal) around them.
_SHAPE_TYPES = {"int64", "int32", "bool"}
_SHAPE_ELEMENTS = 64


def computes_shapes(op: str, inputs: Iterable[Mapping[str, list]], outputs: Iterable[Mapping[str, list]]) -> bool:
    """Whether a node only computes shapes, which ONNX Runtime keeps on the CPU on purpose.

    op: the node's op type; inputs, outputs: its tensors as ONNX Runtime's profile lists them
    (`input_type_shape`, `output_type_shape`: one {element type: shape} per tensor). True for an op
    that reads only shapes (Shape, Size), or a node whose every input and output is a small integer or
    boolean tensor (Gather, Unsqueeze, Concat, Slice, Reshape, Cast, Range, ConstantOfShape ... on
    shapes). A ConstantOfShape filling a float tensor, or a Reshape of image data, is real work.
    """
    if op in _SHAPE_OPS:
        return True

    def small_integer(tensor: Mapping[str, list]) -> bool:
        return all(kind in _SHAPE_TYPES and int(np.prod(shape)) <= _SHAPE_ELEMENTS for kind, shape in tensor.items())

    return all(small_integer(t) for t in [*inputs, *outputs])


def cpu_placed_nodes(events: Iterable[Mapping[str, Any]]) -> Counter:
    """Count by op type the nodes of an ONNX Runtime profile (its JSON events) that ran on the CPU
    provider other than shape computations (`computes_shapes`): under a GPU provider, the real work
    left on the CPU. An event without tensor types counts unless its op reads only shapes."""
    counts: Counter = Counter()
    for event in events:
        # One "<node>_kernel_time" event per node run, with its provider, op type and tensor types.
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        if args.get("provider") != "CPUExecutionProvider":
            continue
        op = args.get("op_name", "?")
        if "input_type_shape" in args or "output_type_shape" in args:
            shapes_only = computes_shapes(op, args.get("input_type_shape", []), args.get("output_type_shape", []))
        else:  # a profile without tensor types: only the op type to go by
            shapes_only = op in _SHAPE_OPS
        if not shapes_only:
            counts[op] += 1
    return counts


def quiet_session_options() -> onnxruntime.SessionOptions:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: constant-folding notes are not the user's business
    return options


def _resolve_provider(providers: str, available: list[str]) -> str:
    """Resolve `providers` to "cuda", "tensorrt" or "cpu", checked against ONNX Runtime's `available` ones."""
    if providers not in PROVIDER_CHOICES:
        raise InputError(f"unknown providers {providers!r}; expected one of {PROVIDER_CHOICES}")
    if providers == "auto":
        return "cuda" if "CUDAExecutionProvider" in available and torch.cuda.is_available() else "cpu"
    if providers != "cpu" and _GPU[providers] not in available:
        raise InputError(
            f"ONNX Runtime here has no {_GPU[providers]} (available: {', '.join(available)}); install "
            "onnxruntime-gpu (in place of onnxruntime, not beside it), or use providers='cpu'"
        )
    return providers


def _provider_list(
    provider: str,
    device_id: int = 0,
    cuda_graph: bool = False,
    tf32: bool = False,
    trt_cache: tuple[Path, Path] | None = None,
    tensorrt_fp16: bool = False,
) -> list:
    """ONNX Runtime's provider list, with options, for a resolved `provider` ("cuda", "tensorrt", "cpu").

    trt_cache: the (engine, timing) cache folders for TensorRT; None builds its engine every time.
    """
    if provider == "cpu":
        if cuda_graph:
            raise InputError("cuda_graph=True needs the cuda provider")
        return ["CPUExecutionProvider"]
    cuda_options = {
        "device_id": str(device_id),
        "enable_cuda_graph": "1" if cuda_graph else "0",
        # The CUDA provider runs float32 convolutions and matrix products in TF32 (10-bit mantissas)
        # by default, which breaks the fp32 export's 1e-4 parity with PyTorch float32.
        "use_tf32": "1" if tf32 else "0",
    }
    cuda = ("CUDAExecutionProvider", cuda_options)
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if provider != "tensorrt":
        raise InputError(f"unknown provider {provider!r}")
    if cuda_graph:
        raise InputError("cuda_graph=True is for the cuda provider")
    trt_options = {"device_id": str(device_id), "trt_fp16_enable": "1" if tensorrt_fp16 else "0"}
    if trt_cache is not None:
        engines, timing = trt_cache
        trt_options.update(
            trt_engine_cache_enable="1",
            trt_engine_cache_path=str(engines),
            trt_timing_cache_enable="1",
            trt_timing_cache_path=str(timing),
        )
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


def trt_cache_folders(model: Path, trt_cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The (engine, timing) cache folders for TensorRT serving `model`, created when missing.

    trt_cache_dir: the top folder; None is `raft_engine.weights.cache_dir()` / "tensorrt"
    (`RAFT_ENGINE_CACHE`, default ~/.cache/raft_engine). The timing cache (kernel timings per layer
    configuration) is shared by every model there; engines go to a subfolder named after the model
    file's content: ONNX Runtime names a cached engine after the file name and the graph's node names,
    not the weights, so a re-export with other weights to the same name would load the stale engine.
    """
    if trt_cache_dir is None:
        from raft_engine.weights import cache_dir

        top = cache_dir() / "tensorrt"
    else:
        top = Path(trt_cache_dir)
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    engines = top / f"{model.stem}-{digest.hexdigest()[:16]}"
    engines.mkdir(parents=True, exist_ok=True)
    return engines, top


def provider_fallback_message(requested: str, active: str) -> str:
    """Why ONNX Runtime runs on `active` when `requested` was asked for: the provider failed to load."""
    if requested == "TensorrtExecutionProvider":
        cause = (
            "the TensorRT libraries (libnvinfer) or the CUDA and cuDNN libraries this onnxruntime-gpu build "
            "needs were not found"
        )
    else:
        cause = "the CUDA and cuDNN libraries this onnxruntime-gpu build needs were not found"
    gpu = "" if torch.cuda.is_available() else " (torch sees no CUDA GPU here)"
    return (
        f"asked for {requested}, but ONNX Runtime fell back to {active}: {requested} failed to load. Likely "
        f"causes: {cause} (install them, e.g. as pip packages or with torch's CUDA build, or put them on "
        f"LD_LIBRARY_PATH), or there is no usable GPU{gpu}. ONNX Runtime's log above names what failed"
    )


class OrtFlowSession:
    """An exported RAFT graph (`raft_engine.export.export_onnx`) in ONNX Runtime.

    A flow estimator like FlowEngine: images of any size are padded to the graph's input size and the flow
    cropped back. The graph runs its own iteration count and has no flow_init input.

    Args:
        path: the .onnx file, exported by `export_onnx` (its metadata gives the size, batch and outputs).
        providers: "cuda", "tensorrt" (nodes that TensorRT does not take run on CUDA, then the CPU), "cpu",
            or "auto" (CUDA when there is a GPU and onnxruntime-gpu, else CPU). When "cuda" or "tensorrt"
            does not load, ONNX Runtime falls back to the next provider with only a log line: this raises
            ProviderError instead ("auto" warns and runs on what loaded).
        padding: "sintel" or "kitti", as FlowEngine; images must pad to the graph's input size (for a
            dynamic-size graph: any multiple of 8 from its minimum, 128, to 8192).
        cuda_graph: let ONNX Runtime record the CUDA provider's work as a CUDA graph (fixed batch only).
        device_id: the GPU to run on.
        check_placement: under a GPU provider, profile one run to find nodes placed on the CPU and warn
            about them (`cpu_nodes`); default on for CUDA, off for TensorRT, whose engine build it repeats.
        tf32: let the CUDA provider run float32 convolutions and matrix products in TF32 (faster on Ampere
            and later, with 10-bit mantissas); off by default, so that an fp32 graph keeps its 1e-4 parity
            with PyTorch float32.
        trt_cache_dir: where TensorRT keeps its engines and timing cache, so that a later process loads
            the engine instead of building it (`trt_cache_folders`); None: `raft_engine.weights.cache_dir()`
            / "tensorrt".
        tensorrt_fp16: let TensorRT run layers in float16 (trt_fp16_enable).

    Attributes:
        session: the `onnxruntime.InferenceSession`.
        metadata: the graph's metadata written by `export_onnx` ("raft_engine.*" keys).
        height: the graph's input height; None for a dynamic-size graph.
        width: the graph's input width; None for a dynamic-size graph.
        dynamic_size: whether the graph takes any height and width (multiples of 8).
        min_size: the smallest side the graph takes.
        batch: the graph's batch size; None for a dynamic batch.
        corr: the graph's correlation, "volume" or "ondemand".
        outputs: the graph's output names, in order.
        bidirectional_graph: whether the graph was exported with bidirectional=True.
        cpu_nodes: by op type, the nodes found running on the CPU under a GPU provider (empty when not checked).

    Raises:
        MissingFileError: there is no file at `path`.
        FileFormatError: ONNX Runtime cannot parse or load the file.
        InputError: an unknown padding or provider, a provider this ONNX Runtime lacks, a graph not exported
            by raft_engine.export, cuda_graph=True without the cuda provider or with a dynamic batch or size,
            or a fixed-size graph whose tensors pass ONNX Runtime's 32-bit indexing.
        ProviderError: "cuda" or "tensorrt" was asked for and did not load.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: str = "auto",
        padding: str = "sintel",
        cuda_graph: bool = False,
        device_id: int = 0,
        check_placement: bool | None = None,
        tf32: bool = False,
        trt_cache_dir: str | os.PathLike | None = None,
        tensorrt_fp16: bool = False,
    ) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"no such ONNX file: {path}")
        check_padding(padding)
        self.path = path
        self.padding = padding
        self.device_id = device_id
        provider = _resolve_provider(providers, onnxruntime.get_available_providers())
        trt_cache = trt_cache_folders(path, trt_cache_dir) if provider == "tensorrt" else None
        provider_list = _provider_list(provider, device_id, cuda_graph, tf32, trt_cache, tensorrt_fp16)
        if provider != "cpu" and hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()  # onnxruntime-gpu: load CUDA/cuDNN from the pip packages or torch
        try:
            self.session = onnxruntime.InferenceSession(str(path), quiet_session_options(), providers=provider_list)
        except Exception as error:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...), no common base
            if type(error).__module__.startswith("onnxruntime") and "INVALID_PROTOBUF" in str(error):
                raise FileFormatError(f"{path} is not an ONNX graph (ONNX Runtime cannot parse it)") from error
            if type(error).__module__.startswith("onnxruntime"):
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise FileFormatError(f"{path}: ONNX Runtime cannot load this graph ({reason})") from error
            raise
        if provider != "cpu":
            # ONNX Runtime falls back to the next provider when one fails to load, with only a log line
            # (and its Python wrapper retries without the provider options, TF32 off among them).
            if self.providers[0] != _GPU[provider]:
                message = provider_fallback_message(_GPU[provider], self.providers[0])
                if providers != "auto":
                    raise ProviderError(message)
                warnings.warn(message, stacklevel=2)
            # And a provider failing in a run would be retried on CUDA/CPU with default options: raise.
            self.session.disable_fallback()
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("raft_engine.height", "raft_engine.width", "raft_engine.batch") if k not in meta]
        if missing:
            raise InputError(f"{path} was not exported by raft_engine.export (metadata {missing} missing)")
        self.metadata = dict(meta)
        # A dynamic-size graph has no height and width (None); graphs exported before the on-demand
        # export existed carry no corr or min_size: they are dense, with RAFT's minimum of 128.
        self.dynamic_size = meta["raft_engine.height"] == "dynamic"
        self.height = None if self.dynamic_size else int(meta["raft_engine.height"])
        self.width = None if self.dynamic_size else int(meta["raft_engine.width"])
        self.min_size = int(meta.get("raft_engine.min_size", DEFAULT_MIN_SIZE))
        self.corr = meta.get("raft_engine.corr", "volume")
        self.batch = None if meta["raft_engine.batch"] == "dynamic" else int(meta["raft_engine.batch"])
        self.variant = meta.get("raft_engine.variant", "large")
        if self.height is not None and self.width is not None:
            # Before any run (the placement check runs the graph): a fixed batch past the limit can never
            # run; a dynamic one is checked per call, but must at least fit one pair.
            check_tensors(self.corr, self.batch or 1, self.height, self.width, self.variant)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.bidirectional_graph = meta.get("raft_engine.bidirectional") == "true"
        self.alphas = (float(meta.get("raft_engine.alpha1", ALPHA1)), float(meta.get("raft_engine.alpha2", ALPHA2)))
        if cuda_graph and (self.batch is None or self.dynamic_size):
            raise InputError("cuda_graph=True needs a graph exported with a fixed batch and size")
        self.cuda_graph = cuda_graph
        self._static: dict[str, torch.Tensor] = {}
        self.cpu_nodes: Counter = Counter()
        if check_placement is None:
            check_placement = self.providers[0] == "CUDAExecutionProvider"
        if self.on_gpu and check_placement:
            self.cpu_nodes = cpu_placed_nodes(self._profile_events(provider_list))
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
        """Whether the session runs on a GPU provider (CUDA or TensorRT)."""
        return self.providers[0] in _GPU.values()

    def __repr__(self) -> str:
        size = f"any size from {self.min_size}" if self.dynamic_size else f"{self.height}x{self.width}"
        return (
            f"OrtFlowSession({self.path.name}: RAFT-{self.metadata.get('raft_engine.variant')}, {size}, "
            f"batch {self.batch or 'dynamic'}, {self.corr} correlation, providers {self.providers})"
        )

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ValueError unless the graph takes (padded) inputs of height x width.

        Args:
            height: the padded height.
            width: the padded width.

        Raises:
            InputError: a fixed-size graph's other size, or for a dynamic-size graph, sides that are not
                multiples of 8 or are outside its minimum to 8192.
        """
        if not self.dynamic_size:
            if (height, width) != (self.height, self.width):
                raise InputError(
                    f"this graph was exported for {self.height}x{self.width}, got {height}x{width}; a graph exported "
                    "with --dynamic-size (dynamic_size=True) takes every size"
                )
            return
        if height % 8 or width % 8:
            raise InputError(
                f"this dynamic-size graph takes heights and widths that are multiples of 8, got {height}x{width}: "
                "pad the images (estimate() pads and crops like FlowEngine)"
            )
        if min(height, width) < self.min_size or max(height, width) > MAX_DYNAMIC_SIDE:
            raise InputError(
                f"this dynamic-size graph takes sides from {self.min_size} to {MAX_DYNAMIC_SIDE}, got {height}x{width}"
            )

    def _profile_events(self, provider_list: list) -> list[dict]:
        """The events of ONNX Runtime's profile of one run on zeros under `provider_list`."""
        import onnxruntime

        options = quiet_session_options()
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as folder:
            options.profile_file_prefix = str(Path(folder) / "placement")
            session = onnxruntime.InferenceSession(str(self.path), options, providers=provider_list)
            size = (self.height, self.width) if self.height and self.width else (self.min_size, self.min_size + 8)
            zeros = np.zeros((self.batch or 1, 3, *size), np.float32)
            session.run(None, {"image1": zeros, "image2": zeros})
            return json.loads(Path(session.end_profiling()).read_text())

    @property
    def settings(self) -> EstimatorSettings:
        """What the graph runs with: its variant, precision and correlation, and the provider in use.

        Also what it fixes: iterations, padded size unless dynamic, batch unless dynamic; no flow_init input.
        """
        provider = self.providers[0]
        return EstimatorSettings(
            variant=self.variant,
            backend=f"onnxruntime ({provider})",
            dtype=self.metadata.get("raft_engine.dtype", "fp32"),
            device=f"cuda:{self.device_id}" if self.on_gpu else "cpu",
            corr=self.corr,
            source=str(self.path),
            iters=int(self.metadata["raft_engine.iterations"]),
            runs_own_iters=True,
            size=None if self.height is None or self.width is None else (self.height, self.width),
            batch=self.batch,
            takes_flow_init=False,
        )

    def describe(self, height: int | None = None, width: int | None = None) -> str:
        """Where it runs: ONNX Runtime and the provider in use.

        Args:
            height: unused: the provider is the same at every size (a `FlowEstimator`'s signature).
            width: unused, as height.

        Returns:
            For example "ONNX Runtime CUDAExecutionProvider".
        """
        return f"ONNX Runtime {self.providers[0]}"

    def estimate(
        self, image1: ImageLike, image2: ImageLike, iters: int | None = None, flow_init: ArrayLike | None = None
    ) -> FlowResult:
        """Flow from image1 to image2, cropped back to the input size.

        Torch tensors come back on the input's device (CUDA input to a CUDA session never visits the host).

        Args:
            image1: the first image, (H, W, 3)/(3, H, W) or batched (see `to_image_batch`).
            image2: the second image, of the same size and batch.
            iters: None, or the graph's own count.
            flow_init: None (the graph has no such input).

        Returns:
            flow (B, 2, H, W), and flow_low when the graph has that output.

        Raises:
            InputError: iters other than the graph's count, a flow_init, images that do not pad to a size
                the graph takes, a batch other than the graph's, or CUDA images on another GPU than the session's.
        """
        check_fixed_iters(self.settings, iters, str(self.path))
        if flow_init is not None:
            raise InputError(f"{self.path} has no flow_init input: warm start is not available with an exported graph")
        padded1, padded2, padder = self._padded(image1, image2)
        result = self._run(padded1, padded2)
        return FlowResult(flow=padder.unpad(result["flow"]), flow_low=result.get("flow_low"))

    def _padded(self, image1: ImageLike, image2: ImageLike) -> tuple[torch.Tensor, torch.Tensor, Padder]:
        """Convert, check and pad a pair to a size the graph takes -> the padded pair and its padder."""
        batch1, batch2 = to_image_batch(image1, "image1"), to_image_batch(image2, "image2")
        check_pair(batch1, batch2)
        height, width = batch1.shape[-2:]
        padder = Padder(height, width, self.padding)
        try:
            self.check_input_size(*padder.padded_size)
        except InputError as error:
            padded = f"{padder.padded_size[0]}x{padder.padded_size[1]}"
            raise InputError(f"images of {height}x{width} pad to {padded}: {error}") from None
        return padder.pad(batch1).contiguous(), padder.pad(batch2).contiguous(), padder

    def bidirectional(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int | None = None,
        flow_init: tuple[ArrayLike, ArrayLike] | None = None,
        alpha1: float = ALPHA1,
        alpha2: float = ALPHA2,
    ) -> BidirectionalResult:
        """Both directions and the forward-backward check's masks, from a graph exported with bidirectional=True.

        The graph checks over the padded input with its own constants; where the images were padded or other
        constants are asked for, the masks are computed here from the cropped flows instead, as FlowEngine
        does, so that the results are the engine's either way.

        Args:
            image1: the first image, in the forms `estimate` takes.
            image2: the second image, of the same size and batch.
            iters: None, or the graph's own count.
            flow_init: None (the graph has no such input).
            alpha1: the forward-backward check's first constant (`forward_backward_check`).
            alpha2: the forward-backward check's second constant.

        Returns:
            The forward and backward flows, cropped back, and the occlusion masks of both images.

        Raises:
            InputError: a graph exported one-way, alphas the check does not take, or what `estimate` refuses.
        """
        if not self.bidirectional_graph:
            raise InputError(f"{self.path} was exported one-way: export it with --bidirectional (bidirectional=True)")
        check_alphas(alpha1, alpha2)
        check_fixed_iters(self.settings, iters, str(self.path))
        if flow_init is not None:
            raise InputError(f"{self.path} has no flow_init input: warm start is not available with an exported graph")
        padded1, padded2, padder = self._padded(image1, image2)
        result = self._run(padded1, padded2)
        forward, backward = padder.unpad(result["flow"]), padder.unpad(result["flow_backward"])
        if any(padder.pads) or (alpha1, alpha2) != self.alphas:
            occlusion = forward_backward_check(forward, backward, alpha1, alpha2)
            occlusion_backward = forward_backward_check(backward, forward, alpha1, alpha2)
        else:
            occlusion, occlusion_backward = result["occlusion"], result["occlusion_backward"]
        return BidirectionalResult(
            forward=FlowResult(flow=forward, flow_low=result.get("flow_low")),
            backward=FlowResult(flow=backward, flow_low=result.get("flow_low_backward")),
            occlusion=occlusion,
            occlusion_backward=occlusion_backward,
        )

    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = None,
        warm_start: bool = False,
        batch_size: int | None = None,
        bidirectional: bool = False,
        alpha1: float = ALPHA1,
        alpha2: float = ALPHA2,
    ) -> Iterator[Any]:
        """The flow of each consecutive pair of `frames`, pair by pair (see `pairwise_sequence`).

        Args:
            frames: the images, one a frame, in the forms `estimate` takes, all of one size.
            iters: None, or the graph's own count.
            warm_start: must be False: the graph has no flow_init input.
            batch_size: None or 1: the graph runs one pair at a time.
            bidirectional: yield `bidirectional` of each pair instead of its `estimate`.
            alpha1: the forward-backward check's first constant, with bidirectional=True.
            alpha2: the forward-backward check's second constant, with bidirectional=True.

        Returns:
            An iterator of one `FlowResult` (or `BidirectionalResult`) a pair, computed as it is read.

        Raises:
            InputError: warm_start=True, or a batch_size other than None and 1.
        """
        return pairwise_sequence(self, frames, iters, warm_start, batch_size, bidirectional, alpha1, alpha2)

    def run(self, image1: ImageLike, image2: ImageLike) -> dict[str, torch.Tensor]:
        """The graph on images already padded to a size it takes (see `check_input_size`), without padding or cropping.

        Args:
            image1: the first image, padded, in the forms `estimate` takes.
            image2: the second image, of the same size and batch.

        Returns:
            The graph's outputs by name: flow (B, 2, H, W), flow_low if the graph has it, the backward flows
            and masks of a bidirectional graph.

        Raises:
            InputError: a size the graph does not take, or a batch other than the graph's.
        """
        batch1, batch2 = to_image_batch(image1, "image1"), to_image_batch(image2, "image2")
        check_pair(batch1, batch2)
        self.check_input_size(*batch1.shape[-2:])
        return self._run(batch1.contiguous(), batch2.contiguous())

    def _run(self, padded1: torch.Tensor, padded2: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = padded1.shape[0]
        if self.batch is not None and batch != self.batch:
            raise InputError(f"this graph was exported for batch {self.batch}, got {batch} pair(s)")
        if self.batch is None or self.dynamic_size:
            height, width = padded1.shape[-2:]
            check_tensors(self.corr, batch, height, width, self.variant)
        if padded1.is_cuda and padded1.device.index != self.device_id:
            raise InputError(f"the images are on {padded1.device}, this session on cuda:{self.device_id}")
        if self.cuda_graph and not padded1.is_cuda:
            # ONNX Runtime's graph replays on fixed device buffers: host images are copied there.
            gpu = torch.device("cuda", self.device_id)
            outputs = [o.to(padded1.device) for o in self._run_bound(padded1.to(gpu), padded2.to(gpu))]
        elif self.on_gpu and padded1.is_cuda:
            outputs = self._run_bound(padded1, padded2)
        else:
            result = self.session.run(None, {"image1": padded1.cpu().numpy(), "image2": padded2.cpu().numpy()})
            outputs = [torch.from_numpy(r).to(padded1.device) for r in result]
        return dict(zip(self.outputs, outputs, strict=True))

    def __call__(self, image1: ImageLike, image2: ImageLike) -> torch.Tensor:
        """The flow of `estimate(image1, image2)`: (B, 2, H, W), cropped back to the input size.

        Args:
            image1: the first image, in the forms `estimate` takes.
            image2: the second image, of the same size and batch.
        """
        return self.estimate(image1, image2).flow

    def _run_bound(self, image1: torch.Tensor, image2: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width = image1.shape
        device = image1.device
        flow, low = (batch, 2, height, width), (batch, 2, height // 8, width // 8)
        shapes: dict[str, tuple[int, ...]] = {"flow": flow, "flow_backward": flow, "flow_low": low}
        shapes["flow_low_backward"] = low
        shapes.update(occlusion=(batch, height, width), occlusion_backward=(batch, height, width))

        def output_buffer(name: str) -> torch.Tensor:
            dtype = torch.bool if name.startswith("occlusion") else torch.float32
            return torch.empty(shapes[name], device=device, dtype=dtype)

        if self.cuda_graph:
            # ONNX Runtime replays its graph on the buffers it was recorded with: keep them fixed.
            if not self._static:
                self._static = {"image1": torch.empty_like(image1), "image2": torch.empty_like(image2)}
                self._static.update({n: output_buffer(n) for n in self.outputs})
            self._static["image1"].copy_(image1)
            self._static["image2"].copy_(image2)
            buffers = self._static
        else:
            buffers = {"image1": image1, "image2": image2}
            buffers.update({n: output_buffer(n) for n in self.outputs})
        binding = self.session.io_binding()
        for name, tensor in buffers.items():
            bind = binding.bind_input if name.startswith("image") else binding.bind_output
            element = np.bool_ if tensor.dtype == torch.bool else np.float32
            bind(name, "cuda", self.device_id, element, tuple(tensor.shape), tensor.data_ptr())
        torch.cuda.current_stream(device).synchronize()  # inputs written by torch before ONNX Runtime reads them
        self.session.run_with_iobinding(binding)
        outputs = [buffers[n] for n in self.outputs]
        return [o.clone() for o in outputs] if self.cuda_graph else outputs
