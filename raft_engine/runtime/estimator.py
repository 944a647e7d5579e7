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
    """What an estimator runs with.

    For the records of evaluations and benchmarks, and for the checks of its callers.

    Attributes:
        variant: "large" or "small".
        backend: "torch", "triton", "onnxruntime (CPUExecutionProvider)", ...
        dtype: "fp32", "fp16" or "bf16".
        device: Where it computes ("cpu", "cuda:0", or the server's address).
        corr: "auto", "volume" or "ondemand".
        compiled: Whether it runs under torch.compile.
        source: The ONNX file, or the server's URL and model; None for an engine.
        iters: The fixed iteration count of an exported graph; None: any, or not known.
        runs_own_iters: Whether it runs a count of its own (an exported graph's, known or not) that
            `estimate`'s iters can only repeat.
        size: The fixed (height, width) of its padded inputs; None: any.
        batch: Its fixed batch size; None: any.
        takes_flow_init: Whether `estimate` takes a flow_init (warm start).
    """

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
        """The fields evaluation records carry: backend, dtype, device, variant, corr, compiled, onnx.

        Returns:
            A dict of those fields; onnx is `source` for an ONNX Runtime backend, else None.
        """
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

    A protocol: `FlowEngine`, an ONNX Runtime session (`raft_engine.export.OrtFlowSession`) and a Triton
    Inference Server client (`raft_engine.export.TritonFlowClient`) are estimators; it is not instantiated.
    """

    @property
    def settings(self) -> EstimatorSettings:
        """What it runs with, as `EstimatorSettings`."""
        ...

    def estimate(
        self, image1: ImageLike, image2: ImageLike, iters: int | None = ..., flow_init: ArrayLike | None = ...
    ) -> FlowResult:
        """The flow from image1 to image2, padded and cropped back.

        Args:
            image1: The first image, in any of the image forms of `raft_engine.runtime.inputs.to_image_batch`.
            image2: The second image, in the same forms.
            iters: Refinement iterations; None is the estimator's own count (12 for an engine, the unrolled
                count of an exported graph).
            flow_init: Optional initial flow on the padded 1/8 grid (warm start), for an estimator that takes
                one (`EstimatorSettings.takes_flow_init`).

        Returns:
            The `FlowResult`.
        """
        ...

    def bidirectional(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int | None = ...,
        flow_init: tuple[ArrayLike, ArrayLike] | None = ...,
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> BidirectionalResult:
        """Both directions of a pair and the forward-backward check's masks.

        Of an exported graph, only one exported with them gives them.

        Args:
            image1: The first image, in the forms `estimate` takes.
            image2: The second image.
            iters: Refinement iterations; None: the estimator's own count.
            flow_init: None, or a pair (forward, backward) of initial flows on the padded 1/8 grid.
            alpha1: The check's relative constant (`raft_engine.model.consistency.forward_backward_check`).
            alpha2: The check's absolute constant, in square pixels.

        Returns:
            The `BidirectionalResult`.
        """
        ...

    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = ...,
        warm_start: bool = ...,
        batch_size: int | None = ...,
        bidirectional: bool = ...,
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> Iterator[Any]:
        """The result of each consecutive pair of frames, in order, as computed.

        An engine encodes each frame once; the others run pair by pair (`pairwise_sequence`).

        Args:
            frames: An iterable of images, one image each, in the forms `estimate` takes.
            iters: Refinement iterations; None: the estimator's own count.
            warm_start: Start each pair from the previous pair's flow (see `FlowEngine.sequence`); needs an
                estimator that takes flow_init.
            batch_size: Consecutive pairs that run as one batch (an engine); one that runs pair by pair takes
                only None or 1.
            bidirectional: Yield the `BidirectionalResult` of each pair instead of its `FlowResult`.
            alpha1: With bidirectional=True, the forward-backward check's relative constant.
            alpha2: With bidirectional=True, the check's absolute constant.

        Yields:
            The `FlowResult` of each pair (with bidirectional=True the `BidirectionalResult`).
        """
        ...

    def describe(self, height: int | None = None, width: int | None = None) -> str:
        """One line: where and how it runs.

        An engine's device, backend and correlation (for a size, the correlation mode used there); a
        session's provider; a server's address.

        Args:
            height: With `width`, a size whose correlation mode an engine names; None: no size.
            width: The width of that size.

        Returns:
            The line.
        """
        ...


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
