"""RAFT: Recurrent All-Pairs Field Transforms for optical flow (Teed & Deng, ECCV 2020).

`RAFT` is composed of parts: feature encoder (`fnet`), context encoder (`cnet`), a correlation
part (`raft_engine.model.correlation`: the dense pyramid or the on-demand lookup, PyTorch or Triton), the
update block, and an upsampler (`raft_engine.model.upsampling`: convex for RAFT-large, bilinear x8 for
RAFT-small). It reproduces the published network exactly; see
`raft_engine.weights` for loading the published and torchvision checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from raft_engine.errors import InputError
from raft_engine.model.config import RAFTConfig
from raft_engine.model.correlation import Correlation, DenseCorrelation
from raft_engine.model.encoders import Encoder
from raft_engine.model.update import UpdateBlock
from raft_engine.model.upsampling import BilinearUpsampler, ConvexUpsampler, Upsampler

__all__ = [
    "RAFT",
    "BidirectionalResult",
    "BilinearUpsampler",
    "ConvexUpsampler",
    "FlowResult",
    "Iteration",
    "RAFTOutput",
    "Upsampler",
    "coords_grid",
    "normalize_images",
]


@dataclass(frozen=True)
class RAFTOutput:
    """What a forward of `RAFT` returns.

    Attributes:
        flow: (B, 2, 8H', 8W') float32 at the padded input resolution, in pixels, x first.
        flow_low: (B, 2, H', W') float32 on the 1/8 grid, in 1/8-grid cells (coords1 - coords0).
    """

    flow: torch.Tensor
    flow_low: torch.Tensor


@dataclass(frozen=True)
class Iteration:
    """One refinement of `RAFT.refine`, as an observer sees it (tensors of the computation, not copies).

    index: 0 for the first. corr: (B, levels * (2r + 1)^2, H/8, W/8) float32, the correlation looked up
    around the previous coordinates. motion: the motion features made of it and the flow so far. net: the
    hidden state after the update. delta_flow: (B, 2, H/8, W/8) float32, the update. coords1: the
    coordinates after it (coords1 - coords0 is the flow on the 1/8 grid, in cells)."""

    index: int
    corr: torch.Tensor
    motion: torch.Tensor
    net: torch.Tensor
    delta_flow: torch.Tensor
    coords1: torch.Tensor


@dataclass(frozen=True)
class FlowResult:
    """What `FlowEngine.estimate` (and `OrtFlowSession.estimate`) return.

    Attributes:
        flow: (B, 2, H, W) float32 at the input resolution, in pixels, (u, v) = (x, y) displacement.
        flow_low: (B, 2, H'/8, W'/8) float32 on the padded 1/8 grid, in 1/8-grid cells; pass it as
            `flow_init` of the next pair of a sequence to warm-start it. None only from an ONNX graph
            exported without the flow_low output.
    """

    flow: torch.Tensor
    flow_low: torch.Tensor | None


@dataclass(frozen=True)
class BidirectionalResult:
    """What `FlowEngine.bidirectional` returns: both directions of a pair and where each is not confirmed.

    Attributes:
        forward: `FlowResult` image1 -> image2.
        backward: `FlowResult` image2 -> image1.
        occlusion: (B, H, W) bool, True where a pixel of image1 fails the forward-backward check or its
            target falls outside image2 (`raft_engine.model.consistency.forward_backward_check`).
        occlusion_backward: The same for the pixels of image2.
    """

    forward: FlowResult
    backward: FlowResult
    occlusion: torch.Tensor
    occlusion_backward: torch.Tensor


def coords_grid(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(B, 2, H, W) float32 cell coordinates, x first."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys]).unsqueeze(0).expand(batch, 2, height, width)


def normalize_images(image: torch.Tensor) -> torch.Tensor:
    """0..255 -> [-1, 1], the published 2 * (x / 255) - 1."""
    return 2 * (image / 255.0) - 1.0


class RAFT(nn.Module):
    """RAFT built from its parts.

    Modules passed in are shared, not copied: two models built from the same modules share their weights.

    Args:
        config: The architecture.
        fnet: The trained feature encoder; None builds a fresh one for `config`.
        cnet: The trained context encoder; None builds a fresh one for `config`.
        update_block: The trained update block; None builds a fresh one for `config`.
        correlation: A `Correlation` part (default: the published dense pyramid with the PyTorch lookup).
        upsampler: An `Upsampler` (default: convex for RAFT-large, bilinear for RAFT-small, PyTorch
            references).

    Raises:
        InputError: A correlation part whose levels or radius are not those of `config`.
    """

    def __init__(
        self,
        config: RAFTConfig,
        *,
        fnet: Encoder | None = None,
        cnet: Encoder | None = None,
        update_block: UpdateBlock | None = None,
        correlation: Correlation | None = None,
        upsampler: Upsampler | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        widths, block = config.encoder_widths, config.encoder_block
        self.fnet = fnet if fnet is not None else Encoder(widths, block, "instance", config.feature_dim)
        self.cnet = (
            cnet
            if cnet is not None
            else Encoder(widths, block, config.context_norm, config.hidden_dim + config.context_dim)
        )
        self.update_block = update_block if update_block is not None else UpdateBlock(config)
        correlation = correlation or DenseCorrelation(config.corr_levels, config.corr_radius)
        if (correlation.levels, correlation.radius) != (config.corr_levels, config.corr_radius):
            raise InputError(
                f"the correlation part has {correlation.levels} levels of radius {correlation.radius}; RAFT-"
                f"{config.variant} needs {config.corr_levels} levels of radius {config.corr_radius}"
            )
        self.correlation: Correlation = correlation
        self.upsampler: Upsampler = upsampler or (
            ConvexUpsampler() if config.convex_upsampling else BilinearUpsampler()
        )

    def parts(self) -> dict[str, Any]:
        """The trained modules (fnet, cnet, update_block), as keyword arguments of `RAFT(config, ...)`.

        A model built with them shares these weights, e.g. `RAFT(model.config, **model.parts(), correlation=other)`.
        """
        return {"fnet": self.fnet, "cnet": self.cnet, "update_block": self.update_block}

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the encoders and the update block; correlation and coordinates stay float32."""
        return self.update_block.dtype

    def features(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both images through the feature encoder as one batch, as published.

        Args:
            image1: (B, 3, H, W) first images, normalised to [-1, 1] (`normalize_images`).
            image2: (B, 3, H, W) second images, likewise.

        Returns:
            (fmap1, fmap2): float32 feature maps, (B, D, H/8, W/8) each.
        """
        fmaps = self.fnet(torch.cat([image1, image2], dim=0)).float()
        batch = image1.shape[0]
        # Slices, not chunk(2): chunk's output count is a guard that torch.export cannot prove for a
        # symbolic batch, so a dynamic-batch ONNX export would silently fix the batch size.
        return fmaps[:batch], fmaps[batch:]

    def context(self, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context encoder's output for the first image.

        Args:
            image1: (B, 3, H, W) images, normalised to [-1, 1] (`normalize_images`).

        Returns:
            (net, inp): the initial hidden state tanh(.) and the context features relu(.).
        """
        hidden, context = self.cnet(image1).split([self.config.hidden_dim, self.config.context_dim], dim=1)
        return torch.tanh(hidden), torch.relu(context)

    def encode(
        self, image1: torch.Tensor, image2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both encoders: the features of both images, and the hidden state and context of the first.

        Args:
            image1: (B, 3, H, W) first images, in 0..255.
            image2: (B, 3, H, W) second images, in 0..255.

        Returns:
            (fmap1, fmap2, net, inp): float32 features, initial hidden state, context.
        """
        image1 = normalize_images(image1)
        image2 = normalize_images(image2)
        fmap1, fmap2 = self.features(image1, image2)
        net, inp = self.context(image1)
        return fmap1, fmap2, net, inp

    def initial_coords(
        self, fmap1: torch.Tensor, flow_init: torch.Tensor | None = None, batch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The 1/8 grid's cell coordinates, and where the iterations start.

        Args:
            fmap1: A feature map (B, D, H/8, W/8): its grid, batch and device are used.
            flow_init: Optional (B, 2, H/8, W/8) initial flow on the 1/8 grid.
            batch: The batch B; None: fmap1's.

        Returns:
            (coords0, coords1): the cell coordinates, and where the iterations start (coords0, or
            coords0 + flow_init), (B, 2, H/8, W/8) float32, x first.
        """
        _, _, height, width = fmap1.shape
        coords0 = coords_grid(fmap1.shape[0] if batch is None else batch, height, width, fmap1.device)
        return coords0, coords0 if flow_init is None else coords0 + flow_init.float()

    def refine(
        self,
        corr_state: Any,
        net: torch.Tensor,
        inp: torch.Tensor,
        coords0: torch.Tensor,
        coords1: torch.Tensor,
        iters: int,
        observe: Callable[[Iteration], None] | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RAFT's iterations, the one loop that inference, sequences, training and the trace all run.

        Look up the correlation around coords1, update the hidden state and move coords1, `iters` times.

        Args:
            corr_state: The correlation part's state, as its `build` or `build_bidirectional` made it.
            net: The hidden state.
            inp: The context features.
            coords0: (B, 2, H/8, W/8) float32 cell coordinates of the 1/8 grid.
            coords1: (B, 2, H/8, W/8) float32 coordinates where the iterations start.
            iters: The number of iterations.
            observe: Called after each iteration with an `Iteration` (what was looked up, the motion features,
                the update): training collects its per-iteration predictions from it, the trace RAFT's internals.
            autocast: A context (torch.autocast) around the update block, for training's mixed precision; the
                correlation and the coordinates stay float32.

        Returns:
            (net, coords1): the hidden state and the coordinates after the last iteration.
        """
        for index in range(iters):
            if coords1.requires_grad:
                coords1 = coords1.detach()  # as published: no gradient through the coordinates across iterations
            corr = self.correlation.lookup(corr_state, coords1)
            with autocast if autocast is not None else contextlib.nullcontext():
                motion = self.update_block.motion_features(corr, coords1 - coords0)
                net, delta_flow = self.update_block.refine(net, inp, motion)
            coords1 = coords1 + delta_flow
            if observe is not None:
                observe(Iteration(index, corr, motion, net, delta_flow, coords1))
        return net, coords1

    def upsample(self, flow_low: torch.Tensor, net: torch.Tensor) -> torch.Tensor:
        """Upsample a flow from the 1/8 grid to the full resolution, guided by the hidden state.

        Args:
            flow_low: (B, 2, H/8, W/8) flow in cells.
            net: The hidden state, from which the upsampling mask is made.

        Returns:
            (B, 2, H, W) flow in pixels.
        """
        return self.upsampler(flow_low, self.update_block.up_mask(net))

    def forward_features(
        self,
        image1: torch.Tensor,
        fmap1: torch.Tensor,
        fmap2: torch.Tensor,
        iters: int = 12,
        flow_init: torch.Tensor | None = None,
        observe: Callable[[Iteration], None] | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> RAFTOutput:
        """RAFT from the feature maps on.

        The context of image1, the correlation of fmap1 with fmap2, the iterations (`refine`) and the
        upsampling. What `forward` runs after the feature encoder, and what a sequence runs for pairs whose
        frames were encoded once.

        Args:
            image1: (B, 3, H, W) float in 0..255, padded, for the context encoder.
            fmap1: (B, D, H/8, W/8) float32, contiguous: the first images' feature maps.
            fmap2: (B, D, H/8, W/8) float32, contiguous: the second images' feature maps.
            iters: Refinement iterations.
            flow_init: Optional (B, 2, H/8, W/8) float32 initial flow on the 1/8 grid.
            observe: See `refine`.
            autocast: See `refine`; the context encoder and the upsampling mask run under it too.

        Returns:
            The `RAFTOutput`.
        """
        with autocast if autocast is not None else contextlib.nullcontext():
            net, inp = self.context(normalize_images(image1))
        corr_state = self.correlation.build(fmap1, fmap2)
        coords0, coords1 = self.initial_coords(fmap1, flow_init)
        net, coords1 = self.refine(corr_state, net, inp, coords0, coords1, iters, observe, autocast)
        flow_low = coords1 - coords0
        with autocast if autocast is not None else contextlib.nullcontext():
            up_mask = self.update_block.up_mask(net)
        return RAFTOutput(flow=self.upsampler(flow_low, up_mask), flow_low=flow_low)

    def forward_sequence(
        self, image1: torch.Tensor, fmaps: torch.Tensor, iters: int = 12, flow_init: torch.Tensor | None = None
    ) -> RAFTOutput:
        """The B consecutive pairs of B + 1 frames encoded once.

        Args:
            image1: (B, 3, H, W) float in 0..255, the first frame of each pair.
            fmaps: (B + 1, D, H/8, W/8) float32, the frames' feature maps (pair k is fmaps[k] -> fmaps[k + 1];
                batch slices of a contiguous tensor are contiguous).
            iters: Refinement iterations.
            flow_init: Optional (B, 2, H/8, W/8) float32 initial flow on the 1/8 grid.

        Returns:
            The `RAFTOutput` of the B pairs.
        """
        return self.forward_features(image1, fmaps[:-1], fmaps[1:], iters, flow_init)

    def forward_bidirectional_features(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        fmap1: torch.Tensor,
        fmap2: torch.Tensor,
        iters: int = 12,
        flow_init: torch.Tensor | None = None,
    ) -> RAFTOutput:
        """Both directions of B pairs as one batch of 2B through the iterations.

        Pairs image1 -> image2 first, then image2 -> image1. Each image's features are given (computed
        once); the correlation is built for both at once (`Correlation.build_bidirectional`: the dense
        volume's product once).

        Args:
            image1: (B, 3, H, W) float in 0..255, the first images.
            image2: (B, 3, H, W) float in 0..255, the second images.
            fmap1: (B, D, H/8, W/8) float32, image1's feature maps.
            fmap2: (B, D, H/8, W/8) float32, image2's feature maps.
            iters: Refinement iterations.
            flow_init: Optional (2B, 2, H/8, W/8), in the same order.

        Returns:
            The `RAFTOutput` of batch 2B.
        """
        net, inp = self.context(normalize_images(torch.cat([image1, image2])))
        corr_state = self.correlation.build_bidirectional(fmap1, fmap2)
        coords0, coords1 = self.initial_coords(fmap1, flow_init, batch=2 * fmap1.shape[0])
        net, coords1 = self.refine(corr_state, net, inp, coords0, coords1, iters)
        flow_low = coords1 - coords0
        return RAFTOutput(flow=self.upsample(flow_low, net), flow_low=flow_low)

    def forward_bidirectional(
        self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12, flow_init: torch.Tensor | None = None
    ) -> RAFTOutput:
        """Both directions of B pairs, each image through the feature encoder once.

        Args:
            image1: (B, 3, H, W) float in 0..255, the first images.
            image2: (B, 3, H, W) float in 0..255, the second images.
            iters: Refinement iterations.
            flow_init: Optional (2B, 2, H/8, W/8), in the order of the output.

        Returns:
            The `RAFTOutput`: flow (2B, 2, H, W), image1 -> image2 in the first B, image2 -> image1 in the
            last B (see `forward_bidirectional_features`).
        """
        fmap1, fmap2 = self.features(normalize_images(image1), normalize_images(image2))
        return self.forward_bidirectional_features(image1, image2, fmap1, fmap2, iters, flow_init)

    def forward_bidirectional_sequence(
        self, frames: torch.Tensor, fmaps: torch.Tensor, iters: int = 12, flow_init: torch.Tensor | None = None
    ) -> RAFTOutput:
        """Both directions of the B consecutive pairs of B + 1 frames encoded once.

        Args:
            frames: (B + 1, 3, H, W) float in 0..255.
            fmaps: (B + 1, D, H/8, W/8) float32, their feature maps.
            iters: Refinement iterations.
            flow_init: Optional (2B, 2, H/8, W/8), in the order of the output.

        Returns:
            The `RAFTOutput` of batch 2B: the forward pairs k -> k + 1 first, then k + 1 -> k.
        """
        return self.forward_bidirectional_features(frames[:-1], frames[1:], fmaps[:-1], fmaps[1:], iters, flow_init)

    def forward(
        self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12, flow_init: torch.Tensor | None = None
    ) -> RAFTOutput:
        """The flow from image1 to image2.

        Args:
            image1: (B, 3, H, W) float in 0..255, H and W multiples of 8.
            image2: (B, 3, H, W) float in 0..255, likewise.
            iters: Refinement iterations.
            flow_init: Optional (B, 2, H/8, W/8) float32 initial flow on the 1/8 grid.

        Returns:
            The `RAFTOutput`.
        """
        fmap1, fmap2 = self.features(normalize_images(image1), normalize_images(image2))
        return self.forward_features(image1, fmap1, fmap2, iters, flow_init)

    def to_compute_dtype(self, dtype: torch.dtype) -> RAFT:
        """Cast the encoders and the update block (in place); correlation and coordinates stay float32.

        Args:
            dtype: The torch dtype, e.g. torch.bfloat16.

        Returns:
            This model.
        """
        for part in (self.fnet, self.cnet, self.update_block):
            part.to(dtype)
        return self
