"""FlowEngine's sequence path (`FlowEngine.sequence` runs `start_sequence`): the flow of each consecutive
pair of a stream of frames, every frame through the feature encoder once, in batches of consecutive
pairs, warm-started or in both directions; and the splitting of a bidirectional output into its
directions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from raft_engine.errors import InputError, InputTypeError
from raft_engine.model.consistency import check_alphas, forward_backward_check
from raft_engine.model.raft import BidirectionalResult, FlowResult, RAFTOutput, normalize_images
from raft_engine.model.warm_start import forward_interpolate
from raft_engine.runtime.inputs import ImageLike, Padder, check_iters, positive_int, to_image_batch


class FlowEngine(Protocol):
    """What the sequence path uses of a `raft_engine.runtime.engine.FlowEngine` (typed by its needs, so that
    this module imports nothing of the engine's)."""

    model: Any
    device: torch.device

    def corr_mode_for(self, batch: int, height: int, width: int) -> str: ...

    def padder_for(self, height: int, width: int) -> Padder: ...

    def _pad(self, padder: Padder, batch: torch.Tensor) -> torch.Tensor: ...

    def _run(
        self, kind: str, mode: str, first: torch.Tensor, second: torch.Tensor, iters: int, flow_init: Any
    ) -> RAFTOutput: ...


DEFAULT_ITERS = 12  # RAFT's published count for inference at Sintel's and KITTI's sizes
DEFAULT_SEQUENCE_BATCH = 4  # consecutive pairs `sequence` runs as one batch


def start_sequence(
    engine: FlowEngine,
    frames: Iterable[ImageLike],
    iters: int | None,
    warm_start: bool,
    batch_size: int | None,
    bidirectional: bool,
    alpha1: float,
    alpha2: float,
) -> Iterator[Any]:
    """`FlowEngine.sequence`'s checks (see there) -> the results, computed as they are read."""
    iters = check_iters(DEFAULT_ITERS if iters is None else iters)
    batch_size = positive_int("batch_size", DEFAULT_SEQUENCE_BATCH if batch_size is None else batch_size)
    for name, flag in (("warm_start", warm_start), ("bidirectional", bidirectional)):
        if not isinstance(flag, bool):
            raise InputTypeError(f"{name} must be True or False, got {flag!r}")
    if bidirectional:
        check_alphas(alpha1, alpha2)
        if warm_start:
            raise InputError(
                "warm_start and bidirectional together are not supported: a warm start carries the forward "
                "flow only; run bidirectional sequences cold"
            )
    if isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim != 4:
        raise InputError(
            f"frames: an array holds a sequence as (T, H, W, C) (numpy) or (T, C, H, W) (torch), got shape "
            f"{tuple(frames.shape)}; for one pair use estimate"
        )
    if not isinstance(frames, Iterable):
        raise InputTypeError(f"frames must be an iterable of images, got {type(frames).__name__}")
    check = (alpha1, alpha2) if bidirectional else None
    return run_sequence(engine, iter(frames), iters, warm_start, batch_size, check)


@torch.inference_mode()
def run_sequence(
    engine: FlowEngine,
    frames: Iterator[ImageLike],
    iters: int,
    warm_start: bool,
    batch_size: int,
    check: tuple[float, float] | None,
) -> Iterator[Any]:
    padder: Padder | None = None
    images: list[torch.Tensor] = []  # padded frames of the next batch; the first one's fmap is known
    fmaps: torch.Tensor | None = None  # feature maps of images[: len(fmaps)]
    flow_low: torch.Tensor | None = None  # the previous pair's, for warm start
    count, failure = 0, None
    while True:
        try:
            image = _next_frame(engine, frames, count, padder)
            if image is None:
                break
            if padder is None:
                padder = engine.padder_for(*image.shape[-2:])
        except Exception as error:  # a bad frame, or the source failing: first the pairs before it
            failure = error
            break
        count += 1
        images.append(engine._pad(padder, image))
        if len(images) == batch_size + 1:
            fmaps = _encode_frames(engine, images, fmaps)
            for result in _sequence_batch(engine, padder, images, fmaps, iters, warm_start, flow_low, check):
                flow_low = result.flow_low if check is None else None
                yield result
            # The last frame starts the next batch; a copy of its features lets the others' go.
            images, fmaps = images[-1:], fmaps[-1:].clone()
    if len(images) > 1:
        assert padder is not None
        fmaps = _encode_frames(engine, images, fmaps)
        yield from _sequence_batch(engine, padder, images, fmaps, iters, warm_start, flow_low, check)
    if failure is not None:
        raise failure
    if count < 2:
        raise InputError(f"a sequence needs at least 2 frames, got {count}")


def _next_frame(
    engine: FlowEngine, frames: Iterator[ImageLike], index: int, padder: Padder | None
) -> torch.Tensor | None:
    """The next frame -> (1, 3, H, W) float32 on the device, checked against the first frame's size;
    None after the last."""
    for frame in frames:
        return _sequence_frame(engine, frame, index, padder)
    return None


def _sequence_frame(engine: FlowEngine, frame: ImageLike, index: int, padder: Padder | None) -> torch.Tensor:
    name = f"frame {index}"
    image = to_image_batch(frame, name)
    if image.shape[0] != 1:
        raise InputError(f"{name} is a batch of {image.shape[0]} images; a sequence takes one image per frame")
    height, width = image.shape[-2:]
    if padder is not None and (height, width) != (padder.height, padder.width):
        raise InputError(
            f"{name} is {height}x{width} (HxW), but frame 0 is {padder.height}x{padder.width}: every frame of a "
            "sequence must have the size of the first"
        )
    return image.to(engine.device)


def _encode_frames(engine: FlowEngine, images: list[torch.Tensor], fmaps: torch.Tensor | None) -> torch.Tensor:
    """Feature maps (len(images), D, H/8, W/8) float32: those of `fmaps` (the first frames'), then the
    rest through the feature encoder as one batch. The encoder's instance norm works per image, so
    this equals encoding each pair's two frames together, as `estimate` does."""
    known = 0 if fmaps is None else fmaps.shape[0]
    new = torch.cat(images[known:]) if len(images) - known > 1 else images[known]
    encoded = engine.model.fnet(normalize_images(new)).float()
    return encoded if fmaps is None else torch.cat([fmaps, encoded])


def _sequence_batch(
    engine: FlowEngine,
    padder: Padder,
    images: list[torch.Tensor],
    fmaps: torch.Tensor,
    iters: int,
    warm_start: bool,
    flow_low: torch.Tensor | None,
    check: tuple[float, float] | None = None,
) -> Iterator[Any]:
    """The len(images) - 1 pairs of consecutive `images`, one result each (a BidirectionalResult where
    `check` holds the consistency check's constants)."""
    pairs = len(images) - 1
    if check is not None:
        mode = engine.corr_mode_for(2 * pairs, padder.height, padder.width)
        output = engine._run("bidirectional_sequence", mode, torch.cat(images), fmaps, iters, None)
        both = directions(output, padder, pairs, *check)
        for k in range(pairs):
            yield _one_pair(both, k)
        return
    if not warm_start:
        mode = engine.corr_mode_for(pairs, padder.height, padder.width)
        output = engine._run("sequence", mode, torch.cat(images[:-1]), fmaps, iters, None)
        flow = padder.unpad(output.flow)
        for k in range(pairs):
            yield FlowResult(flow=flow[k : k + 1], flow_low=output.flow_low[k : k + 1])
        return
    mode = engine.corr_mode_for(1, padder.height, padder.width)
    for k in range(pairs):
        flow_init = None if flow_low is None else forward_interpolate(flow_low)
        output = engine._run("sequence", mode, images[k], fmaps[k : k + 2], iters, flow_init)
        flow_low = output.flow_low
        yield FlowResult(flow=padder.unpad(output.flow), flow_low=flow_low)


def directions(output: RAFTOutput, padder: Padder, batch: int, alpha1: float, alpha2: float) -> BidirectionalResult:
    """The output of a bidirectional forward (2B pairs, the forward ones first) -> the result of batch B;
    the check runs on the cropped flows, so that a target in the padding counts as outside."""
    flow = padder.unpad(output.flow)
    forward, backward = flow[:batch], flow[batch:]
    return BidirectionalResult(
        forward=FlowResult(flow=forward, flow_low=output.flow_low[:batch]),
        backward=FlowResult(flow=backward, flow_low=output.flow_low[batch:]),
        occlusion=forward_backward_check(forward, backward, alpha1, alpha2),
        occlusion_backward=forward_backward_check(backward, forward, alpha1, alpha2),
    )


def _one_pair(result: BidirectionalResult, k: int) -> BidirectionalResult:
    """Pair k of a batched result."""
    pick = slice(k, k + 1)
    return BidirectionalResult(
        forward=FlowResult(flow=result.forward.flow[pick], flow_low=_slice(result.forward.flow_low, pick)),
        backward=FlowResult(flow=result.backward.flow[pick], flow_low=_slice(result.backward.flow_low, pick)),
        occlusion=result.occlusion[pick],
        occlusion_backward=result.occlusion_backward[pick],
    )


def _slice(tensor: torch.Tensor | None, pick: slice) -> torch.Tensor | None:
    return None if tensor is None else tensor[pick]
