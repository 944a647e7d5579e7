"""RAFT: Recurrent All-Pairs Field Transforms for optical flow (Teed & Deng, ECCV 2020).

`RAFT` is composed of parts: feature encoder (`fnet`), context encoder (`cnet`), a correlation
part (dense pyramid; others arrive with the kernels), the update block, and an upsampler (convex for
RAFT-large, bilinear x8 for RAFT-small). It reproduces the published network exactly; see
`raft_engine.weights` for loading the published and torchvision checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raft_engine.config import RAFTConfig
from raft_engine.correlation import DenseCorrelation
from raft_engine.encoders import Encoder
from raft_engine.kernels.convex_upsample import bilinear_upsample_ref, convex_upsample_ref
from raft_engine.update import UpdateBlock


@dataclass(frozen=True)
class RAFTOutput:
    """flow: (B, 2, 8H', 8W') float32 at the padded input resolution, in pixels, x first.
    flow_low: (B, 2, H', W') float32 on the 1/8 grid, in 1/8-grid cells (coords1 - coords0)."""

    flow: torch.Tensor
    flow_low: torch.Tensor


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


@dataclass(frozen=True)
class ConvexUpsampler:
    """RAFT-large: convex combination of the 3x3 neighbourhood, weights from the update block's mask.
    upsample_fn: `convex_upsample_ref` or the Triton `convex_upsample`."""

    upsample_fn: Callable = convex_upsample_ref

    def __call__(self, flow_low: torch.Tensor, up_mask: torch.Tensor | None) -> torch.Tensor:
        if up_mask is None:
            raise ValueError("convex upsampling needs the mask of the update block; this model has no mask head")
        return self.upsample_fn(flow_low, up_mask)


@dataclass(frozen=True)
class BilinearUpsampler:
    """RAFT-small: bilinear x8 (align_corners=True), flow values scaled by 8."""

    def __call__(self, flow_low: torch.Tensor, up_mask: torch.Tensor | None) -> torch.Tensor:
        return bilinear_upsample_ref(flow_low)


Upsampler = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class RAFT(nn.Module):
    def __init__(self, config: RAFTConfig) -> None:
        super().__init__()
        self.config = config
        widths, block = config.encoder_widths, config.encoder_block
        self.fnet = Encoder(widths, block, "instance", config.feature_dim)
        self.cnet = Encoder(widths, block, config.context_norm, config.hidden_dim + config.context_dim)
        self.update_block = UpdateBlock(config)
        self.correlation = DenseCorrelation(config.corr_levels, config.corr_radius)
        self.upsampler: Upsampler = ConvexUpsampler() if config.convex_upsampling else BilinearUpsampler()

    def with_parts(self, *, correlation=None, upsampler: Upsampler | None = None) -> RAFT:
        """A model sharing these weights with other correlation/upsampling parts."""
        other = copy.copy(self)
        other._modules = dict(self._modules)  # share the submodules, not the registry
        if correlation is not None:
            other.correlation = correlation
        if upsampler is not None:
            other.upsampler = upsampler
        return other

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the encoders and the update block; correlation and coordinates stay float32."""
        return self.update_block.dtype

    def features(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both images through the feature encoder as one batch, as published -> float32 fmaps."""
        fmaps = self.fnet(torch.cat([image1, image2], dim=0)).float()
        batch = image1.shape[0]
        # Slices, not chunk(2): chunk's output count is a guard that torch.export cannot prove for a
        # symbolic batch, so a dynamic-batch ONNX export would silently fix the batch size.
        return fmaps[:batch], fmaps[batch:]

    def context(self, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (net, inp): the initial hidden state tanh(.) and the context features relu(.)."""
        hidden, context = self.cnet(image1).split([self.config.hidden_dim, self.config.context_dim], dim=1)
        return torch.tanh(hidden), torch.relu(context)

    def encode(
        self, image1: torch.Tensor, image2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images in 0..255 -> (fmap1, fmap2, net, inp): float32 features, initial hidden state, context."""
        image1 = normalize_images(image1)
        image2 = normalize_images(image2)
        fmap1, fmap2 = self.features(image1, image2)
        net, inp = self.context(image1)
        return fmap1, fmap2, net, inp

    def prepare(
        self, image1: torch.Tensor, image2: torch.Tensor, flow_init: torch.Tensor | None = None
    ) -> tuple[object, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything before the iterations -> (corr_state, net, inp, coords0, coords1).

        image1, image2: (B, 3, H, W) float in 0..255, H and W multiples of 8.
        flow_init: optional (B, 2, H/8, W/8) float32 initial flow on the 1/8 grid.
        """
        fmap1, fmap2, net, inp = self.encode(image1, image2)
        corr_state = self.correlation.build(fmap1, fmap2)
        batch, _, height, width = fmap1.shape
        coords0 = coords_grid(batch, height, width, fmap1.device)
        coords1 = coords0 if flow_init is None else coords0 + flow_init.float()
        return corr_state, net, inp, coords0, coords1

    def step(
        self, corr_state, net: torch.Tensor, inp: torch.Tensor, coords0: torch.Tensor, coords1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One refinement: look up the correlation around coords1, update -> (net, coords1)."""
        corr = self.correlation.lookup(corr_state, coords1)
        net, delta_flow = self.update_block(net, inp, corr, coords1 - coords0)
        return net, coords1 + delta_flow

    def upsample(self, flow_low: torch.Tensor, net: torch.Tensor) -> torch.Tensor:
        """(B, 2, H/8, W/8) flow in cells -> (B, 2, H, W) flow in pixels, guided by the hidden state."""
        return self.upsampler(flow_low, self.update_block.up_mask(net))

    def forward(
        self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12, flow_init: torch.Tensor | None = None
    ) -> RAFTOutput:
        """image1, image2: (B, 3, H, W) float in 0..255, H and W multiples of 8.
        flow_init: optional (B, 2, H/8, W/8) float32 initial flow on the 1/8 grid."""
        corr_state, net, inp, coords0, coords1 = self.prepare(image1, image2, flow_init)
        for _ in range(iters):
            net, coords1 = self.step(corr_state, net, inp, coords0, coords1)
        flow_low = coords1 - coords0
        return RAFTOutput(flow=self.upsample(flow_low, net), flow_low=flow_low)

    def to_compute_dtype(self, dtype: torch.dtype) -> RAFT:
        """Cast the encoders and the update block (in place); correlation and coordinates stay float32."""
        for part in (self.fnet, self.cnet, self.update_block):
            part.to(dtype)
        return self
