"""The forward-backward consistency check: where a flow and its reverse disagree, or the flow leaves the
image, a pixel is counted as occluded (Sundaram, Brox and Keutzer, "Dense point trajectories by
GPU-accelerated large displacement optical flow", ECCV 2010, in the form UnFlow uses)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raft_engine.errors import InputError, InputTypeError

# UnFlow's constants (Meister, Hur and Roth, AAAI 2018): a squared mismatch above 1% of the squared
# magnitudes plus half a square pixel.
ALPHA1 = 0.01
ALPHA2 = 0.5


def check_alphas(alpha1: float, alpha2: float) -> None:
    for name, value in (("alpha1", alpha1), ("alpha2", alpha2)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputTypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_flows(forward: torch.Tensor, backward: torch.Tensor) -> None:
    for name, flow in (("forward", forward), ("backward", backward)):
        if not isinstance(flow, torch.Tensor):
            raise InputTypeError(f"{name} must be a torch tensor (B, 2, H, W), got {type(flow).__name__}")
        if flow.ndim != 4 or flow.shape[1] != 2 or not flow.dtype.is_floating_point:
            raise InputError(f"{name} must be a floating-point (B, 2, H, W) flow, got {flow.dtype} {tuple(flow.shape)}")
    if forward.shape != backward.shape:
        raise InputError(f"forward is {tuple(forward.shape)} but backward is {tuple(backward.shape)}; they must match")
    if min(forward.shape[-2:]) < 2:
        raise InputError(f"flows must be at least 2x2 pixels, got {forward.shape[-2]}x{forward.shape[-1]}")


def sample_at(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """values (B, C, H, W) sampled bilinearly at targets (B, 2, H, W), pixel x, y with pixel centres at
    integer coordinates; a target outside is read at the border (callers mask those)."""
    height, width = values.shape[-2:]
    grid = torch.stack([2 * targets[:, 0] / (width - 1) - 1, 2 * targets[:, 1] / (height - 1) - 1], dim=-1)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)


def forward_backward_check(
    forward: torch.Tensor, backward: torch.Tensor, alpha1: float = ALPHA1, alpha2: float = ALPHA2
) -> torch.Tensor:
    """Where the flow of image 1 is not confirmed by the flow of image 2.

    A pixel x is occluded where its target leaves image 2 (x + f(x) outside 0..W-1, 0..H-1) or
        |f(x) + b(x + f(x))|^2 > alpha1 (|f(x)|^2 + |b(x + f(x))|^2) + alpha2,
    with f the forward flow, b the backward flow sampled bilinearly at x + f(x). Batched, on the flows'
    device; in float32 at least. The mask of image 2 is `forward_backward_check(backward, forward)`.

    Args:
        forward: (B, 2, H, W) flow image 1 -> image 2, in pixels, x first.
        backward: (B, 2, H, W) flow image 2 -> image 1, in pixels, x first.
        alpha1: The relative constant: the share of the squared magnitudes a squared mismatch may reach
            (default 0.01, UnFlow's).
        alpha2: The absolute constant, in square pixels (default 0.5, UnFlow's).

    Returns:
        (B, H, W) bool, True = occluded.

    Raises:
        InputTypeError: A flow that is not a torch tensor, or an alpha that is not a number.
        InputError: A flow that is not a floating-point (B, 2, H, W), flows of different shapes or under
            2x2 pixels, or an alpha that is negative or not finite.
    """
    _check_flows(forward, backward)
    check_alphas(alpha1, alpha2)
    dtype = torch.promote_types(forward.dtype, torch.float32)
    forward, backward = forward.to(dtype), backward.to(device=forward.device, dtype=dtype)
    batch, _, height, width = forward.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=forward.device, dtype=dtype),
        torch.arange(width, device=forward.device, dtype=dtype),
        indexing="ij",
    )
    targets = torch.stack([xs, ys]).expand(batch, 2, height, width) + forward
    inside = (targets[:, 0] >= 0) & (targets[:, 0] <= width - 1) & (targets[:, 1] >= 0) & (targets[:, 1] <= height - 1)
    returned = sample_at(backward, targets)
    mismatch = (forward + returned).square().sum(dim=1)
    magnitude = forward.square().sum(dim=1) + returned.square().sum(dim=1)
    return ~inside | (mismatch > alpha1 * magnitude + alpha2)
