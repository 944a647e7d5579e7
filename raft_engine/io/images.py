"""Reading and writing 8-bit RGB image files (PNG, JPEG, ...), through Pillow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from raft_engine.errors import FileFormatError, ImageTooLarge, InputError, MissingFileError
from raft_engine.io.files import read_bytes, write_atomically


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image file as RGB.

    Grayscale is repeated to 3 channels; an alpha channel is accepted only when fully opaque; 16-bit
    images are refused rather than truncated.

    Args:
        path: the image file, in any format Pillow reads (PNG, JPEG, ...).

    Returns:
        The image, (H, W, 3) uint8 RGB.

    Raises:
        MissingFileError: the file does not exist.
        FileFormatError: the file is not an image Pillow can read, or is a 16-bit or floating-point image.
        InputError: the image has transparent pixels or a mode that is not converted to RGB, or is too
            large to decode (`ImageTooLarge`).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such image file: {path}")
    return decode_image(read_bytes(path, "image file"), str(path))


def decode_image(data: bytes, name: str = "the image", max_pixels: int | None = None) -> np.ndarray:
    """The bytes of an image file -> (H, W, 3) uint8 RGB, as `read_image`; `name` says which in errors.
    max_pixels: an image of more pixels raises ImageTooLarge from its header, before it is decoded (a
    decompression bomb costs nothing)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        width, height = opened.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(
                f"{name} is {height}x{width} (HxW), {width * height} pixels: more than the {max_pixels} allowed"
            )
        # Pillow decodes 16-bit colour PNGs to 8-bit "RGB"; the raw mode of the tile still says 16.
        rawmodes = [str(tile[3]) for tile in opened.tile]  # (codec, extents, offset, rawmode)
        opened.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLarge(f"{name} is too large to decode ({_reason(error)})") from error
    except (OSError, SyntaxError) as error:  # PIL raises these for unreadable or truncated files
        raise FileFormatError(f"{name} is not an image file Pillow can read ({_reason(error)})") from error
    image: Image.Image = opened  # conversions below return plain images
    if image.mode in ("I", "I;16", "I;16B", "F") or any(";16" in mode for mode in rawmodes):
        raise FileFormatError(
            f"{name} is a 16-bit or floating-point image (mode {image.mode}); convert it to 8-bit RGB first"
        )
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            raise InputError(f"{name} has transparent pixels; flatten its alpha channel first")
        image = image.convert("RGB")
    if image.mode == "L":
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise InputError(f"{name} has unsupported image mode {image.mode!r}; convert it to RGB first")
    return np.asarray(image).copy()


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image file, atomically, in the format its suffix says (PNG recommended).

    Args:
        path: the file to write; .png, .jpg, ...
        image: (H, W, 3) uint8 RGB.

    Raises:
        InputError: `image` is not an (H, W, 3) uint8 array, or the suffix is unknown.
        PathError: the path cannot be written.
    """
    from PIL import Image

    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise InputError(f"expected an (H, W, 3) uint8 array, got {getattr(image, 'shape', type(image))}")
    image_format = image_format_for(path)
    write_atomically(path, lambda partial: Image.fromarray(image).save(partial, format=image_format))


def image_format_for(path: str | os.PathLike) -> str:
    """The Pillow format an image file of this name is written in (PNG for .png, JPEG for .jpg, ...);
    a suffix Pillow cannot write raises `InputError`."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None or image_format not in Image.SAVE:
        raise InputError(f"{path}: unknown image file extension {suffix or '(none)'!r}; use .png, .jpg, ...")
    return image_format


def _reason(error: BaseException) -> str:
    """A library error's first line, without an errno prefix."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return str(text).splitlines()[0]


def write_mask(path: str | os.PathLike, mask: Any) -> None:
    """Write a mask as a 1-bit PNG, white where True, atomically.

    Args:
        path: the file to write, a .png.
        mask: (H, W) bool, a numpy array or a torch tensor.

    Raises:
        InputError: `mask` is not (H, W) bool, or `path` does not end in .png.
        PathError: the path cannot be written.
    """
    from PIL import Image

    if hasattr(mask, "detach"):  # a torch tensor, without importing torch
        mask = mask.detach().cpu().numpy()
    if not (isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype == np.bool_):
        raise InputError(
            f"expected an (H, W) bool mask, got {getattr(mask, 'dtype', type(mask))} {getattr(mask, 'shape', '')}"
        )
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"{path}: a mask is written as a 1-bit PNG; give a .png path")
    write_atomically(path, lambda partial: Image.fromarray(mask).convert("1").save(partial, format="PNG"))
