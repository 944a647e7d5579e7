"""The options several commands share, declared once from the library's own constants, and the helpers
that read them: every command offers the same choices and the same default, None. None marks an option
as not given, which `flow --onnx` needs to refuse the options a graph fixes; it stands for the default
that the help states and that the library applies."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from raft_engine.errors import UsageError

if TYPE_CHECKING:
    from raft_engine.model.raft import RAFT
    from raft_engine.runtime.engine import FlowEngine
    from raft_engine.runtime.options import EngineOptions

# Iterations when --iters is not given: the default of FlowEngine.estimate and of export_onnx.
DEFAULT_ITERS = 12
# FlowEngine's options that the command line passes through when given (see engine_options).
ENGINE_OPTIONS = ("device", "dtype", "padding", "backend", "corr")


def shared_options() -> dict[str, dict]:
    """The shared options' argparse settings, by name."""
    from raft_engine.model.config import VARIANTS
    from raft_engine.runtime.options import BACKENDS, CORR_MODES, DTYPE_NAMES, PADDING_MODES

    return {
        "weights": dict(
            metavar="W",
            help="checkpoint file (.pth/.pt/.safetensors, published or torchvision layout), preset name, or "
            "builtin (the default: the package's own RAFT-small, offline)",
        ),
        "iters": dict(type=int, metavar="N", help=f"refinement iterations (default {DEFAULT_ITERS})"),
        "device": dict(metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda if available)"),
        "dtype": dict(choices=DTYPE_NAMES, help="compute precision (default fp32)"),
        "padding": dict(choices=PADDING_MODES, help="how to pad to a multiple of 8 (default sintel)"),
        "backend": dict(
            choices=BACKENDS, help="Triton kernels or the PyTorch reference (default: triton on CUDA, torch on the CPU)"
        ),
        "corr": dict(
            choices=CORR_MODES,
            help="dense correlation volume, or on-demand correlation in O(HW) memory "
            "(default: on-demand when the volume would exceed 2 GiB)",
        ),
        "variant": dict(choices=VARIANTS, help="expected RAFT variant (default: inferred from the checkpoint)"),
    }


def add_shared(container: Any, names: tuple[str, ...], helps: dict[str, str]) -> None:
    """Add the named shared options to a parser or an argument group; `helps` may reword an option's help
    for one command, never its choices or default."""
    options = shared_options()
    for name in names:
        option = {**options[name], **({"help": helps[name]} if name in helps else {})}
        container.add_argument(f"--{name}", default=None, **option)


def options(*names: str, **helps: str) -> argparse.ArgumentParser:
    """A parent parser (argparse's `parents=`) holding the named shared options."""
    parent = argparse.ArgumentParser(add_help=False)
    add_shared(parent, names, helps)
    return parent


def model_source() -> argparse.ArgumentParser:
    """The parent parser for where the model comes from: a checkpoint (--weights) or an exported graph
    (--onnx), never both; --providers for the graph."""
    from raft_engine.export.ort_session import PROVIDER_CHOICES

    parent = argparse.ArgumentParser(add_help=False)
    source = parent.add_mutually_exclusive_group()
    add_shared(source, ("weights",), {})
    source.add_argument("--onnx", metavar="FILE", help="run an exported graph with ONNX Runtime instead")
    parent.add_argument(
        "--providers",
        default=None,
        choices=PROVIDER_CHOICES,
        help="with --onnx: ONNX Runtime execution provider (default: cuda if available)",
    )
    return parent


def weights(args: argparse.Namespace) -> str:
    return "builtin" if args.weights is None else args.weights


def iters(args: argparse.Namespace) -> int:
    return DEFAULT_ITERS if args.iters is None else args.iters


def check_iters(args: argparse.Namespace) -> None:
    if args.iters is not None and args.iters < 1:
        raise UsageError(f"--iters must be >= 1, got {args.iters}")


def engine_options(args: argparse.Namespace, *names: str, **settings: Any) -> EngineOptions:
    """The engine options the command gave (of `names`, default all of ENGINE_OPTIONS), and `settings`;
    an option left at None is not set, so EngineOptions' own default applies and the command line cannot
    drift from the library."""
    from raft_engine.runtime.options import EngineOptions

    given = {name: getattr(args, name) for name in names or ENGINE_OPTIONS if getattr(args, name, None) is not None}
    return EngineOptions(**given, **settings)


def make_engine(args: argparse.Namespace, model: RAFT) -> FlowEngine:
    """A FlowEngine with the engine options the command gave."""
    from raft_engine.runtime.engine import FlowEngine

    return FlowEngine(model, engine_options(args))


def positive(name: str, value: int | float | None) -> None:
    """Refuse a given option below 1 (integers) or not above 0 (numbers), naming it."""
    if value is None:
        return
    if isinstance(value, int) and value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not value > 0:
        raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")


def pixel(text: str) -> tuple[float, float]:
    """argparse type of an X,Y pixel."""
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (e.g. 120,48), got {text!r}") from None
    return x, y
