"""What the benchmark and selftest share: the estimator of a measured backend (an engine of the torch or
Triton backend, compiled or not, or an exported graph on an ONNX Runtime provider), the versions they
record, and one-line error summaries."""

from __future__ import annotations

import platform
import subprocess
import warnings
from pathlib import Path

import torch

from raft_engine.errors import NotAvailable
from raft_engine.model.raft import RAFT
from raft_engine.runtime.estimator import FlowEstimator
from raft_engine.runtime.options import EngineOptions

# The engine's backends as measured: the kernels' and the reference's, and both under torch.compile.
ENGINE_BACKENDS = ("torch", "triton", "compiled", "compiled+graphs")
# The exported graph on each ONNX Runtime provider.
ORT_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-tensorrt": "TensorrtExecutionProvider"}  # fmt: skip


def one_line(error: BaseException) -> str:
    """`error` as "Type: first line of its message" (at most 200 characters of it)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def package_version(module: str) -> str | None:
    """A package's version; None when it is not installed, "broken: ..." when it fails to import."""
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None
    except Exception as error:  # noqa: BLE001 - a broken install is reported, not raised
        return f"broken: {one_line(error)}"


def ort_providers() -> list[str] | None:
    """ONNX Runtime's available execution providers; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def versions() -> dict[str, str | None]:
    """Python, torch, triton, onnxruntime, torchvision (where installed) and, on a GPU, CUDA and the driver."""
    found: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "onnxruntime", "torchvision"):
        version = package_version(name)
        if version is not None:
            found[name] = version
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            found["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            found["driver"] = "unknown"
    return found


def build_estimator(
    model: RAFT,
    backend: str,
    device: torch.device,
    dtype: str,
    corr: str,
    *,
    iters: int,
    padded_size: tuple[int, int],
    batch: int,
    workdir: Path,
) -> FlowEstimator:
    """The estimator of one measured backend (ENGINE_BACKENDS or ORT_PROVIDERS' keys) for `model`; where it
    cannot run here, NotAvailable with the reason.

    The ONNX backends export `model` once per (variant, dtype, corr, batch, padded size, iterations) into
    `workdir`, with the configuration's correlation, unverified (the callers measure the drift)."""
    if backend in ENGINE_BACKENDS:
        from raft_engine.runtime.engine import FlowEngine

        compiled = backend.startswith("compiled")
        if backend == "compiled+graphs" and device.type != "cuda":
            raise NotAvailable("CUDA graphs need a GPU")
        options = EngineOptions(
            device=str(device),
            dtype=dtype,
            corr=corr,
            backend="auto" if compiled else backend,
            compile=compiled,
            cuda_graphs=backend == "compiled+graphs",
        )
        return FlowEngine(model, options)
    if backend not in ORT_PROVIDERS:
        raise NotAvailable(f"unknown backend {backend}")
    return _ort_session(model, backend, device, dtype, corr, iters, padded_size, batch, workdir)


def _ort_session(
    model: RAFT,
    backend: str,
    device: torch.device,
    dtype: str,
    corr: str,
    iters: int,
    padded_size: tuple[int, int],
    batch: int,
    workdir: Path,
) -> FlowEstimator:
    providers = ort_providers()
    wanted = ORT_PROVIDERS[backend]
    if providers is None:
        raise NotAvailable("onnxruntime is not installed (pip install onnxruntime-gpu, or onnxruntime)")
    if wanted not in providers:
        raise NotAvailable(f"this onnxruntime has no {wanted} (available: {', '.join(providers)})")
    if backend != "ort-cpu" and device.type != "cuda":
        raise NotAvailable(f"{wanted} needs a GPU")
    if dtype == "bf16":
        raise NotAvailable("the ONNX export is fp32 or fp16")
    for module in ("onnx", "onnxscript"):
        if package_version(module) is None:
            raise NotAvailable(f"exporting needs {module}: pip install onnx onnxscript")
    from raft_engine.export import OrtFlowSession, export_onnx

    height, width = padded_size
    path = workdir / f"{model.config.variant}-{dtype}-{corr}-b{batch}-{height}x{width}-{iters}.onnx"
    if not path.exists():
        export_onnx(model, path, iters=iters, height=height, width=width, batch=batch, dtype=dtype, corr=corr,
                    verify=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU-placed nodes are the callers' to report, not warned about here
        return OrtFlowSession(path, providers=backend.removeprefix("ort-"))
