"""Looking inside RAFT: feature maps, correlation response maps, correspondences per iteration and
the correlation windows the update block reads.

`FlowEngine.trace(image1, image2, iters, pixels)` runs the engine's own model parts (so every
backend and correlation mode) through `trace_model`, a loop of its own that keeps what it is asked
for; the normal forward has no hooks and pays nothing for this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from raft_engine.errors import InputError, InputTypeError
from raft_engine.model.raft import RAFT, Iteration
from raft_engine.runtime.inputs import Padder


@dataclass(frozen=True)
class PixelTrace:
    """What the model did at one test pixel.

    pixel: (x, y) in input-image pixels, as given. cell: (x, y) of the 1/8 cell of the padded grid
        that contains it.
    response[level]: (H/8 >> level, W/8 >> level), the cell's row of correlation-pyramid level `level`:
        its correlation with every (pooled) position of image 2.
    correspondence: (iters + 1, 2) float32 (x, y) in 1/8-grid cells; entry k is where update k looked
        (entry 0: the start), the last entry the final estimate.
    window[k][level]: (2r+1, 2r+1) float32, the correlation window fed to update k at `level`, in image
        orientation: row = vertical offset -r..r, column = horizontal offset -r..r.
    """

    pixel: tuple[float, float]
    cell: tuple[int, int]
    response: list[np.ndarray]
    correspondence: np.ndarray
    window: list[list[np.ndarray]]


@dataclass(frozen=True)
class FlowTrace:
    """Whole-image tensors (float32, CPU, batch of one) and the per-pixel traces.

    fmap1, fmap2: (1, D, H', W') features; context: (1, C, H', W') context features (after ReLU);
    hidden: (1, Ch, H', W') initial hidden state (after tanh). Per iteration k: motion_features[k]
    (1, M, H', W'), delta_flow[k] (1, 2, H', W') and flow_low[k] (1, 2, H', W') after update k.
    flow: (1, 2, H, W) the final flow at the input resolution, as `estimate` returns it.
    H', W' is the padded 1/8 grid; `pads` is the padding (left, right, top, bottom) in pixels.
    """

    fmap1: torch.Tensor
    fmap2: torch.Tensor
    context: torch.Tensor
    hidden: torch.Tensor
    motion_features: list[torch.Tensor]
    delta_flow: list[torch.Tensor]
    flow_low: list[torch.Tensor]
    flow: torch.Tensor
    pixels: list[PixelTrace]
    pads: tuple[int, int, int, int]
    radius: int
    image_size: tuple[int, int]


def _cells(
    pixels, height: int, width: int, pads: tuple[int, int, int, int]
) -> list[tuple[tuple[float, float], tuple[int, int]]]:
    left, _, top, _ = pads
    cells = []
    for pixel in pixels:
        try:
            x, y = (float(v) for v in pixel)
        except (TypeError, ValueError) as error:
            raise InputTypeError(f"a test pixel must be an (x, y) pair of numbers, got {pixel!r}") from error
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"test pixel (x={x:g}, y={y:g}) is outside the {width}x{height} (WxH) image")
        cells.append(((x, y), (int((x + left) // 8), int((y + top) // 8))))
    return cells


def _window(corr: torch.Tensor, level: int, radius: int, y: int, x: int) -> np.ndarray:
    side = 2 * radius + 1
    values = corr[0, level * side * side : (level + 1) * side * side, y, x]
    # Channels run over the horizontal offset first (published order): transpose to image orientation.
    return values.view(side, side).t().float().cpu().numpy()


@torch.inference_mode()
def trace_model(
    model: RAFT,
    padded1: torch.Tensor,
    padded2: torch.Tensor,
    padder: Padder,
    iters: int,
    pixels: Iterable[tuple[float, float]] = (),
    flow_init: torch.Tensor | None = None,
) -> FlowTrace:
    """Run `model` on one padded pair (1, 3, H', W') and keep its internals; see `FlowTrace` and
    `PixelTrace`. `FlowEngine.trace` converts, checks and pads the images and picks the model.

    It runs the model's own loop (`RAFT.refine`), observing each iteration; the tests pin its flow to
    `RAFT.forward`'s."""
    cells = _cells(list(pixels), padder.height, padder.width, padder.pads)
    radius = model.config.corr_radius

    fmap1, fmap2, net, inp = model.encode(padded1, padded2)
    corr_state = model.correlation.build(fmap1, fmap2)
    coords0, coords1 = model.initial_coords(fmap1, flow_init)
    hidden = net
    positions: list[list[list[float]]] = [[coords1[0, :, y, x].tolist()] for _, (x, y) in cells]
    windows: list[list[list[np.ndarray]]] = [[] for _ in cells]
    motion_features: list[torch.Tensor] = []
    delta_flow: list[torch.Tensor] = []
    flow_low: list[torch.Tensor] = []

    def record(iteration: Iteration) -> None:
        for i, (_, (x, y)) in enumerate(cells):
            levels = range(model.config.corr_levels)
            windows[i].append([_window(iteration.corr, level, radius, y, x) for level in levels])
            positions[i].append(iteration.coords1[0, :, y, x].tolist())
        motion_features.append(iteration.motion.float().cpu())
        delta_flow.append(iteration.delta_flow.cpu())
        flow_low.append((iteration.coords1 - coords0).cpu())

    net, coords1 = model.refine(corr_state, net, inp, coords0, coords1, iters, observe=record)
    flow = padder.unpad(model.upsample(coords1 - coords0, net))

    traces = []
    for i, (pixel, (x, y)) in enumerate(cells):
        responses = [r.cpu().numpy() for r in model.correlation.responses(corr_state, 0, y, x)]
        traces.append(PixelTrace(pixel, (x, y), responses, np.array(positions[i], np.float32), windows[i]))
    return FlowTrace(
        fmap1=fmap1.cpu(),
        fmap2=fmap2.cpu(),
        context=inp.float().cpu(),
        hidden=hidden.float().cpu(),
        motion_features=motion_features,
        delta_flow=delta_flow,
        flow_low=flow_low,
        flow=flow.cpu(),
        pixels=traces,
        pads=padder.pads,
        radius=radius,
        image_size=(padder.height, padder.width),
    )
