"""`raft-engine selftest`: whether this machine runs every path of the engine correctly, and how fast.

It prints the environment (Python, torch, CUDA, cuDNN, the GPU, the TF32 settings, triton, onnx,
onnxruntime and its providers, the C compiler and Python headers Triton's launcher needs), then runs
each backend that applies on a generated pair at two sizes, RAFT-large and RAFT-small, in float32
and the half-precision modes, and compares each flow with the float32 PyTorch reference of the same
model on the same pair: relative error, mean end-point distance (px), one latency, ok/fail/skipped.

Weights: RAFT-small is the built-in trained model; RAFT-large has random weights (seed 0), as no
trained RAFT-large ships with the package, so its drift is relative to its own reference only.
TF32 is off while the checks run (restored after): float32 paths are checked as float32.
A skipped check (a backend that does not apply here, a missing package or provider) is not a
failure; the command exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raft_engine.errors import NotAvailable
from raft_engine.interpreter import interpreting
from raft_engine.io.files import make_folder, write_atomically
from raft_engine.runtime.devices import ieee_fp32, synchronize
from raft_engine.runtime.inputs import Padder
from raft_engine.tools.measure import ENGINE_BACKENDS, build_estimator, ort_providers, package_version

# Relative L2 error of the flow against the float32 PyTorch reference that a check may reach. float32:
# measured 1e-7..1.3e-6 on the CPU (Triton through its interpreter, ONNX Runtime); GPU kernels sum
# in other orders, so 1e-4. Half precision: measured up to 1.3e-2 (bf16) and 1.9e-3 (fp16) relative
# with synthetic weights at 128x160, 6 iterations; the bounds leave room for other sizes and weights.
BOUNDS = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}
SIZES = {
    ("cuda", False): [(440, 1024), (1080, 1920)],
    ("cuda", True): [(128, 160), (123, 157)],
    ("cpu", False): [(256, 320), (251, 317)],
    ("cpu", True): [(128, 160), (123, 157)],
}
PAIR_SEED = 3  # a held-out generated scene (seeds below 1,000,000 never served in training)


@dataclass(frozen=True)
class Check:
    backend: str  # "torch", "triton", "compiled", "compiled+graphs", "ort-cpu", "ort-cuda", "ort-tensorrt"
    variant: str
    dtype: str
    height: int
    width: int
    corr: str = "volume"

    @property
    def name(self) -> str:
        corr = f" {self.corr}" if self.backend == "triton" or self.corr == "ondemand" else ""
        return f"{self.backend}{corr} RAFT-{self.variant} {self.dtype} {self.height}x{self.width}"


@dataclass
class Context:
    device: torch.device
    quick: bool
    iters: int
    workdir: Path
    models: dict[str, Any] = field(default_factory=dict)
    pairs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    references: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict)


# Environment ------------------------------------------------------------------------------------


def c_compiler() -> str | None:
    """The C compiler Triton's launcher is built with: $CC, else cc, gcc or clang on PATH."""
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def python_headers() -> str | None:
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return str(header) if header.is_file() else None


def environment(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "triton": package_version("triton"),
        "triton_interpreter": interpreting(),
        "onnx": package_version("onnx"),
        "onnxscript": package_version("onnxscript"),
        "onnxruntime": package_version("onnxruntime"),
        "onnxruntime_providers": ort_providers(),
        "c_compiler": c_compiler(),
        "python_headers": python_headers(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found["gpu"] = properties.name
        found["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        found["compute_capability"] = f"{properties.major}.{properties.minor}"
    return found


def toolchain_record(device: torch.device, env: dict[str, Any]) -> dict[str, Any]:
    """Triton compiles a small C launcher on its first launch on a GPU: it needs a C compiler and the
    Python headers. The interpreter (CPU) needs neither."""
    record = _record("triton-launcher-toolchain", "triton", "-", "-", None)
    if device.type != "cuda":
        record.update(status="skipped", reason="only Triton on a GPU builds a C launcher")
        return record
    missing = []
    if env["c_compiler"] is None:
        missing.append("a C compiler (set CC, or install gcc: apt-get install gcc)")
    if env["python_headers"] is None:
        missing.append(
            f"the Python headers (Python.h in {sysconfig.get_paths()['include']}: apt-get install python3-dev)"
        )
    if missing:
        record.update(status="fail", reason="Triton's launcher needs " + " and ".join(missing))
    return record


# Checks -----------------------------------------------------------------------------------------


def plan(device: torch.device, quick: bool) -> list[Check]:
    """Every check for this device: both variants, two sizes, the half-precision modes."""
    checks = []
    sizes = SIZES[(device.type, quick)]
    for variant in ("large", "small"):
        for index, (height, width) in enumerate(sizes):
            first = index == 0
            # --quick: the half-precision modes at the first size only (float16 convolutions on the CPU
            # take half a minute for RAFT-large); the second, odd size checks the padding in float32.
            for dtype in ("fp32", "fp16", "bf16") if first or not quick else ("fp32",):
                checks.append(Check("torch", variant, dtype, height, width))
                checks.append(Check("triton", variant, dtype, height, width, "volume"))
                checks.append(Check("triton", variant, dtype, height, width, "ondemand"))
                if dtype != "fp16" and (first or not quick):  # one compile per shape and dtype: minutes
                    checks.append(Check("compiled", variant, dtype, height, width))
                    checks.append(Check("compiled+graphs", variant, dtype, height, width))
            if first:  # one ONNX export per variant and precision, and the on-demand graph in fp32
                for backend in ("ort-cpu", "ort-cuda", "ort-tensorrt"):
                    for dtype in ("fp32", "fp16"):
                        checks.append(Check(backend, variant, dtype, height, width))
                    checks.append(Check(backend, variant, "fp32", height, width, "ondemand"))
    return checks


def _model(context: Context, variant: str):
    if variant not in context.models:
        from raft_engine.model.config import RAFTConfig
        from raft_engine.model.raft import RAFT
        from raft_engine.weights import load_model

        if variant == "small":
            context.models[variant] = load_model("builtin")
        else:
            torch.manual_seed(0)
            context.models[variant] = RAFT(RAFTConfig.large()).eval()
    return context.models[variant]


def _pair(context: Context, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    if (height, width) not in context.pairs:
        from raft_engine.scenes import generate_pair

        scene = generate_pair(PAIR_SEED, height, width)
        context.pairs[(height, width)] = (scene.image1, scene.image2)
    return context.pairs[(height, width)]


def _timed(run: Callable[[], torch.Tensor], device: torch.device, warmups: int) -> tuple[torch.Tensor, float]:
    """-> (flow on the CPU, milliseconds of one run after `warmups` runs)."""
    for _ in range(warmups):
        run()
    synchronize(device)
    start = time.perf_counter()
    flow = run()
    synchronize(device)
    return flow.float().cpu(), 1000 * (time.perf_counter() - start)


def _runner(check: Check, context: Context) -> tuple[Callable[[], torch.Tensor], int]:
    """A callable computing the flow of the check's pair through its estimator (`build_estimator`), and how
    many warm-up runs it needs; NotAvailable where the check does not apply here."""
    device = context.device
    compiled = check.backend.startswith("compiled")
    if check.backend == "triton" and device.type == "cpu" and not interpreting():
        raise NotAvailable("the Triton kernels run on CUDA, or on the CPU with TRITON_INTERPRET=1 set before start")
    if compiled and device.type == "cpu" and context.quick and check.backend != "compiled+graphs":
        raise NotAvailable("--quick on the CPU: compiling takes about a minute per shape")
    if check.dtype == "fp16" and device.type == "cpu" and check.backend in ENGINE_BACKENDS[1:]:
        raise NotAvailable("float16 convolutions on the CPU are the torch backend's only")
    estimator = build_estimator(
        _model(context, check.variant),
        check.backend,
        device,
        check.dtype,
        check.corr,
        iters=context.iters,
        padded_size=Padder(check.height, check.width).padded_size,
        batch=1,
        workdir=context.workdir,
    )
    image1, image2 = _pair(context, check.height, check.width)
    iters = None if estimator.settings.runs_own_iters else context.iters
    # Warm-up, record, replay for CUDA graphs; one compile for torch.compile; the first Triton launch
    # compiles its kernels on a GPU, and the GPU providers build their sessions' work on the first run.
    warmups = 3 if compiled else (1 if device.type == "cuda" else 0)
    return (lambda: estimator.estimate(image1, image2, iters=iters).flow), warmups


def _reference(check: Check, context: Context) -> torch.Tensor:
    key = (check.variant, check.height, check.width)
    if key not in context.references:
        reference = Check("torch", check.variant, "fp32", check.height, check.width)
        run, _ = _runner(reference, context)
        context.references[key] = run().float().cpu()
    return context.references[key]


def _record(check: str, backend: str, variant: str, dtype: str, size: tuple[int, int] | None) -> dict[str, Any]:
    return {
        "check": check,
        "backend": backend,
        "variant": variant,
        "dtype": dtype,
        "size": f"{size[0]}x{size[1]}" if size else None,
        "status": "ok",
        "drift": None,
        "relative_error": None,
        "bound": None,
        "latency_ms": None,
        "reason": None,
    }


def run_check(check: Check, context: Context) -> dict[str, Any]:
    record = _record(check.name, check.backend, check.variant, check.dtype, (check.height, check.width))
    record["corr"] = check.corr
    try:
        run, warmups = _runner(check, context)
        flow, latency = _timed(run, context.device, warmups)
        del run
        reference = _reference(check, context)
        relative = float((flow - reference).norm() / reference.norm().clamp_min(1e-12))
        bound = BOUNDS[check.dtype]
        record.update(
            drift=round(float((flow - reference).norm(dim=1).mean()), 6),
            relative_error=float(f"{relative:.3g}"),
            bound=bound,
            latency_ms=round(latency, 2),
        )
        if not relative <= bound:  # NaN fails too
            record.update(status="fail", reason=f"relative error {relative:.3g} above {bound:g}")
    except NotAvailable as reason:
        record.update(status="skipped", reason=str(reason))
    except Exception as error:  # noqa: BLE001 - every failure is one line of the report
        record.update(status="fail", reason=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
    finally:
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    return record


# Report -----------------------------------------------------------------------------------------


def _print_environment(env: dict[str, Any], out: Callable[[str], None]) -> None:
    out("environment:")
    for key, value in env.items():
        shown = ", ".join(value) if isinstance(value, list) else ("not found" if value is None else value)
        out(f"  {key:22s} {shown}")


def _row(record: dict[str, Any]) -> str:
    drift = "-" if record["drift"] is None else f"{record['drift']:.2e}"
    relative = "-" if record["relative_error"] is None else f"{record['relative_error']:.2e}"
    latency = "-" if record["latency_ms"] is None else f"{record['latency_ms']:.1f}"
    reason = f"  {record['reason']}" if record["reason"] else ""
    return f"  {record['status']:7s} {record['check']:52s} {drift:>9s} {relative:>9s} {latency:>9s}{reason}"


def run(device: torch.device, quick: bool, json_path: str | None, out: Callable[[str], None] = print) -> int:
    """Run every check; print the environment and a table; -> exit code (1 when any check failed)."""
    env = environment(device)
    _print_environment(env, out)
    records = [toolchain_record(device, env)]
    out("\nchecks (drift: mean end-point distance to the float32 torch reference, px; relative L2 error; ms):")
    out(f"  {'status':7s} {'check':52s} {'drift px':>9s} {'relative':>9s} {'ms':>9s}")
    out(_row(records[0]))
    with tempfile.TemporaryDirectory(prefix="raft-selftest-") as workdir, ieee_fp32():
        context = Context(device, quick, 4 if quick else 12, Path(workdir))
        for check in plan(device, quick):
            records.append(run_check(check, context))
            out(_row(records[-1]))
    counts = {status: sum(r["status"] == status for r in records) for status in ("ok", "fail", "skipped")}
    out(f"\n{counts['ok']} ok, {counts['fail']} failed, {counts['skipped']} skipped")
    if json_path:
        make_folder(Path(json_path).parent)
        write_atomically(json_path, json.dumps({"environment": env, "records": records}, indent=1) + "\n")
    return 1 if counts["fail"] else 0


def main(args: argparse.Namespace) -> int:
    from raft_engine.runtime.inputs import parse_device

    device = parse_device(args.device)
    return run(device, args.quick, args.json)
