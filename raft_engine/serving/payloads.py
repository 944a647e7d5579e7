"""What the flow server reads and writes on /v1/flow: the form's fields checked, the images decoded under
the pixel limit (refused from their headers), and the flow encoded in the format asked for. No Ray and no
HTTP framework here: each refusal is a `Refusal` carrying its HTTP status and its reason."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from raft_engine.errors import ImageTooLarge, InputError

# format -> (content type, what the body holds)
FORMATS = {
    "flo": ("application/octet-stream", "Middlebury .flo"),
    "npy": ("application/octet-stream", "numpy .npy of (H, W, 2) float32"),
    "npz": ("application/octet-stream", "numpy .npz: flow, and with backward=true flow_backward and the masks"),
    "png": ("image/png", "the colour-wheel picture"),
    "kitti": ("image/png", "KITTI 16-bit PNG (pixels beyond its +-512 px range marked invalid)"),
}
FORM_FIELDS = ("image1", "image2", "iters", "format", "backward")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


class Refusal(InputError):
    """A request the server refuses: `status` is the HTTP status (400 bad input, 404 unknown model, 413 too
    large), the message the reason sent back as {"error": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FlowRequest:
    """One /v1/flow request, checked: the images (H, W, 3) uint8, iterations, format, both directions."""

    image1: np.ndarray
    image2: np.ndarray
    iters: int
    format: str
    backward: bool


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise Refusal(400, f"{name} must be a form field, not a file")
    return value.strip()


def parse_iters(value: Any, default: int, max_iters: int) -> int:
    if value is None:
        return default
    text = _text(value, "iters") if not isinstance(value, int) else str(value)
    try:
        iters = int(text)
    except ValueError:
        raise Refusal(400, f"iters must be an integer, got {text!r}") from None
    if not 1 <= iters <= max_iters:
        raise Refusal(400, f"iters must be from 1 to {max_iters}, got {iters}")
    return iters


def parse_options(fields: dict[str, Any], default_iters: int, max_iters: int) -> tuple[int, str, bool]:
    """The form's iters, format and backward -> checked values (400 naming the field otherwise)."""
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise Refusal(400, f"unknown field(s) {', '.join(unknown)}; the form takes {', '.join(FORM_FIELDS)}")
    iters = parse_iters(fields.get("iters"), default_iters, max_iters)
    backward_text = _text(fields.get("backward", "false"), "backward").lower()
    if backward_text not in TRUE + FALSE:
        raise Refusal(400, f"backward must be true or false, got {backward_text!r}")
    backward = backward_text in TRUE
    kind = _text(fields.get("format", "npz" if backward else "flo"), "format").lower()
    if kind not in FORMATS:
        raise Refusal(400, f"unknown format {kind!r}; format takes {', '.join(FORMATS)}")
    if backward and kind != "npz":
        raise Refusal(400, f"backward=true returns two flows and two masks: format must be npz, not {kind}")
    return iters, kind, backward


def decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded image -> (H, W, 3) uint8; 413 past max_pixels (from the header), 400 if not an image."""
    from raft_engine.io.images import decode_image

    if not data:
        raise Refusal(400, f"{name} is empty")
    try:
        return decode_image(data, name, max_pixels)
    except ImageTooLarge as error:
        raise Refusal(413, str(error)) from error
    except InputError as error:
        raise Refusal(400, str(error)) from error


def check_sizes(image1: np.ndarray, image2: np.ndarray) -> None:
    if image1.shape != image2.shape:
        h1, w1 = image1.shape[:2]
        h2, w2 = image2.shape[:2]
        raise Refusal(400, f"image sizes differ: image1 is {h1}x{w1} (HxW), image2 is {h2}x{w2}")


def _hwc(flow: Any) -> np.ndarray:
    """A (2, H, W) tensor -> (H, W, 2) float32 numpy."""
    return np.ascontiguousarray(flow.permute(1, 2, 0).float().cpu().numpy())


def encode(result: Any, kind: str) -> tuple[bytes, str, tuple[int, ...]]:
    """One pair's result (a FlowResult or BidirectionalResult of batch 1, on any device) -> (body, content
    type, the shape of the flow array)."""
    from raft_engine.io import flo_bytes, flow_to_color

    both = hasattr(result, "backward")
    flow = _hwc((result.forward if both else result).flow[0])
    content_type = FORMATS[kind][0]
    if kind == "flo":
        return flo_bytes(flow), content_type, flow.shape
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, flow)
        return buffer.getvalue(), content_type, flow.shape
    if kind == "npz":
        arrays: dict[str, Any] = {"flow": flow}
        if both:
            arrays["flow_backward"] = _hwc(result.backward.flow[0])
            arrays["occlusion"] = result.occlusion[0].cpu().numpy()
            arrays["occlusion_backward"] = result.occlusion_backward[0].cpu().numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue(), content_type, flow.shape
    if kind == "png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(flow_to_color(flow)).save(buffer, format="PNG")
        return buffer.getvalue(), content_type, flow.shape
    from raft_engine.io.flow_outputs import kitti_clipped_bytes

    return kitti_clipped_bytes(flow)[0], content_type, flow.shape
