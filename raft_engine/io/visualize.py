"""Flow visualisation with the colour wheel of Baker et al., "A Database and Evaluation Methodology
for Optical Flow" (ICCV 2007), as used by the published RAFT code and the `flow_vis` package:
hue encodes direction, saturation encodes magnitude relative to a maximum."""

from __future__ import annotations

import numpy as np

from raft_engine.errors import InputError
from raft_engine.io.flow_files import as_flow_array

# Hue segments of the wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta,
# magenta-red, with these many steps (chosen by Baker et al. for perceptual evenness).
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def color_wheel() -> np.ndarray:
    """The colour wheel of Baker et al.: red, yellow, green, cyan, blue, magenta, back towards red.

    Returns:
        (55, 3) float RGB in 0..255.
    """
    wheel = []
    # (channel that ramps, direction) for each segment; the previous ramp's channel stays saturated.
    ramps = ((1, +1), (0, -1), (2, +1), (1, -1), (0, +1), (2, -1))
    colour = np.array([255.0, 0.0, 0.0])
    for steps, (channel, direction) in zip(_SEGMENTS, ramps, strict=True):
        ramp = np.floor(255 * np.arange(steps) / steps)
        block = np.repeat(colour[None], steps, axis=0)
        block[:, channel] = ramp if direction > 0 else 255 - ramp
        wheel.append(block)
        colour = block[-1].copy()
        colour[channel] = 255.0 if direction > 0 else 0.0
    return np.concatenate(wheel)


def flow_to_color(flow, max_magnitude: float | None = None) -> np.ndarray:
    """A flow as a colour picture: hue encodes direction, saturation encodes magnitude.

    Vectors longer than `max_magnitude` are drawn darkened (x0.75), as in the reference code.

    Args:
        flow: numpy (H, W, 2) or torch (2, H, W).
        max_magnitude: the flow length shown at full saturation. None normalises by the largest
            magnitude in this flow (the published behaviour); give a fixed value to compare images.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        InputError: the flow has NaN or Inf values (mask them first), or `max_magnitude` is not a positive
            number.
    """
    flow = as_flow_array(flow).astype(np.float64)
    if not np.isfinite(flow).all():
        raise InputError(f"flow has {int((~np.isfinite(flow)).sum())} NaN or Inf values; mask them before visualising")
    u, v = flow[..., 0], flow[..., 1]
    if max_magnitude is None:
        scale = np.sqrt(u**2 + v**2).max() + 1e-5
    else:
        if not (np.isfinite(max_magnitude) and max_magnitude > 0):
            raise InputError(f"max_magnitude must be a positive number, got {max_magnitude!r}")
        scale = float(max_magnitude)
    u, v = u / scale, v / scale

    wheel = color_wheel()
    count = len(wheel)
    radius = np.sqrt(u**2 + v**2)
    angle = np.arctan2(-v, -u) / np.pi
    position = (angle + 1) / 2 * (count - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % count
    frac = (position - k0)[..., None]
    colour = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    return np.floor(255 * colour).astype(np.uint8)
