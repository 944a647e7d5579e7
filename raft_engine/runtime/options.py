"""The runtime settings of a FlowEngine as one frozen, validated value (`EngineOptions`), and the lists
of choices each setting takes.

An `EngineOptions` is made once (by the command line, a benchmark, a batch job's workers) and handed to
`FlowEngine`; it holds names, not torch objects, so it compares, prints and pickles as plain data, and
can be made on a machine without the device it names (a job's driver for its GPU workers): whether the
device exists is checked when an engine is built from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from raft_engine.errors import InputError, InputTypeError

BACKENDS = ("auto", "torch", "triton")
CORR_MODES = ("auto", "volume", "ondemand")
PADDING_MODES = ("sintel", "kitti")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
# Names a dtype may be given by, and the torch dtype of each.
TORCH_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
DEFAULT_CORR_BUDGET = 2 * 2**30  # bytes: 1080p (5.7 GB of dense pyramid) goes on-demand, 720p (1.1 GB) dense


def dtype_name(dtype: str | torch.dtype | None) -> str:
    """None, a name (fp32/fp16/bf16, float32/float16/bfloat16) or a torch dtype -> its name in DTYPE_NAMES."""
    if dtype is None:
        return "fp32"
    if isinstance(dtype, torch.dtype):
        for name in DTYPE_NAMES:
            if TORCH_DTYPES[name] == dtype:
                return name
    elif isinstance(dtype, str) and dtype.lower() in TORCH_DTYPES:
        return dtype_name(TORCH_DTYPES[dtype.lower()])
    raise InputError(f"unsupported dtype {dtype!r}; expected one of fp32, fp16, bf16 (or the torch dtypes)")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; expected one of {choices}")


def _flag(name: str, value: object, none_allowed: bool = False) -> None:
    if not (isinstance(value, bool) or (none_allowed and value is None)):
        raise InputTypeError(f"{name} must be True or False{' or None' if none_allowed else ''}, got {value!r}")


@dataclass(frozen=True)
class EngineOptions:
    """How a FlowEngine runs.

    Every setting is checked when the options are made: a wrong one raises `InputError` (a value) or
    `InputTypeError` (a type) naming it.

    Attributes:
        device: "cpu", "cuda", "cuda:1", ...; None: CUDA when available, else the CPU (checked when an
            engine is built). A torch.device is taken and kept as its name.
        dtype: "fp32" (default), "fp16" or "bf16" (or a torch dtype): the encoders and the update block run
            in it; the correlation and the coordinates stay float32, like the published mixed-precision mode.
        padding: "sintel" (replicate, split evenly) or "kitti" (all of the height at the bottom).
        backend: "triton" (fused kernels), "torch" (the PyTorch reference), or "auto": Triton on CUDA, torch
            on the CPU. Triton on the CPU needs TRITON_INTERPRET=1 (Triton's interpreter; slow).
        corr: "volume" (the published all-pairs pyramid), "ondemand" (the same numbers, computed at lookup
            time in O(HW) memory), or "auto": on-demand when the dense pyramid would exceed `corr_budget`
            bytes.
        corr_dtype: Storage of the pyramid (dense) or of the features (on-demand): "fp32" (default), "fp16"
            or "bf16"; lookups accumulate in float32 either way.
        corr_budget: Bytes of dense pyramid that corr="auto" allows (default 2 GiB).
        compile: The whole forward under torch.compile(fullgraph=True), one graph per input shape.
        cuda_graphs: Replay the compiled forward as CUDA graphs; None (default): on when compiling on CUDA.
        max_compiled_shapes: How many shapes get a compiled graph; further ones run eagerly, with a warning.
        channels_last: Run the convolutions on channels-last tensors.

    Raises:
        InputError: A wrong value, e.g. an unknown name or cuda_graphs=True without compile=True.
        InputTypeError: A wrong type.
    """

    device: str | None = None
    dtype: str = "fp32"
    padding: str = "sintel"
    backend: str = "auto"
    corr: str = "auto"
    corr_dtype: str = "fp32"
    corr_budget: float = DEFAULT_CORR_BUDGET
    compile: bool = False
    cuda_graphs: bool | None = None
    max_compiled_shapes: int = 8
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.device is not None:
            if not isinstance(self.device, (str, torch.device)):
                raise InputTypeError(f"device must be a name such as 'cuda:0' or a torch.device, got {self.device!r}")
            try:
                object.__setattr__(self, "device", str(torch.device(self.device)))
            except (RuntimeError, TypeError) as error:
                raise InputError(f"unknown device {self.device!r}: {error}") from error
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "corr_dtype", dtype_name(self.corr_dtype))
        _choice("padding", self.padding, PADDING_MODES)
        _choice("backend", self.backend, BACKENDS)
        _choice("corr", self.corr, CORR_MODES)
        budget = self.corr_budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise InputError(f"corr_budget must be a positive number of bytes, got {budget!r}")
        _flag("compile", self.compile)
        _flag("cuda_graphs", self.cuda_graphs, none_allowed=True)
        _flag("channels_last", self.channels_last)
        shapes = self.max_compiled_shapes
        if isinstance(shapes, bool) or not isinstance(shapes, int):
            raise InputTypeError(f"max_compiled_shapes must be an integer, got {shapes!r}")
        if shapes < 1:
            raise InputError(f"max_compiled_shapes must be >= 1, got {shapes}")
        if self.cuda_graphs and not self.compile:
            raise InputError("cuda_graphs=True needs compile=True: the graphs are recorded from the compiled forward")

    def replace(self, **changes: Any) -> EngineOptions:
        """These options with some settings changed (checked again).

        Args:
            **changes: The new values, by setting name: `options.replace(dtype="bf16")`.

        Returns:
            New `EngineOptions`; these stay as they are.

        Raises:
            InputTypeError: An unknown name, or a value of a wrong type.
            InputError: A wrong value.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputTypeError(
                f"unknown engine option(s) {', '.join(unknown)}; expected {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (for records and manifests)."""
        return dataclasses.asdict(self)
