"""Checking what users pass in: images (conversion, validation, padding to a multiple of 8), devices,
dtypes and counts. It imports only the errors and the lists of choices, so every part may use it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from raft_engine.errors import InputError, InputTypeError
from raft_engine.runtime.options import PADDING_MODES, TORCH_DTYPES, dtype_name

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageLike: TypeAlias = "np.ndarray | torch.Tensor | PILImage"
"""An image or a batch of images: numpy (H, W), (H, W, C), (B, H, W, C); PIL (RGB, L, P); torch
(H, W), (C, H, W), (B, C, H, W). uint8, or float in 0..255; C is 3 or 1. See `to_image_batch`."""
DeviceLike: TypeAlias = "str | torch.device | None"
"""A torch device or its name ("cpu", "cuda", "cuda:1"); None: CUDA when available, else the CPU."""
DTypeLike: TypeAlias = "str | torch.dtype | None"
"""A compute dtype: a name of `raft_engine.runtime.options.TORCH_DTYPES` or the torch dtype; None: float32."""
ArrayLike: TypeAlias = "np.ndarray | torch.Tensor"


def parse_dtype(dtype: DTypeLike) -> torch.dtype:
    """None, a name (fp32/fp16/bf16, float32/float16/bfloat16) or a torch dtype -> torch dtype."""
    return TORCH_DTYPES[dtype_name(dtype)]


def parse_device(device: DeviceLike) -> torch.device:
    """None -> CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"unknown device {device!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {str(device)!r} requested, but CUDA is not available (torch.cuda.is_available() is False)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {str(device)!r} requested, but there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_iters(iters: object) -> int:
    return positive_int("iters", iters)


def _pil_to_numpy(image: PILImage, name: str) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        if "transparency" in image.info:
            raise InputError(f"{name} is a palette image with transparency; convert it to RGB first")
        image = image.convert("RGB")  # exact: a palette lookup
    elif mode not in ("RGB", "L"):
        raise InputError(
            f"{name} has PIL mode {mode!r}; expected 'RGB' or 'L' (8-bit). Convert it first, "
            "e.g. image.convert('RGB'), deciding what to do with alpha or high bit depth"
        )
    return np.asarray(image)


def _numpy_to_tensor(image: np.ndarray, name: str) -> torch.Tensor:
    """numpy (H, W), (H, W, C), (B, H, W, C) -> torch (B, C, H, W), sharing memory where it can."""
    if image.ndim not in (2, 3, 4):
        raise InputError(f"{name}: expected a numpy array (H, W), (H, W, C) or (B, H, W, C); got shape {image.shape}")
    _check_dtype(image.dtype, np.uint8, np.floating, name)
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        array = array.copy()
    tensor = torch.from_numpy(array)
    if tensor.ndim == 2:
        tensor = tensor[None, :, :, None]
    elif tensor.ndim == 3:
        tensor = tensor[None]
    return tensor.permute(0, 3, 1, 2)


def _batch_tensor(image: torch.Tensor, name: str) -> torch.Tensor:
    """torch (H, W), (C, H, W), (B, C, H, W) -> (B, C, H, W)."""
    if image.ndim not in (2, 3, 4):
        raise InputError(f"{name}: expected a tensor (H, W), (C, H, W) or (B, C, H, W); got shape {tuple(image.shape)}")
    if not (image.dtype == torch.uint8 or image.dtype.is_floating_point):
        raise InputError(f"{name}: expected uint8 or floating-point values, got {image.dtype}")
    if image.ndim == 2:
        return image[None, None]
    if image.ndim == 3:
        return image[None]
    return image


def to_image_batch(image: ImageLike, name: str = "image") -> torch.Tensor:
    """An image or a batch of images -> (B, 3, H, W) float32 in 0..255, on the input's device.

    Accepted: uint8 or float (0..255) numpy (H, W), (H, W, C), (B, H, W, C); PIL images (RGB, L, P);
    torch (H, W), (C, H, W), (B, C, H, W); C is 3, or 1 (grayscale, repeated to 3 channels).
    """
    if not isinstance(image, (np.ndarray, torch.Tensor)) and hasattr(image, "getbands"):  # PIL, not imported
        image = _pil_to_numpy(image, name)
    if isinstance(image, np.ndarray):
        tensor = _numpy_to_tensor(image, name)
    elif isinstance(image, torch.Tensor):
        tensor = _batch_tensor(image, name)
    else:
        raise InputTypeError(
            f"{name}: expected a numpy array, a torch tensor or a PIL image, got {type(image).__name__}"
        )

    channels = tensor.shape[1]
    if channels not in (1, 3):
        raise InputError(
            f"{name}: expected 3 (RGB) or 1 (grayscale) channels, got {channels} "
            f"(shape {tuple(image.shape)}; numpy images are channels-last, torch images channels-first)"
        )
    if tensor.shape[0] == 0 or tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise InputError(f"{name} is empty: shape {tuple(image.shape)}")
    if tensor.dtype != torch.uint8:
        _check_range(tensor, name)
    tensor = tensor.float()
    if channels == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return tensor


def _check_dtype(dtype: np.dtype, exact, kind, name: str) -> None:
    if dtype != exact and not np.issubdtype(dtype, kind):
        raise InputError(f"{name}: expected uint8 or floating-point values (0..255), got {dtype}")


def _check_range(tensor: torch.Tensor, name: str) -> None:
    finite, low, high = torch.stack([tensor.isfinite().all().to(tensor.dtype), tensor.amin(), tensor.amax()]).tolist()
    if not finite:
        raise InputError(f"{name} contains NaN or Inf")
    if low < 0 or high > 255:
        raise InputError(f"{name} has values outside 0..255 (min {low:g}, max {high:g}); RAFT expects 0..255")
    if high <= 1.0:
        warnings.warn(
            f"{name}'s values all lie within 0..1 (max {high:g}); RAFT expects 0..255. "
            "Multiply by 255 if this is a normalised image",
            stacklevel=4,
        )


def check_padding(mode: str) -> None:
    if mode not in PADDING_MODES:
        raise InputError(f"unknown padding {mode!r}; expected one of {PADDING_MODES}")


def check_pair(image1: torch.Tensor, image2: torch.Tensor) -> None:
    if image1.shape[0] != image2.shape[0]:
        raise InputError(f"batch sizes differ: image1 has {image1.shape[0]} images, image2 has {image2.shape[0]}")
    if image1.shape[-2:] != image2.shape[-2:]:
        h1, w1 = image1.shape[-2:]
        h2, w2 = image2.shape[-2:]
        raise InputError(f"image sizes differ: image1 is {h1}x{w1} (HxW), image2 is {h2}x{w2}")


@dataclass(frozen=True)
class Padder:
    """Replicate-padding of (H, W) to multiples of 8 and the matching crop, as published.

    "sintel": split evenly, the extra pixel at the bottom/right; "kitti": split evenly in width,
    all of the height at the bottom.
    """

    height: int
    width: int
    mode: str = "sintel"

    def __post_init__(self) -> None:
        check_padding(self.mode)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom)."""
        pad_h = -self.height % 8
        pad_w = -self.width % 8
        left, right = pad_w // 2, pad_w - pad_w // 2
        if self.mode == "sintel":
            return left, right, pad_h // 2, pad_h - pad_h // 2
        return left, right, 0, pad_h

    @property
    def padded_size(self) -> tuple[int, int]:
        left, right, top, bottom = self.pads
        return self.height + top + bottom, self.width + left + right

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            return F.pad(images, self.pads, mode="replicate")
        return images

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        left, _, top, _ = self.pads
        return x[..., top : top + self.height, left : left + self.width]
