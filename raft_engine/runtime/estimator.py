"""What estimates flow, whatever runs it: `FlowEstimator`, the interface that `FlowEngine`, an ONNX Runtime
session (`raft_engine.export.OrtFlowSession`) and a Triton Inference Server client
(`raft_engine.export.TritonFlowClient`) share, and what the command line, evaluation, the benchmark and
selftest take instead of telling them apart."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from raft_engine.errors import InputError, InputTypeError
from raft_engine.model.consistency import ALPHA1, ALPHA2

if TYPE_CHECKING:
    from raft_engine.model.raft import BidirectionalResult, FlowResult
    from raft_engine.runtime.inputs import ArrayLike, ImageLike


@dataclass(frozen=True)
class EstimatorSettings:
    """What an estimator runs with: for the records of evaluations and benchmarks, and for the checks of
    its callers.

    variant: "large" or "small". backend: "torch", "triton", "onnxruntime (CPUExecutionProvider)", ...
    dtype: "fp32", "fp16", "bf16". device: where it computes ("cpu", "cuda:0", or the server's address).
    corr: "auto", "volume" or "ondemand". compiled: under torch.compile. source: the ONNX file or the
    server's URL and model (None for an engine). iters: the fixed iteration count of an exported graph
    (None: any, or not known). runs_own_iters: whether it runs a count of its own (an exported graph's,
    known or not) that `estimate`'s iters can only repeat. size: the fixed (height, width) of its padded
    inputs (None: any). batch: its fixed batch (None: any). takes_flow_init: whether `estimate` takes a
    flow_init (warm start)."""

    variant: str
    backend: str
    dtype: str
    device: str
    corr: str
    compiled: bool = False
    source: str | None = None
    iters: int | None = None
    runs_own_iters: bool = False
    size: tuple[int, int] | None = None
    batch: int | None = None
    takes_flow_init: bool = True

    def record(self) -> dict[str, Any]:
        """The fields evaluation records carry: backend, dtype, device, variant, corr, compiled, onnx."""
        return {
            "backend": self.backend,
            "dtype": self.dtype,
            "device": self.device,
            "variant": self.variant,
            "corr": self.corr,
            "compiled": self.compiled,
            "onnx": self.source if self.backend.startswith("onnxruntime") else None,
        }


@runtime_checkable
class FlowEstimator(Protocol):
    """Whatever estimates optical flow for a pair of images.

    estimate(image1, image2, iters, flow_init) -> FlowResult: the flow from image1 to image2, in any of
        the image forms of `raft_engine.runtime.inputs.to_image_batch`, padded and cropped back; iters
        None is the estimator's own count (12 for an engine, the unrolled count of an exported graph).
    bidirectional(image1, image2, iters, flow_init, alpha1, alpha2) -> BidirectionalResult: both directions
        and the forward-backward check's masks (an exported graph: only one exported with them).
    sequence(frames, iters, warm_start, batch_size, bidirectional, ...) -> the FlowResult (with
        bidirectional=True the BidirectionalResult) of each consecutive pair of frames, in order, as
        computed (an engine encodes each frame once; `pairwise_sequence` for the others).
    describe(height, width) -> one line: where and how it runs (an engine's device, backend and correlation,
        for a size the correlation mode used there; a session's provider; a server's address).
    settings: `EstimatorSettings`.
    """

    @property
    def settings(self) -> EstimatorSettings: ...

    def estimate(
        self, image1: ImageLike, image2: ImageLike, iters: int | None = ..., flow_init: ArrayLike | None = ...
    ) -> FlowResult: ...

    def bidirectional(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int | None = ...,
        flow_init: tuple[ArrayLike, ArrayLike] | None = ...,
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> BidirectionalResult: ...

    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = ...,
        warm_start: bool = ...,
        batch_size: int | None = ...,
        bidirectional: bool = ...,
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> Iterator[Any]: ...

    def describe(self, height: int | None = None, width: int | None = None) -> str: ...


def check_estimator(estimator: object) -> FlowEstimator:
    """`estimator`, if it is a FlowEstimator; else InputTypeError naming what it is."""
    if not isinstance(estimator, FlowEstimator):
        raise InputTypeError(
            f"expected a flow estimator (a FlowEngine, an OrtFlowSession, a TritonFlowClient), got "
            f"{type(estimator).__name__}"
        )
    return estimator


def check_fixed_iters(settings: EstimatorSettings, iters: int | None, where: str) -> int | None:
    """The iterations to run: `iters`, or an exported graph's own count, which `iters` must match (and
    where the count is not known, `iters` must be None)."""
    if not settings.runs_own_iters or iters is None:
        return settings.iters if settings.runs_own_iters else iters
    if settings.iters is None:
        raise InputError(f"{where} runs its graph's own iteration count, which it does not report: leave iters unset")
    if iters != settings.iters:
        raise InputError(f"{where} was exported with {settings.iters} iterations, not {iters}")
    return iters


def pairwise_sequence(
    estimator: FlowEstimator,
    frames: Iterable[ImageLike],
    iters: int | None = None,
    warm_start: bool = False,
    batch_size: int | None = None,
    bidirectional: bool = False,
    alpha1: float = ALPHA1,
    alpha2: float = ALPHA2,
) -> Iterator[Any]:
    """`sequence` of an estimator that runs pair by pair (an exported graph, a server): each frame is sent
    twice, as the second image of one pair and the first of the next. warm_start needs an estimator that
    takes flow_init; batch_size other than 1 does not apply; bidirectional=True yields the estimator's
    `bidirectional` of each pair."""
    settings = estimator.settings
    name = settings.source or estimator.describe()
    if warm_start and not settings.takes_flow_init:
        raise InputError(f"warm start needs flow_init, which {name} does not take")
    if batch_size not in (None, 1):
        raise InputError(f"{name} runs one pair at a time: batch_size does not apply")
    if bidirectional and warm_start:
        raise InputError("warm_start and bidirectional together are not supported; run bidirectional sequences cold")
    count, previous, flow_low = 0, None, None
    for frame in frames:
        count += 1
        if previous is not None and bidirectional:
            yield estimator.bidirectional(previous, frame, iters=iters, alpha1=alpha1, alpha2=alpha2)
        elif previous is not None:
            flow_init = None
            if warm_start and flow_low is not None:
                from raft_engine.model.warm_start import forward_interpolate

                flow_init = forward_interpolate(flow_low)
            result = estimator.estimate(previous, frame, iters=iters, flow_init=flow_init)
            flow_low = result.flow_low
            yield result
        previous = frame
    if count < 2:
        raise InputError(f"a sequence needs at least 2 frames, got {count}")
