"""The limits an exported graph runs within: ONNX Runtime's 32-bit tensor indexing bounds the dense
correlation volume and the on-demand graph's largest tensors, and a dynamic-size graph's sides."""

from __future__ import annotations

from raft_engine.errors import InputError

# ONNX Runtime's CUDA kernels (and TensorRT) index tensors with 32-bit integers: a tensor with more
# elements than this may be computed wrong or crash the kernel. The dense graph's largest tensor is
# the correlation volume, batch * cells^2 elements with cells = (H / 8) * (W / 8).
MAX_TENSOR_ELEMENTS = 2**31 - 1
# A dynamic-size graph's largest side (`export_onnx`'s MAX_DYNAMIC_SIDE), and the smallest side of a
# graph whose metadata does not say (RAFTConfig.min_image_size of both variants). The 32-bit limit
# bounds batch x area further: RAFT-large on-demand takes one 4320x7680 pair, or 6 pairs at 2160x3840
# (`check_ondemand_tensors`).
MAX_DYNAMIC_SIDE = 8192
DEFAULT_MIN_SIZE = 128


def dense_volume_elements(batch: int, height: int, width: int) -> int:
    """Elements of the dense graph's correlation volume for `batch` pairs of `height` x `width` (padded)."""
    cells = (height // 8) * (width // 8)
    return batch * cells * cells


def check_dense_volume(batch: int, height: int, width: int, advice: str | None = None) -> None:
    """Raise ValueError when the correlation volume of `batch` pairs at height x width is past the limit.

    advice: what to do instead, when the caller knows better than "a smaller batch or size".
    """
    elements = dense_volume_elements(batch, height, width)
    if elements <= MAX_TENSOR_ELEMENTS:
        return
    fits = MAX_TENSOR_ELEMENTS // dense_volume_elements(1, height, width)
    if not fits:
        advice = "even one pair is too large: use a smaller size"
    elif advice is None:
        advice = f"use a batch of at most {fits}, or a smaller size"
    raise InputError(
        f"batch {batch} at {height}x{width} gives a dense correlation volume of {elements:,} elements "
        f"(batch * ((H/8)*(W/8))^2), over the limit of {MAX_TENSOR_ELEMENTS:,} (2^31-1): ONNX Runtime's CUDA "
        f"kernels index tensors with 32-bit integers; {advice}; or export with corr='ondemand' (or use "
        "FlowEngine's), which builds no volume"
    )


def ondemand_tensor_elements(batch: int, height: int, width: int, variant: str = "large") -> int:
    """Elements of the on-demand graph's largest tensors for `batch` pairs of `height` x `width` (padded):
    the gathered window corners of a level, batch * cells * (2r+2) * D (`corr_ondemand_gather`), or
    the feature encoder's first activation, 2 * batch * C * (H/2) * (W/2) for both images."""
    from raft_engine.model.config import RAFTConfig

    config = RAFTConfig.from_variant(variant)
    cells = (height // 8) * (width // 8)
    gathered = batch * cells * (2 * config.corr_radius + 2) * config.feature_dim
    encoder = 2 * batch * config.encoder_widths[0] * (height // 2) * (width // 2)
    return max(gathered, encoder)


def check_ondemand_tensors(batch: int, height: int, width: int, variant: str = "large") -> None:
    """Raise ValueError when the on-demand graph's largest tensor for `batch` pairs at height x width
    passes ONNX Runtime's 32-bit indexing (MAX_TENSOR_ELEMENTS)."""
    elements = ondemand_tensor_elements(batch, height, width, variant)
    if elements <= MAX_TENSOR_ELEMENTS:
        return
    fits = MAX_TENSOR_ELEMENTS // ondemand_tensor_elements(1, height, width, variant)
    advice = f"use a batch of at most {fits}" if fits else "even one pair is too large: use a smaller size"
    raise InputError(
        f"batch {batch} at {height}x{width} gives the on-demand RAFT-{variant} graph a tensor of {elements:,} "
        f"elements, over the limit of {MAX_TENSOR_ELEMENTS:,} (2^31-1) of ONNX Runtime's 32-bit indexing; {advice}"
    )


def check_tensors(corr: str, batch: int, height: int, width: int, variant: str = "large", advice=None) -> None:
    """The 32-bit limit for a graph of correlation `corr` ("volume" or "ondemand")."""
    if corr == "volume":
        check_dense_volume(batch, height, width, advice)
    else:
        check_ondemand_tensors(batch, height, width, variant)
