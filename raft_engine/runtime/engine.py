"""FlowEngine: optical flow for image pairs of any size, in any of the supported input forms, and for
sequences of frames (`FlowEngine.sequence`: every frame through the feature encoder once)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import torch

from raft_engine.model.consistency import ALPHA1, ALPHA2, check_alphas
from raft_engine.model.correlation import (
    dense_pyramid_bytes,
)
from raft_engine.model.raft import RAFT, BidirectionalResult, FlowResult, RAFTOutput
from raft_engine.runtime.compiled import CompiledForward
from raft_engine.runtime.estimator import EstimatorSettings
from raft_engine.runtime.inputs import (
    ArrayLike,
    ImageLike,
    Padder,
    check_iters,
    check_pair,
    parse_device,
    to_image_batch,
)
from raft_engine.runtime.options import BACKENDS, CORR_MODES, DEFAULT_CORR_BUDGET, TORCH_DTYPES, EngineOptions
from raft_engine.runtime.parts import build_parts, resolve_backend
from raft_engine.runtime.sequence import DEFAULT_ITERS, DEFAULT_SEQUENCE_BATCH, directions, start_sequence

if TYPE_CHECKING:
    from raft_engine.runtime.trace import FlowTrace

from raft_engine.errors import InputError, InputTypeError

__all__ = ["BACKENDS", "CORR_MODES", "DEFAULT_CORR_BUDGET", "EngineOptions", "FlowEngine", "FlowResult"]

log = logging.getLogger(__name__)

# The kinds of forward an engine runs, and the RAFT method of each (None: RAFT.forward itself).
_FORWARDS = {
    "pair": None,
    "sequence": "forward_sequence",
    "bidirectional": "forward_bidirectional",
    "bidirectional_sequence": "forward_bidirectional_sequence",
}


class FlowEngine:
    """Optical flow with a RAFT model.

    corr="auto" logs its choice (logger "raft_engine.runtime.engine") and `corr_mode_for` tells it. The
    compiled forward is `raft_engine.runtime.compiled`'s; `warmup` builds a shape's graph ahead of time.
    CUDA graphs' results are copied out, never overwritten by the next call.

    Args:
        model: A `RAFT` (e.g. from `load_model`); the engine works on its own copy.
        options: `EngineOptions` (device, dtype, padding, backend, corr, corr_dtype, corr_budget, compile,
            cuda_graphs, max_compiled_shapes, channels_last; see there); None: the defaults.
        **changes: Settings of those names, which set or override single settings of `options`:
            `FlowEngine(model, dtype="bf16")`, `FlowEngine(model, options, compile=True)`.

    Attributes:
        options: The `EngineOptions` it runs with, `changes` included.
        device: The torch.device.
        dtype: The torch dtype of the encoders and the update block.
        corr_dtype: The torch dtype of the correlation's storage.
        padding: The padding mode.
        backend: The backend, resolved: "torch" or "triton".
        corr: The correlation mode setting: "auto", "volume" or "ondemand".
        corr_budget: Bytes of dense pyramid that corr="auto" allows.
        config: The model's `RAFTConfig`.

    Raises:
        InputTypeError: `model` is not a `RAFT`, `options` not an `EngineOptions`, or a name in `changes` is
            not a setting.
        InputError: A wrong setting, a device that is not available, or cuda_graphs=True on a device other
            than CUDA.
    """

    def __init__(self, model: RAFT, options: EngineOptions | None = None, **changes: Any) -> None:
        if not isinstance(model, RAFT):
            raise InputTypeError(f"model must be a raft_engine.RAFT (see load_model), got {type(model).__name__}")
        if options is not None and not isinstance(options, EngineOptions):
            raise InputTypeError(
                f"options must be an EngineOptions, got {type(options).__name__}: give single settings by name, "
                "e.g. FlowEngine(model, device='cpu')"
            )
        options = (options or EngineOptions()).replace(**changes)
        self.options = options
        self.device = parse_device(options.device)
        self.dtype = TORCH_DTYPES[options.dtype]
        self.corr_dtype = TORCH_DTYPES[options.corr_dtype]
        self.padding = options.padding
        self.backend = resolve_backend(options.backend, self.device)
        self.corr = options.corr
        self.corr_budget = options.corr_budget
        cuda_graphs = options.cuda_graphs
        if cuda_graphs is None:
            cuda_graphs = options.compile and self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise InputError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        self.model = copy.deepcopy(model).eval().to(self.device).to_compute_dtype(self.dtype)
        self.channels_last = options.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.config = model.config
        self._models = build_parts(self.model, self.backend, self.corr_dtype)
        self._reported: set[tuple[int, int, int]] = set()
        # The forwards each kind of call runs, per correlation mode: a pair (RAFT.forward), consecutive frames
        # from their feature maps (forward_sequence), and both directions of either; each compiled on its
        # own (graphs of its own, up to max_compiled_shapes each).
        self._forwards: dict[str, dict[str, Callable[..., RAFTOutput]]] = {
            kind: {mode: part if method is None else getattr(part, method) for mode, part in self._models.items()}
            for kind, method in _FORWARDS.items()
        }
        shapes = options.max_compiled_shapes
        self._compiled = (
            {kind: CompiledForward(forwards, cuda_graphs, shapes) for kind, forwards in self._forwards.items()}
            if options.compile
            else {}
        )
        self.compiled = self._compiled.get("pair")
        self.compiled_sequence = self._compiled.get("sequence")

    def _run(
        self,
        kind: str,
        mode: str,
        first: torch.Tensor,
        second: torch.Tensor,
        iters: int,
        flow_init: torch.Tensor | None,
    ) -> RAFTOutput:
        """One forward of `kind` (a key of _FORWARDS) with correlation `mode`: compiled where compiling."""
        compiled = self._compiled.get(kind)
        if compiled is not None:
            return compiled(mode, first, second, iters, flow_init)
        return self._forwards[kind][mode](first, second, iters=iters, flow_init=flow_init)

    @property
    def settings(self) -> EstimatorSettings:
        """What this engine runs with, as `EstimatorSettings` (variant, backend, dtype, device, corr, compiled)."""
        return EstimatorSettings(
            variant=self.config.variant,
            backend=self.backend,
            dtype=self.options.dtype,
            device=str(self.device),
            corr=self.corr,
            compiled=self.compiled is not None,
        )

    def describe(self, height: int | None = None, width: int | None = None) -> str:
        """Where and how it runs: the device, backend and correlation mode.

        Args:
            height: With `width`, a size: the correlation mode is then the one used for a pair of that size;
                None (either of them): the `corr` setting.
            width: The width of that size.

        Returns:
            One line: "DEVICE, BACKEND, corr MODE".
        """
        corr = self.corr if height is None or width is None else self.corr_mode_for(1, height, width)
        return f"{self.device}, {self.backend}, corr {corr}"

    def __repr__(self) -> str:
        return (
            f"FlowEngine(RAFT-{self.config.variant}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, padding={self.padding!r}, "
            f"backend={self.backend!r}, corr={self.corr!r})"
        )

    def model_for(self, corr_mode: str) -> RAFT:
        """The engine's model (its weights, dtype and device) with one correlation mode on its backend.

        `corr_mode_for` tells which mode a shape uses.

        Args:
            corr_mode: "volume" or "ondemand".

        Returns:
            The `RAFT` with that correlation.

        Raises:
            InputError: An unknown correlation mode.
        """
        if corr_mode not in self._models:
            raise InputError(f"unknown correlation mode {corr_mode!r}; expected one of {tuple(self._models)}")
        return self._models[corr_mode]

    def corr_mode_for(self, batch: int, height: int, width: int) -> str:
        """The correlation mode this engine uses for `batch` pairs of height x width images.

        With corr="auto", "ondemand" where the dense pyramid of the padded images would take more than
        `corr_budget` bytes, else "volume"; the choice is logged once for each (batch, height, width).

        Args:
            batch: The number of pairs that run together.
            height: The images' height in pixels, before padding.
            width: The images' width in pixels, before padding.

        Returns:
            "volume" or "ondemand".
        """
        if self.corr != "auto":
            return self.corr
        padded_h, padded_w = Padder(height, width, self.padding).padded_size
        needed = dense_pyramid_bytes(batch, padded_h // 8, padded_w // 8, self.config.corr_levels, self.corr_dtype)
        mode = "ondemand" if needed > self.corr_budget else "volume"
        if (batch, height, width) not in self._reported:
            self._reported.add((batch, height, width))
            log.info(
                "corr='auto' chose %r for %d pair(s) of %dx%d: the dense pyramid would take %.2f GiB, budget %.2f GiB",
                mode,
                batch,
                height,
                width,
                needed / 2**30,
                self.corr_budget / 2**30,
            )
        return mode

    def prepare(self, image1: ImageLike, image2: ImageLike) -> tuple[torch.Tensor, torch.Tensor, Padder]:
        """Convert, validate and pad a pair.

        Args:
            image1: The first image or batch, in any form `to_image_batch` takes.
            image2: The second, of the same batch size and image size.

        Returns:
            (padded1, padded2, padder): both as (B, 3, H', W') float32 on the device, and the padder.

        Raises:
            InputTypeError: An image of a type not taken.
            InputError: A bad image, batch sizes or image sizes that differ, or images too small for RAFT.
        """
        batch1 = to_image_batch(image1, "image1").to(self.device)
        batch2 = to_image_batch(image2, "image2").to(self.device)
        check_pair(batch1, batch2)
        height, width = batch1.shape[-2:]
        padder = self.padder_for(height, width)
        return self._pad(padder, batch1), self._pad(padder, batch2), padder

    def padder_for(self, height: int, width: int) -> Padder:
        """The padder of height x width images, with the engine's padding mode.

        Args:
            height: The images' height in pixels.
            width: The images' width in pixels.

        Returns:
            The `Padder`.

        Raises:
            InputError: Images too small for RAFT; the message names the minimum.
        """
        padder = Padder(height, width, self.padding)
        padded_h, padded_w = padder.padded_size
        minimum = self.config.min_image_size
        if padded_h < minimum or padded_w < minimum:
            raise InputError(
                f"images of {height}x{width} (HxW) are too small for RAFT: padded to {padded_h}x{padded_w}, "
                f"they must be at least {minimum}x{minimum}, so that the 1/8 feature grid keeps "
                f"{self.config.min_feature_size // 2 ** (self.config.corr_levels - 1)} cells at the coarsest "
                f"of its {self.config.corr_levels} correlation levels"
            )
        return padder

    def _pad(self, padder: Padder, batch: torch.Tensor) -> torch.Tensor:
        # One memory layout whatever the input's: compiled graphs are specialised to strides.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return padder.pad(batch).contiguous(memory_format=layout)

    def check_flow_init(
        self, flow_init: ArrayLike, batch: int, grid: tuple[int, int], name: str = "flow_init"
    ) -> torch.Tensor:
        """Check an initial flow and move it to the device as float32.

        Args:
            flow_init: A (B, 2, H/8, W/8) flow on the padded 1/8 grid, a torch tensor or numpy array, e.g.
                the flow_low of the previous result.
            batch: The batch size B it must have.
            grid: The (H/8, W/8) it must have.
            name: What the error messages call it.

        Returns:
            The flow, float32 on the engine's device.

        Raises:
            InputTypeError: Neither a torch tensor nor a numpy array.
            InputError: Another shape, not floating point, or containing NaN or Inf.
        """
        if isinstance(flow_init, np.ndarray):
            flow_init = torch.from_numpy(flow_init)
        if not isinstance(flow_init, torch.Tensor):
            raise InputTypeError(f"{name} must be a torch tensor or numpy array, got {type(flow_init).__name__}")
        expected = (batch, 2, *grid)
        if tuple(flow_init.shape) != expected:
            raise InputError(
                f"{name} has shape {tuple(flow_init.shape)}, expected {expected}: (B, 2, H/8, W/8) on the "
                "padded 1/8 grid, e.g. the flow_low of the previous result"
            )
        if not flow_init.dtype.is_floating_point:
            raise InputError(f"{name} must be floating point, got {flow_init.dtype}")
        flow_init = flow_init.to(self.device, torch.float32)
        if not bool(flow_init.isfinite().all()):
            raise InputError(f"{name} contains NaN or Inf")
        return flow_init

    @torch.inference_mode()
    def estimate(
        self, image1: ImageLike, image2: ImageLike, iters: int | None = 12, flow_init: ArrayLike | None = None
    ) -> FlowResult:
        """Flow from image1 to image2.

        Args:
            image1: The first image: (H, W, 3)/(3, H, W) or batched; see `to_image_batch`.
            image2: The second image, of the same size and batch size.
            iters: Refinement iterations; None: 12.
            flow_init: Optional (B, 2, H/8, W/8) initial flow on the padded 1/8 grid (a warm start), e.g. the
                flow_low of the previous result.

        Returns:
            The `FlowResult`: flow at the input resolution, and flow_low on the padded 1/8 grid.

        Raises:
            InputTypeError: An image or flow_init of a type not taken.
            InputError: Bad images (sizes that differ, too small for RAFT, ...), iters or flow_init.
        """
        iters = check_iters(DEFAULT_ITERS if iters is None else iters)
        padded1, padded2, padder = self.prepare(image1, image2)
        checked_init = None
        if flow_init is not None:
            grid = (padded1.shape[-2] // 8, padded1.shape[-1] // 8)
            checked_init = self.check_flow_init(flow_init, padded1.shape[0], grid)
        mode = self.corr_mode_for(padded1.shape[0], padder.height, padder.width)
        output = self._run("pair", mode, padded1, padded2, iters, checked_init)
        return FlowResult(flow=padder.unpad(output.flow), flow_low=output.flow_low)

    @torch.inference_mode()
    def bidirectional(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int | None = 12,
        flow_init: tuple[ArrayLike, ArrayLike] | None = None,
        alpha1: float = ALPHA1,
        alpha2: float = ALPHA2,
    ) -> BidirectionalResult:
        """Flow image1 -> image2 and image2 -> image1, and the occlusion masks of the forward-backward check.

        Cheaper than two `estimate` calls: each image through the feature encoder once, the dense volume's
        product computed once (the backward volume is its transpose), both directions as one batch through
        the iterations, the check on the device. `forward` equals `estimate(image1, image2)` and `backward`
        `estimate(image2, image1)` (to float32 rounding). The correlation mode is chosen for the 2B pairs
        that run together.

        Args:
            image1: The first image or batch, in the forms `estimate` takes.
            image2: The second, of the same size and batch size.
            iters: Refinement iterations; None: 12.
            flow_init: None, or a pair (forward, backward) of (B, 2, H/8, W/8) flows, e.g. the flow_low of a
                previous result's directions.
            alpha1: The check's relative constant (`raft_engine.model.consistency.forward_backward_check`).
            alpha2: The check's absolute constant, in square pixels.

        Returns:
            The `BidirectionalResult`: both directions and both occlusion masks.

        Raises:
            InputTypeError: flow_init that is not a pair, or an image or flow of a type not taken.
            InputError: Bad images, iters, alphas or flows.
        """
        iters = check_iters(DEFAULT_ITERS if iters is None else iters)
        check_alphas(alpha1, alpha2)
        padded1, padded2, padder = self.prepare(image1, image2)
        batch, grid = padded1.shape[0], (padded1.shape[-2] // 8, padded1.shape[-1] // 8)
        checked_init = None
        if flow_init is not None:
            if not (isinstance(flow_init, (tuple, list)) and len(flow_init) == 2):
                raise InputTypeError(
                    "flow_init must be a pair (forward, backward) of (B, 2, H/8, W/8) flows, e.g. "
                    f"(result.forward.flow_low, result.backward.flow_low); got {type(flow_init).__name__}"
                )
            names = ("flow_init[0] (forward)", "flow_init[1] (backward)")
            pairs = zip(flow_init, names, strict=True)
            checked = [self.check_flow_init(init, batch, grid, name) for init, name in pairs]
            checked_init = torch.cat(checked)
        mode = self.corr_mode_for(2 * batch, padder.height, padder.width)
        output = self._run("bidirectional", mode, padded1, padded2, iters, checked_init)
        return directions(output, padder, batch, alpha1, alpha2)

    @torch.inference_mode()
    def trace(
        self,
        image1: ImageLike,
        image2: ImageLike,
        iters: int = 12,
        pixels: Iterable[tuple[float, float]] = (),
        flow_init: ArrayLike | None = None,
    ) -> FlowTrace:
        """Run one pair and keep RAFT's internals.

        The internals: feature maps, and for each test pixel (x, y) its correlation response maps,
        correspondences per iteration and lookup windows. `raft_engine.tools.inspection_html.write_report`
        draws them.

        Args:
            image1: The first image (one pair, not a batch), in the forms `estimate` takes.
            image2: The second image, of the same size.
            iters: Refinement iterations.
            pixels: The test pixels, each (x, y).
            flow_init: Optional (1, 2, H/8, W/8) initial flow on the padded 1/8 grid.

        Returns:
            The `raft_engine.runtime.trace.FlowTrace`.

        Raises:
            InputError: A batch of more than one pair, or bad images, iters or flow_init.
        """
        from raft_engine.runtime.trace import trace_model

        iters = check_iters(iters)
        padded1, padded2, padder = self.prepare(image1, image2)
        if padded1.shape[0] != 1:
            raise InputError(f"trace takes one pair of images, got a batch of {padded1.shape[0]}")
        checked_init = None
        if flow_init is not None:
            grid = (padded1.shape[-2] // 8, padded1.shape[-1] // 8)
            checked_init = self.check_flow_init(flow_init, 1, grid)
        model = self.model_for(self.corr_mode_for(1, padder.height, padder.width))
        return trace_model(model, padded1, padded2, padder, iters, pixels, checked_init)

    @overload
    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = ...,
        warm_start: bool = ...,
        batch_size: int | None = ...,
        bidirectional: Literal[False] = ...,
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> Iterator[FlowResult]: ...

    @overload
    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = ...,
        warm_start: bool = ...,
        batch_size: int | None = ...,
        *,
        bidirectional: Literal[True],
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> Iterator[BidirectionalResult]: ...

    @overload
    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = ...,
        warm_start: bool = ...,
        batch_size: int | None = ...,
        bidirectional: bool = ...,
        alpha1: float = ...,
        alpha2: float = ...,
    ) -> Iterator[FlowResult] | Iterator[BidirectionalResult]: ...

    def sequence(
        self,
        frames: Iterable[ImageLike],
        iters: int | None = 12,
        warm_start: bool = False,
        batch_size: int | None = DEFAULT_SEQUENCE_BATCH,
        bidirectional: bool = False,
        alpha1: float = ALPHA1,
        alpha2: float = ALPHA2,
    ) -> Iterator[FlowResult] | Iterator[BidirectionalResult]:
        """The flow of each consecutive pair of `frames` (0 -> 1, 1 -> 2, ...), in order, as it is computed.

        Each frame goes through the feature encoder once, its features serving as the second image of
        one pair and the first of the next. Frames are read as they are needed: at most batch_size + 1
        frames and their feature maps are held at once.

        Args:
            frames: Any iterable of images, one image each, in the forms `estimate` takes (numpy, PIL,
                torch; the frames of `raft_engine.io.read_video`; a (T, H, W, C) array or (T, C, H, W)
                tensor), all of the size of the first.
            iters: Refinement iterations; None: 12.
            warm_start: False: the pairs are independent, and `batch_size` consecutive pairs run as one
                batch; each flow equals `estimate` on that pair (to float32 rounding). True: each pair starts
                from the previous pair's 1/8 flow carried to its first frame
                (`raft_engine.model.warm_start.forward_interpolate`, on the device), as the published Sintel
                submission does; the first pair starts from zero. A pair needs the previous one's result,
                so the iterations run pair by pair; the feature encoder still runs `batch_size` frames
                at a time. Each flow equals `estimate(..., flow_init=forward_interpolate(previous.flow_low))`.
            batch_size: Consecutive pairs that run as one batch; None: 4.
            bidirectional: True: a `BidirectionalResult` per pair (both directions and both masks, as
                `bidirectional` gives), every frame still encoded once; the 2 x batch_size directions run
                as one batch. Cold only: warm_start=True is refused.
            alpha1: With bidirectional=True, the forward-backward check's relative constant, as in
                `bidirectional`.
            alpha2: With bidirectional=True, the check's absolute constant, as in `bidirectional`.

        Yields:
            A `FlowResult` per pair, holding that pair (batch 1); with bidirectional=True a
            `BidirectionalResult`.

        Raises:
            InputTypeError: frames that are not an iterable, or warm_start or bidirectional not a bool.
            InputError: A bad iters, batch_size or alpha, warm_start=True with bidirectional=True, or an array
                of frames that is not 4-dimensional.
            ValueError: Fewer than 2 frames, or a bad frame (another size, a batch, not an image), named; a
                frame of a type not taken raises a TypeError. A bad frame, like an error of the iterable
                itself, is raised after the flows of every pair before it have been yielded.
        """
        return start_sequence(self, frames, iters, warm_start, batch_size, bidirectional, alpha1, alpha2)

    def warmup(self, batch: int, height: int, width: int, iters: int = 12, warm_start: bool = False) -> float:
        """Run `batch` pairs of height x width so that the compiled graph of that shape exists before serving.

        Once, or three times with CUDA graphs: warm-up, record, replay.

        Args:
            batch: The number of pairs.
            height: The images' height in pixels.
            width: The images' width in pixels.
            iters: Refinement iterations.
            warm_start: Pass a zero flow_init, as a warm-started call does.

        Returns:
            The seconds taken.
        """
        iters = check_iters(iters)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, batch, 3, height, width), generator=generator, dtype=torch.uint8)
        flow_init = None
        if warm_start:
            padded_h, padded_w = Padder(height, width, self.padding).padded_size
            flow_init = torch.zeros(batch, 2, padded_h // 8, padded_w // 8)
        repeats = 3 if self.compiled is not None and self.compiled.cuda_graphs else 1
        for _ in range(repeats):
            self.estimate(images[0], images[1], iters=iters, flow_init=flow_init)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def __call__(self, image1: ImageLike, image2: ImageLike, iters: int = 12) -> torch.Tensor:
        """The flow (B, 2, H, W) float32 of `estimate`.

        Args:
            image1: The first image or batch, in the forms `estimate` takes.
            image2: The second, of the same size and batch size.
            iters: Refinement iterations.

        Returns:
            `estimate(image1, image2, iters=iters).flow`.
        """
        return self.estimate(image1, image2, iters=iters).flow
