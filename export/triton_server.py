"""Serving an exported graph from NVIDIA Triton Inference Server: the model repository, and a client.

`export_triton` exports a model into a Triton model repository, the layout the server loads:

    DIR/NAME/config.pbtxt        platform "onnxruntime_onnx", the graph's inputs and outputs, batching,
                                 instances, and optionally TensorRT with fp16
    DIR/NAME/1/model.onnx        the graph (`export_onnx`), version 1

`triton_flow` sends two frames (any size: padded like FlowEngine, the flow cropped back) to a running
server over HTTP (`tritonclient[http]`) and returns the flow.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raft_engine.errors import InputError, MissingDependency
from raft_engine.export.limits import MAX_DYNAMIC_SIDE, check_ondemand_tensors, check_tensors
from raft_engine.export.onnx_export import (
    DEFAULT_CORR_BUDGET,
    DYNAMIC_TRACE_SIZE,
    ExportReport,
    export_onnx,
    resolve_corr,
)
from raft_engine.model.consistency import ALPHA1, ALPHA2, check_alphas, forward_backward_check
from raft_engine.model.raft import RAFT, BidirectionalResult, FlowResult
from raft_engine.runtime.estimator import EstimatorSettings, pairwise_sequence
from raft_engine.runtime.inputs import (
    ArrayLike,
    ImageLike,
    Padder,
    check_padding,
    check_pair,
    positive_int,
    to_image_batch,
)

log = logging.getLogger(__name__)

# ONNX element types (onnx.TensorProto) -> Triton's data types.
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32", 9: "TYPE_BOOL"}
# Dynamic batching: how long the server may hold a request to fill a batch. 100 us is under 2% of
# RAFT-large's latency at Sintel size, so a lone request is barely delayed.
DEFAULT_QUEUE_DELAY_US = 100
# TensorRT's workspace (scratch memory for its kernels' tactics): 4 GiB.
DEFAULT_TRT_WORKSPACE_BYTES = 4 << 30
# Where the server keeps built TensorRT engines, inside its container (mount a volume there to keep them).
TRT_CACHE_PATH = "/tmp/raft_engine_trt"


@dataclass(frozen=True)
class TritonModel:
    """What `export_triton` wrote: the model's folder, its config and its graph, and the export's report.

    Attributes:
        directory: the model's folder in the repository, DIR/NAME.
        config: its config.pbtxt.
        onnx: the graph, DIR/NAME/1/model.onnx.
        report: the `ExportReport` of `export_onnx`, with the graph's final path.
    """

    directory: Path
    config: Path
    onnx: Path
    report: ExportReport

    def __str__(self) -> str:
        return f"{self.report}\nwrote the Triton model {self.directory}: {self.config.name} and 1/model.onnx"


def check_repository(directory: str | os.PathLike, force: bool = False) -> Path:
    """Refuse a repository folder that exists and is not empty, unless `force`: then only the model's own
    folder is written, and every other model in the repository is left as it is."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        contents = sorted(p.name for p in directory.iterdir())
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise InputError(
            f"the repository folder {directory} is not empty ({shown}); choose an empty or new folder, or pass "
            "force=True (--force) to write this model's folder in it, leaving the other models alone"
        )
    return directory


def _check_model_name(name: str) -> str:
    # Letters, digits, '_', '-' and '.': a folder name, and a string config.pbtxt needs no escapes for.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise InputError(f"model name must be letters, digits, '_', '-' and '.' (a folder name), got {name!r}")
    return name


def _check_options(max_batch_size: int, instances: int, workspace_bytes: int, queue_delay_us: int) -> None:
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise InputError(f"max_batch_size must be an integer >= 0, got {max_batch_size!r}")
    positive_int("instances", instances)
    positive_int("workspace_bytes", workspace_bytes)
    if isinstance(queue_delay_us, bool) or not isinstance(queue_delay_us, int) or queue_delay_us < 0:
        raise InputError(f"queue_delay_us must be an integer >= 0, got {queue_delay_us!r}")


def _dims(value) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def triton_model_config(
    onnx_path: str | os.PathLike,
    model_name: str = "raft",
    max_batch_size: int = 8,
    instances: int = 1,
    tensorrt_fp16: bool = False,
    workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for the graph at `onnx_path`.

    Args:
        onnx_path: the ONNX graph, read for its inputs and outputs (names, element types and dims).
        model_name: the model's name in the repository: letters, digits, '_', '-' and '.' (a folder name).
        max_batch_size: 0 turns Triton's batching off (the dims then include the graph's batch dimension);
            above 0, the graph's batch dimension must be dynamic, and Triton takes it off the dims and
            batches requests together (dynamic batching, the full batch of max_batch_size its preferred size).
        instances: model instances on each GPU (instance_group, KIND_GPU).
        tensorrt_fp16: run the graph through ONNX Runtime's TensorRT accelerator in fp16, with
            `workspace_bytes` of workspace; otherwise ONNX Runtime's CUDA provider.
        workspace_bytes: TensorRT's workspace (scratch memory for its kernels' tactics), with tensorrt_fp16;
            default 4 GiB.
        queue_delay_us: with dynamic batching, how long the server may hold a request to fill a batch, in
            microseconds; the default, 100, is under 2% of RAFT-large's latency at Sintel size.

    Returns:
        The text of config.pbtxt.

    Raises:
        InputError: a model name or option out of range, an element type the writer does not map, or
            max_batch_size above 0 for a graph with a fixed batch.
    """
    import onnx

    model_name = _check_model_name(model_name)
    _check_options(max_batch_size, instances, workspace_bytes, queue_delay_us)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    lines = [f'name: "{model_name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    for section, values in (("input", graph.input), ("output", graph.output)):
        entries = []
        for value in values:
            dims = _dims(value)
            elem_type = value.type.tensor_type.elem_type
            if elem_type not in _TRITON_TYPES:
                raise InputError(f"{value.name} has ONNX element type {elem_type}, which this writer does not map")
            if max_batch_size > 0:
                if dims[0] != -1:
                    raise InputError(
                        f"max_batch_size {max_batch_size} needs a graph with a dynamic batch; {value.name} has a fixed "
                        f"batch of {dims[0]} (export with dynamic_batch=True, or use max_batch_size 0)"
                    )
                dims = dims[1:]
            shape = ", ".join(str(d) for d in dims)
            kind = _TRITON_TYPES[elem_type]
            entries.append(f'  {{\n    name: "{value.name}"\n    data_type: {kind}\n    dims: [ {shape} ]\n  }}')
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if max_batch_size > 0:
        # The batcher sends a batch of a preferred size at once and waits up to the queue delay for one:
        # only the full batch is preferred, or every smaller power of 2 would go out without waiting.
        lines.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {max_batch_size} ]\n"
            f"  max_queue_delay_microseconds: {queue_delay_us}\n"
            "}"
        )
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_GPU\n  }}\n]")
    if tensorrt_fp16:
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
            '        name: "tensorrt"\n'
            '        parameters { key: "precision_mode" value: "FP16" }\n'
            f'        parameters {{ key: "max_workspace_size_bytes" value: "{workspace_bytes}" }}\n'
            # Building the engine of the unrolled graph takes minutes: keep it across server starts.
            '        parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            f'        parameters {{ key: "trt_engine_cache_path" value: "{TRT_CACHE_PATH}" }}\n'
            "      }\n    ]\n  }\n}"
        )
    return "\n".join(lines) + "\n"


def export_triton(
    model: RAFT,
    directory: str | os.PathLike,
    model_name: str = "raft",
    max_batch_size: int = 8,
    instances: int = 1,
    tensorrt_fp16: bool = False,
    force: bool = False,
    workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    *,
    height: int | None = None,
    width: int | None = None,
    corr: str = "auto",
    dynamic_size: bool = False,
    corr_budget: float = DEFAULT_CORR_BUDGET,
    **export_options: Any,
) -> TritonModel:
    """Export `model` into the Triton model repository `directory` as `model_name`, version 1.

    The graph (`export_onnx`) goes with its config.pbtxt (`triton_model_config`). The repository folder
    must be new or empty unless force=True. The model's folder is written in a staging folder beside it and
    moved into place whole once the export is verified and its config written: the server never sees a model
    folder without its config or graph.

    With max_batch_size > 0 the graph gets a dynamic batch, and corr="auto" decides between the volume
    and on-demand for a full batch of max_batch_size pairs: the server may run that many at once.

    Args:
        model: the RAFT model to export.
        directory: the repository folder; created when missing.
        model_name: the model's name and folder: letters, digits, '_', '-' and '.'.
        max_batch_size: the most pairs a request or batch holds; 0 turns Triton's batching off and
            exports a batch of 1 (see `triton_model_config`).
        instances: model instances on each GPU.
        tensorrt_fp16: serve through ONNX Runtime's TensorRT accelerator in fp16.
        force: write the model's folder in a repository that is not empty: only that folder is replaced,
            every other model in the repository is left as it is.
        workspace_bytes: TensorRT's workspace, with tensorrt_fp16; default 4 GiB.
        queue_delay_us: how long the server may hold a request to fill a batch, in microseconds.
        height: the input height, as `export_onnx`.
        width: the input width, as `export_onnx`.
        corr: "volume", "ondemand" or "auto", as `export_onnx`, for a full batch of max_batch_size pairs.
        dynamic_size: one graph for any height and width, as `export_onnx`.
        corr_budget: the bytes the dense pyramid may take with corr="auto".
        **export_options: the other options of `export_onnx` (iters, dtype, opset, flow_low, verify, ...);
            not batch or dynamic_batch, which max_batch_size sets.

    Returns:
        What was written: the model's folder, its config and graph, and the export's report.

    Raises:
        InputError: a model name or option out of range, a repository folder that is not empty (without
            force) or not a folder, batch or dynamic_batch in export_options, a full batch past ONNX Runtime's
            32-bit indexing, or what `export_onnx` refuses.
        ExportError: as `export_onnx`; the model's folder is left as it was.
    """
    model_name = _check_model_name(model_name)
    _check_options(max_batch_size, instances, workspace_bytes, queue_delay_us)
    directory = check_repository(directory, force)
    for option in ("batch", "dynamic_batch"):
        if option in export_options:
            raise InputError(f"{option} is set by max_batch_size for a Triton repository")
    served_batch = max(max_batch_size, 1)
    size = (height, width)
    if dynamic_size and height is None and width is None:
        size = DYNAMIC_TRACE_SIZE
    if size[0] is not None and size[1] is not None and not dynamic_size:
        corr, reason = resolve_corr(corr, model.config, served_batch, size[0], size[1], dynamic_size, corr_budget)
        log.info("Triton export: %s correlation for batches of up to %d (%s)", corr, served_batch, reason)
        check_tensors(corr, served_batch, size[0], size[1], model.config.variant, "use a smaller max_batch_size")
    # Written in a staging folder beside the model's, moved into place whole once the export is verified
    # and its config written: the server never sees a model folder without its config or graph.
    directory.mkdir(parents=True, exist_ok=True)
    model_folder = directory / model_name
    staging = directory / f".{model_name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        onnx_path = staging / "1" / "model.onnx"
        report = export_onnx(
            model,
            onnx_path,
            height=height,
            width=width,
            batch=2 if max_batch_size > 0 else 1,
            dynamic_batch=max_batch_size > 0,
            corr=corr,
            dynamic_size=dynamic_size,
            corr_budget=corr_budget,
            **export_options,
        )
        text = triton_model_config(
            onnx_path, model_name, max_batch_size, instances, tensorrt_fp16, workspace_bytes, queue_delay_us
        )
        (staging / "config.pbtxt").write_text(text)
        if model_folder.exists():  # force=True: this model's folder is replaced whole, others stay
            replaced = directory / f".{model_name}.{os.getpid()}.replaced"
            os.replace(model_folder, replaced)
            os.replace(staging, model_folder)
            shutil.rmtree(replaced)
        else:
            os.replace(staging, model_folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = dataclasses.replace(report, path=model_folder / "1" / "model.onnx")
    return TritonModel(model_folder, model_folder / "config.pbtxt", model_folder / "1" / "model.onnx", report)


# Client ------------------------------------------------------------------------------------------


class TritonFlowClient:
    """A flow estimator served by a Triton Inference Server over HTTP: a `FlowEstimator`.

    Any server of the KServe v2 protocol does, serving a model from `export_triton`. Images of any size are
    padded like FlowEngine (`padding`) and the flow cropped back; results are on the CPU: flow (B, 2, H, W)
    float32 in pixels, and flow_low when the graph has it. The model's metadata (its input shape and batch)
    is read once, on first use; what the served graph cannot take is refused before anything is sent. The
    graph runs its own iteration count, which the server does not report, and has no flow_init input.
    Needs tritonclient's HTTP client (`pip install 'raft-engine[triton-client]'`), imported on first use.

    Args:
        url: the server's HTTP address, host:port.
        model_name: the model's name in the server's repository.
        padding: "sintel" or "kitti", as FlowEngine.
        timeout: seconds to wait for the connection and for the network (tritonclient's connection_timeout
            and network_timeout).

    Raises:
        InputError: an unknown padding.
    """

    def __init__(self, url: str = "localhost:8000", model_name: str = "raft", padding: str = "sintel",
                 timeout: float = 60.0) -> None:  # fmt: skip
        check_padding(padding)
        self.url, self.model_name, self.padding, self.timeout = url, model_name, padding, timeout
        self._metadata: dict[str, Any] | None = None

    def _client(self) -> Any:
        try:
            import tritonclient.http as httpclient
        except ImportError as error:
            raise MissingDependency(
                "the Triton Inference Server client needs tritonclient's HTTP client: "
                "pip install 'raft-engine[triton-client]'",
                name="tritonclient",
            ) from error
        return httpclient.InferenceServerClient(self.url, connection_timeout=self.timeout, network_timeout=self.timeout)

    def _served(self) -> dict[str, Any]:
        """{"input": the image1 shape (-1 where dynamic), "outputs": names, "max_batch_size": int}."""
        if self._metadata is None:
            client = self._client()
            try:
                metadata = client.get_model_metadata(self.model_name)
                max_batch_size = int(client.get_model_config(self.model_name).get("max_batch_size", 0))
            finally:
                client.close()
            wanted = {entry["name"]: [int(d) for d in entry["shape"]] for entry in metadata["inputs"]}
            outputs = [entry["name"] for entry in metadata["outputs"]]
            self._metadata = {"input": wanted.get("image1"), "outputs": outputs, "max_batch_size": max_batch_size}
        return self._metadata

    @property
    def settings(self) -> EstimatorSettings:
        """What the served graph runs with, as far as the server's metadata tells: its size and batch.

        The variant and correlation are "unknown" (the metadata does not name them); it runs its own
        iterations and takes no flow_init. Reading it asks the server on first use.
        """
        served = self._served()
        shape = served["input"] or [-1, 3, -1, -1]
        size = None if -1 in shape[2:] else (shape[2], shape[3])
        return EstimatorSettings(
            variant="unknown",  # the server's metadata does not name it
            backend=f"triton-server ({self.url})",
            dtype="fp32",
            device=self.url,
            corr="unknown",
            source=f"{self.url}/{self.model_name}",
            runs_own_iters=True,
            size=size,
            batch=None if shape[0] == -1 else shape[0],
            takes_flow_init=False,
        )

    def describe(self, height: int | None = None, width: int | None = None) -> str:
        """Where it runs: the server's address and the model's name.

        Args:
            height: unused: the server is the same at every size (a `FlowEstimator`'s signature).
            width: unused, as height.
        """
        return f"inference server at {self.url}, model {self.model_name!r}"

    def estimate(
        self, image1: ImageLike, image2: ImageLike, iters: int | None = None, flow_init: ArrayLike | None = None
    ) -> FlowResult:
        """Flow from image1 to image2, padded like FlowEngine and cropped back, in one request.

        Args:
            image1: the first image, (H, W, 3)/(3, H, W) or batched (see `to_image_batch`).
            image2: the second image, of the same size and batch.
            iters: None (the served graph's own count).
            flow_init: None.

        Returns:
            flow (B, 2, H, W) on the CPU, and flow_low when the graph has that output.

        Raises:
            InputError: iters or flow_init given, or images the served graph cannot take (size, batch).
            MissingDependency: tritonclient's HTTP client is not installed.
        """
        if iters is not None:
            raise InputError(
                f"{self.describe()} runs its graph's own iteration count, which the server does not report: "
                "leave iters unset"
            )
        if flow_init is not None:
            raise InputError(f"{self.describe()} has no flow_init input: warm start is not available")
        outputs, padder = self._infer(image1, image2)
        flow_low = outputs.get("flow_low")
        return FlowResult(flow=padder.unpad(outputs["flow"]), flow_low=flow_low)

    def bidirectional(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int | None = None,
        flow_init: tuple[ArrayLike, ArrayLike] | None = None,
        alpha1: float = ALPHA1,
        alpha2: float = ALPHA2,
    ) -> BidirectionalResult:
        """Both directions, from a served graph exported with bidirectional=True.

        The masks are computed here from the cropped flows (FlowEngine's results, whatever the padding).

        Args:
            image1: the first image, in the forms `estimate` takes.
            image2: the second image, of the same size and batch.
            iters: None (the served graph's own count).
            flow_init: None.
            alpha1: the forward-backward check's first constant (`forward_backward_check`).
            alpha2: the forward-backward check's second constant.

        Returns:
            The forward and backward flows, cropped back, and the occlusion masks of both images.

        Raises:
            InputError: iters or flow_init given, alphas the check does not take, a one-way model, or what
                `estimate` refuses.
        """
        check_alphas(alpha1, alpha2)
        if iters is not None or flow_init is not None:
            raise InputError(f"{self.describe()} runs its graph as exported: leave iters and flow_init unset")
        if "flow_backward" not in self._served()["outputs"]:
            raise InputError(f"model {self.model_name!r} is one-way: serve a graph exported with --bidirectional")
        outputs, padder = self._infer(image1, image2)
        forward, backward = padder.unpad(outputs["flow"]), padder.unpad(outputs["flow_backward"])
        return BidirectionalResult(
            forward=FlowResult(flow=forward, flow_low=outputs.get("flow_low")),
            backward=FlowResult(flow=backward, flow_low=outputs.get("flow_low_backward")),
            occlusion=forward_backward_check(forward, backward, alpha1, alpha2),
            occlusion_backward=forward_backward_check(backward, forward, alpha1, alpha2),
        )

    def _infer(self, image1: ImageLike, image2: ImageLike) -> tuple[dict[str, torch.Tensor], Padder]:
        """One request of a padded pair -> the served graph's outputs by name (CPU tensors), and the padder."""
        import tritonclient.http as httpclient

        batch1, batch2 = to_image_batch(image1, "image1"), to_image_batch(image2, "image2")
        check_pair(batch1, batch2)
        height, width = batch1.shape[-2:]
        padder = Padder(height, width, self.padding)
        padded1 = padder.pad(batch1).cpu().contiguous().numpy().astype(np.float32, copy=False)
        padded2 = padder.pad(batch2).cpu().contiguous().numpy().astype(np.float32, copy=False)
        served = self._served()
        _check_served_shape(served["input"], padded1.shape, padder, self.model_name)
        if served["max_batch_size"] and padded1.shape[0] > served["max_batch_size"]:
            raise InputError(
                f"model {self.model_name!r} takes batches of up to {served['max_batch_size']} (max_batch_size), got "
                f"{padded1.shape[0]}"
            )
        inputs = []
        for name, array in (("image1", padded1), ("image2", padded2)):
            tensor = httpclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        names = served["outputs"]
        requested = [httpclient.InferRequestedOutput(name, binary_data=True) for name in names]
        client = self._client()
        try:
            result = client.infer(self.model_name, inputs, outputs=requested)
        finally:
            client.close()
        return {name: torch.from_numpy(np.array(result.as_numpy(name))) for name in names}, padder

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
            iters: None (the served graph's own count).
            warm_start: must be False: the graph has no flow_init input.
            batch_size: None or 1: one pair a request.
            bidirectional: yield `bidirectional` of each pair instead of its `estimate`.
            alpha1: the forward-backward check's first constant, with bidirectional=True.
            alpha2: the forward-backward check's second constant, with bidirectional=True.

        Returns:
            An iterator of one `FlowResult` (or `BidirectionalResult`) a pair, computed as it is read.

        Raises:
            InputError: warm_start=True, or a batch_size other than None and 1.
        """
        return pairwise_sequence(self, frames, iters, warm_start, batch_size, bidirectional, alpha1, alpha2)


def triton_flow(
    image1: ImageLike,
    image2: ImageLike,
    url: str = "localhost:8000",
    model_name: str = "raft",
    padding: str = "sintel",
    timeout: float = 60.0,
) -> FlowResult:
    """Flow from image1 to image2 by a Triton Inference Server at `url` serving `model_name`, over HTTP.

    The same as `TritonFlowClient(url, model_name, padding, timeout).estimate(image1, image2)`.

    Args:
        image1: the first image, (H, W, 3)/(3, H, W) or batched (see `to_image_batch`).
        image2: the second image, of the same size and batch.
        url: the server's HTTP address, host:port.
        model_name: the model's name in the server's repository.
        padding: "sintel" or "kitti", as FlowEngine.
        timeout: seconds to wait for the connection and for the network.

    Returns:
        flow (B, 2, H, W) on the CPU, cropped back to the input size, and flow_low when the graph has it.
    """
    return TritonFlowClient(url, model_name, padding, timeout).estimate(image1, image2)


def _check_served_shape(served: list[int] | None, shape: tuple[int, ...], padder: Padder, model_name: str) -> None:
    """Refuse, before sending, what the served graph cannot take: a clear error instead of the server's."""
    if served is None or len(served) != 4:
        raise InputError(f"model {model_name!r} has no (B, 3, H, W) input image1 (metadata: {served}); is it RAFT?")
    batch, _, height, width = shape
    if served[0] not in (-1, batch):
        raise InputError(f"model {model_name!r} takes batches of {served[0]}, got {batch} pair(s)")
    fixed = [d for d in served[2:] if d != -1]
    if len(fixed) == 2 and (height, width) != tuple(served[2:]):
        raise InputError(
            f"model {model_name!r} takes {served[2]}x{served[3]} images; images of {padder.height}x{padder.width} "
            f"pad to {height}x{width}"
        )
    if not fixed:
        if not (128 <= min(height, width) and max(height, width) <= MAX_DYNAMIC_SIDE):
            raise InputError(
                f"model {model_name!r} takes sides from 128 to {MAX_DYNAMIC_SIDE}; images of "
                f"{padder.height}x{padder.width} pad to {height}x{width}"
            )
        # The server's metadata does not name the variant: RAFT-large's bound holds for both.
        check_ondemand_tensors(batch, height, width, "large")
