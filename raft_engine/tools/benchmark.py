"""Latency, throughput, memory, FLOPs and accuracy drift of RAFT configurations, with peers measured
in the same run. `raft-engine bench --help` (or `python bench.py --help`) lists the options.

Per configuration: warm-up runs (the compile time of compiled backends is `warmup_s`; compiled
backends get at least 3: compile, and with CUDA graphs record and replay), then timed runs (CUDA events
on a GPU) -> latency median/p90/p99 and pairs/s; peak device memory; FLOPs per pair counted with
torch.utils.flop_counter on the meta device (convolutions and matrix products of the configuration's
correlation mode), achieved TFLOP/s and its fraction of a bf16 matrix-product peak measured in the
same run; whether PyTorch's TF32 flags were on; and the mean end-point distance (px) between this
configuration's flow and the fp32 PyTorch reference on the same inputs, run in IEEE float32 (TF32 off)
after the measured engine is freed. Configurations that cannot run are reported with the reason, and
the sweep goes on; a reference that fails leaves only the drift missing (`reference_error`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from raft_engine.errors import InputError, MissingDependency, NotAvailable, UsageError
from raft_engine.runtime.options import DTYPE_NAMES

if TYPE_CHECKING:
    from raft_engine.model.raft import RAFT

RESOLUTIONS = {"sintel": (440, 1024), "kitti": (376, 1248), "1080p": (1088, 1920), "4k": (2160, 3840)}
# What a benchmark configuration runs: the engine's backends, compiled or not, ONNX Runtime's providers and the peer.
MEASURED_BACKENDS = (
    "torch", "triton", "compiled", "compiled+graphs", "ort-cpu", "ort-cuda", "ort-tensorrt", "torchvision",
)  # fmt: skip


@dataclass(frozen=True)
class Sweep:
    """A named sweep: the option lists it crosses, and the warm-up and timed runs of each configuration."""

    variants: tuple[str, ...]
    resolutions: tuple[str, ...]  # names in RESOLUTIONS, or HxW
    batches: tuple[int, ...]
    iters: tuple[int, ...]
    dtypes: tuple[str, ...]
    backends: tuple[str, ...]
    cpu_backends: tuple[str, ...] | None = None  # the backends off CUDA, where they differ
    warmup: int = 3
    runs: int = 20

    def backends_on(self, device: torch.device) -> list[str]:
        if device.type != "cuda" and self.cpu_backends is not None:
            return list(self.cpu_backends)
        return list(self.backends)

    def sizes(self) -> list[tuple[int, int]]:
        return [parse_resolution(r) for r in self.resolutions]


SWEEPS = {
    # --quick: a smoke test that finishes in under a minute, on any device.
    "quick": Sweep(
        variants=("small",),
        resolutions=("128x160",),
        batches=(1,),
        iters=(4,),
        dtypes=("fp32", "bf16"),
        backends=("torch", "ort-cpu"),
        warmup=1,
        runs=3,
    ),
    # Without --quick or --sweep: RAFT-large at Sintel's size, with every GPU backend, or the CPU's.
    "default": Sweep(
        variants=("large",),
        resolutions=("sintel",),
        batches=(1,),
        iters=(12,),
        dtypes=("fp32",),
        backends=("torch", "triton", "compiled", "compiled+graphs", "ort-cuda", "torchvision"),
        cpu_backends=("torch", "ort-cpu"),
    ),
    # The standard GPU sweep: RAFT-large and small, sintel and 1080p, batch 1/8/32, 12 and 32 iterations.
    "standard": Sweep(
        variants=("large", "small"),
        resolutions=("sintel", "1080p"),
        batches=(1, 8, 32),
        iters=(12, 32),
        dtypes=DTYPE_NAMES,
        backends=MEASURED_BACKENDS,
    ),
    # ptlflow's published setting: 500x1000 (padded to 504x1000), 32 iterations, batch 1.
    "ptlflow": Sweep(
        variants=("large",),
        resolutions=("500x1000",),
        batches=(1,),
        iters=(32,),
        dtypes=("fp32", "fp16"),
        backends=MEASURED_BACKENDS,
    ),
}


@dataclass(frozen=True)
class BenchConfig:
    backend: str
    variant: str
    dtype: str
    batch: int
    height: int
    width: int
    iters: int
    corr: str

    def describe(self) -> str:
        return (
            f"{self.backend} RAFT-{self.variant} {self.dtype} b{self.batch} {self.height}x{self.width} "
            f"{self.iters}it corr={self.corr}"
        )


def parse_resolution(text: str) -> tuple[int, int]:
    """A name of RESOLUTIONS or HxW -> (height, width); anything else raises `InputError`."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(
            f"resolution {text!r}: expected one of {', '.join(RESOLUTIONS)} or HxW (e.g. 436x1024)"
        ) from None
    if height < 1 or width < 1:
        raise InputError(f"resolution {text!r} must be positive")
    return height, width


# ------------------------------------------------------------------------------------------------
# Measurement helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(run, device: torch.device, warmup: int, runs: int) -> tuple[list[float], float]:
    """-> (latencies in ms of the timed runs, seconds spent warming up)."""
    start = time.perf_counter()
    for _ in range(warmup):
        run()
    _sync(device)
    warmup_s = time.perf_counter() - start
    latencies = []
    for _ in range(runs):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            end.synchronize()
            latencies.append(begin.elapsed_time(end))
        else:
            started = time.perf_counter()
            run()
            latencies.append(1000 * (time.perf_counter() - started))
    return latencies, warmup_s


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Inside: float32 convolutions (cuDNN) and matrix products in IEEE float32, not TF32 (10-bit
    mantissas), which PyTorch uses for convolutions on Ampere and later GPUs by default. The previous
    settings come back after, also when the body raises. The legacy flags, not `fp32_precision`: once the
    new API is used, torch.export (torch 2.13) fails reading the legacy flag."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_in_use(backend: str) -> dict[str, bool | None]:
    """Whether `backend` runs float32 convolutions and matrix products in TF32, read now: PyTorch's flags
    for the PyTorch backends (they act on CUDA GPUs of Ampere and later); ONNX Runtime does not read them:
    its sessions here are made with use_tf32=0 and the CPU has no TF32, while TensorRT's builder makes its
    own choice (None: not known here)."""
    if backend == "ort-tensorrt":
        return {"tf32_conv": None, "tf32_matmul": None}
    if backend.startswith("ort-"):
        return {"tf32_conv": False, "tf32_matmul": False}
    return {
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }


COMPILED_BACKENDS = ("compiled", "compiled+graphs")
COMPILED_WARMUP = 3  # compile, then with CUDA graphs: warm-up, record, replay (FlowEngine.warmup does 3 too)


def warmup_runs(backend: str, warmup: int) -> int:
    """The warm-up runs of a configuration: the sweep's, at least COMPILED_WARMUP for compiled backends, so
    that neither compiling nor recording a CUDA graph lands in the timed runs."""
    return max(warmup, COMPILED_WARMUP) if backend in COMPILED_BACKENDS else warmup


def one_line(error: BaseException) -> str:
    """`error` as "Type: first line of its message" (at most 200 characters of it)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def matmul_peak_tflops(device: torch.device) -> float:
    """A bf16 matrix product's rate here, TFLOP/s: the ceiling achieved FLOPs are compared with."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    latencies, _ = time_runs(lambda: a @ b, device, warmup=3, runs=10)
    return 2 * size**3 / (statistics.median(latencies) / 1000) / 1e12


def count_flops(config: BenchConfig) -> float:
    """FLOPs per pair of the configuration's computation, counted on the meta device (no weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    from raft_engine.model.config import RAFTConfig
    from raft_engine.model.raft import RAFT
    from raft_engine.runtime.inputs import Padder
    from raft_engine.runtime.parts import build_parts

    with torch.device("meta"):
        model = RAFT(RAFTConfig.from_variant(config.variant)).eval()
    meta = build_parts(model, "torch", torch.float32)[config.corr]
    height, width = Padder(config.height, config.width).padded_size
    image = torch.empty(1, 3, height, width, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(image, image, iters=config.iters)
    return float(counter.get_total_flops())


_PAIRS: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def scene_batch(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) uint8 generated pairs; at most two distinct scenes, repeated (timing does not care)."""
    key = (batch, height, width)
    if key not in _PAIRS:
        from raft_engine.scenes import scene_tensors

        image1, image2, _ = scene_tensors(range(min(batch, 2)), height, width)
        repeat = [i % image1.shape[0] for i in range(batch)]
        _PAIRS[key] = image1[repeat].to(torch.uint8), image2[repeat].to(torch.uint8)
    return _PAIRS[key]


# ------------------------------------------------------------------------------------------------
# Backends: each returns a callable running one batch, and the flow it computes.


def _engine_runner(model, config: BenchConfig, device: torch.device):
    from raft_engine.runtime.engine import FlowEngine

    options = functools.partial(FlowEngine, model, device=device, dtype=config.dtype, corr=config.corr)
    if config.backend == "torch":
        engine = options(backend="torch")
    elif config.backend == "triton":
        engine = options(backend="triton")
    elif config.backend in ("compiled", "compiled+graphs"):
        if config.backend == "compiled+graphs" and device.type != "cuda":
            raise NotAvailable("CUDA graphs need a GPU")
        engine = options(compile=True, cuda_graphs=config.backend == "compiled+graphs", backend="auto")
    else:
        raise AssertionError(f"not an engine backend: {config.backend}")
    image1, image2 = (x.to(device) for x in scene_batch(config.batch, config.height, config.width))
    return lambda: engine(image1, image2, iters=config.iters)


def _ort_runner(model, config: BenchConfig, device: torch.device, workdir: Path):
    try:
        import onnxruntime
    except ImportError as error:
        raise NotAvailable("onnxruntime is not installed") from error
    from raft_engine.export import OrtFlowSession, export_onnx
    from raft_engine.runtime.inputs import Padder

    provider = config.backend.removeprefix("ort-")
    needed = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    if needed[provider] not in onnxruntime.get_available_providers():
        raise NotAvailable(f"ONNX Runtime has no {needed[provider]}")
    if provider != "cpu" and device.type != "cuda":
        raise NotAvailable(f"{config.backend} needs a GPU")
    if config.dtype == "bf16":
        raise NotAvailable("the ONNX export is fp32 or fp16")
    height, width = Padder(config.height, config.width).padded_size
    name = f"{config.variant}-{config.dtype}-{config.corr}-b{config.batch}-{height}x{width}-{config.iters}.onnx"
    path = workdir / name
    if not path.exists():
        export_onnx(
            model,
            path,
            iters=config.iters,
            height=height,
            width=width,
            batch=config.batch,
            dtype=config.dtype,
            corr=config.corr,  # "volume" or "ondemand": the graph's correlation is the configuration's
            verify=False,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU-placed nodes are recorded in the report, not warned about here
        session = OrtFlowSession(path, providers=provider)
    image1, image2 = scene_batch(config.batch, config.height, config.width)
    if provider != "cpu":
        image1, image2 = image1.to(device).float(), image2.to(device).float()
    return lambda: session(image1, image2)


def torchvision_state_dict(model, tv_model) -> dict:
    """This package's weights in torchvision's layout, so the peer computes with the same weights."""
    from raft_engine.weights import torchvision_key

    native = model.state_dict()
    return {key: native[torchvision_key(key, model.config.variant)] for key in tv_model.state_dict()}


def _torchvision_runner(model, config: BenchConfig, device: torch.device):
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except ImportError as error:
        raise NotAvailable("torchvision is not importable") from error
    if config.dtype != "fp32" or config.corr != "volume":
        raise NotAvailable("the torchvision peer runs eager fp32 with its dense volume")
    from raft_engine.runtime.inputs import Padder

    peer = (raft_large if config.variant == "large" else raft_small)(weights=None)
    peer.load_state_dict(torchvision_state_dict(model, peer))
    peer = peer.eval().to(device)
    padder = Padder(config.height, config.width)
    image1, image2 = (
        padder.pad(x.float().to(device) / 127.5 - 1) for x in scene_batch(config.batch, config.height, config.width)
    )

    @torch.inference_mode()
    def run():
        return padder.unpad(peer(image1, image2, num_flow_updates=config.iters)[-1])

    return run


# ------------------------------------------------------------------------------------------------


def versions() -> dict:
    found: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "onnxruntime", "torchvision"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
        try:
            found["driver"] = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                .stdout.strip()
                .splitlines()[0]
            )
        except (OSError, IndexError, subprocess.SubprocessError):
            found["driver"] = "unknown"
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


Loaded = tuple["RAFT", str]  # a model and where its weights came from (the records' "weights")


def load_weights(sources: list[str]) -> dict[str, Loaded]:
    """--weights: each checkpoint or preset loaded once -> {variant: (model, source)} (a later source of a
    variant replaces an earlier one)."""
    from raft_engine.weights import load_model

    loaded = {}
    for source in sources:
        model = load_model(source)
        loaded[model.config.variant] = (model, source)
    return loaded


def _load(variant: str, weights: str | Loaded | None) -> Loaded:
    """The model of `variant`: as loaded already, loaded from a checkpoint or preset, or random (seed 0)."""
    from raft_engine.model.config import RAFTConfig
    from raft_engine.model.raft import RAFT
    from raft_engine.weights import load_model

    if isinstance(weights, tuple):
        return weights
    if weights:
        model = load_model(weights)
        if model.config.variant != variant:
            raise UsageError(f"--weights {weights} is RAFT-{model.config.variant}, but --variant {variant} was asked")
        return model, weights
    torch.manual_seed(0)
    return RAFT(RAFTConfig.from_variant(variant)).eval(), "random (seed 0)"


MEASURED = (
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "pairs_per_s", "warmup_s", "warmup_runs",
    "peak_mem_mb", "gflop_per_pair", "tflops", "fraction_of_bf16_peak", "epe_vs_fp32", "runs",
)  # fmt: skip
ENGINE_BACKENDS = ("torch", "triton", "compiled", "compiled+graphs")


@dataclass
class SweepContext:
    """What the configurations of one sweep share: the device, the warm-up and run counts, the bf16 peak
    achieved FLOPs are compared with, the folder of ONNX exports, the fields every record carries, and the
    caches of fp32 reference flows and FLOP counts (each computed once per shape)."""

    device: torch.device
    warmup: int
    runs: int
    peak: float
    workdir: Path
    common: dict = field(default_factory=dict)
    references: dict[tuple, torch.Tensor] = field(default_factory=dict)
    flops: dict[tuple, float] = field(default_factory=dict)

    def reference(self, model, config: BenchConfig) -> torch.Tensor:
        """The fp32 PyTorch flow of `config`'s inputs (on the CPU), computed in IEEE float32 (TF32 off):
        what the drift is measured against."""
        key = (config.variant, config.batch, config.height, config.width, config.iters, config.corr)
        if key not in self.references:
            reference_config = replace(config, backend="torch", dtype="fp32")
            with ieee_fp32():
                self.references[key] = _engine_runner(model, reference_config, self.device)().float().cpu()
        return self.references[key]

    def flops_per_pair(self, config: BenchConfig) -> float:
        key = (config.variant, config.height, config.width, config.iters, config.corr)
        if key not in self.flops:
            self.flops[key] = count_flops(config)
        return self.flops[key]


def make_runner(model, config: BenchConfig, device: torch.device, workdir: Path):
    """A callable running one batch of `config` and returning its flow; NotAvailable where it cannot run."""
    if config.backend in ENGINE_BACKENDS:
        if config.backend == "triton" and device.type != "cuda":
            raise NotAvailable("the Triton kernels run on CUDA (the CPU only has Triton's interpreter)")
        return _engine_runner(model, config, device)
    if config.backend.startswith("ort-"):
        return _ort_runner(model, config, device, workdir)
    if config.backend == "torchvision":
        return _torchvision_runner(model, config, device)
    raise NotAvailable(f"unknown backend {config.backend}")


def _reset_memory(device: torch.device) -> int:
    """Before the timed runs: reset the peak statistics -> the free device memory (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.mem_get_info(device)[0]


def _peak_memory(config: BenchConfig, device: torch.device, free_before: int) -> tuple[float | None, str]:
    """After the timed runs -> (peak device memory in MB, how it was measured)."""
    if device.type != "cuda":
        return None, "not measured on the CPU"
    if config.backend.startswith("ort-"):  # ONNX Runtime's arena is outside torch's allocator
        return round((free_before - torch.cuda.mem_get_info(device)[0]) / 2**20, 1), "device free-memory drop"
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "torch.cuda.max_memory_allocated"


def _time_config(config: BenchConfig, model, context: SweepContext, record: dict) -> torch.Tensor:
    """Make the runner of `config`, time it, and fill `record`'s timing, memory and FLOP keys -> the flow
    of one more run, on the CPU. The runner, and the engine or session it holds, die with this frame."""
    device = context.device
    run = make_runner(model, config, device, context.workdir)
    free_before = _reset_memory(device)
    warmup = warmup_runs(config.backend, context.warmup)
    latencies, warmup_s = time_runs(run, device, warmup, context.runs)
    flow = run().detach().cpu().float()
    record["peak_mem_mb"], record["peak_mem_method"] = _peak_memory(config, device, free_before)
    flops = context.flops_per_pair(config)
    p50 = statistics.median(latencies)
    pairs_per_s = config.batch / (p50 / 1000)
    tflops = flops * pairs_per_s / 1e12
    record.update(
        latency_ms_p50=round(p50, 3),
        latency_ms_p90=round(float(np.percentile(latencies, 90)), 3),
        latency_ms_p99=round(float(np.percentile(latencies, 99)), 3),
        pairs_per_s=round(pairs_per_s, 2),
        warmup_s=round(warmup_s, 2),
        warmup_runs=warmup,
        gflop_per_pair=round(flops / 1e9, 1),
        tflops=round(tflops, 3),
        fraction_of_bf16_peak=round(tflops / context.peak, 4),
        runs=context.runs,
    )
    return flow


def _release(config: BenchConfig, device: torch.device) -> None:
    """Give back the memory of a configuration's dropped runner before the next allocation: collect its
    reference cycles; for compiled backends clear torch.compile's caches, which keep the compiled graphs
    (and the CUDA-graph memory pool of compiled+graphs) alive after the engine is gone; then hand the
    cached CUDA blocks back."""
    gc.collect()
    if config.backend in COMPILED_BACKENDS:
        torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _drift(flow: torch.Tensor, model, config: BenchConfig, context: SweepContext) -> tuple[float | None, str | None]:
    """-> (mean end-point distance in px between `flow` and the fp32 reference, None), or (None, why) where
    the reference failed (out of memory included): a missing drift, not a failed configuration."""
    try:
        reference = context.reference(model, config)
        return round((flow - reference).norm(dim=1).mean().item(), 5), None
    except Exception as error:  # noqa: BLE001 - the configuration's own measurements stand
        return None, one_line(error)


def measure(config: BenchConfig, model, context: SweepContext, weights: str) -> dict:
    """The record of one configuration: make its runner, time it, its peak memory and FLOPs; free it; then
    the drift from the fp32 reference. Every record has every key of MEASURED; they stay None where the
    configuration did not run, and `status` says why (unavailable, out of memory, or the error). A failed
    reference leaves the status "ok" and `epe_vs_fp32` None, with the reason in `reference_error`.
    `tf32_conv`/`tf32_matmul`: whether the measured configuration could run float32 in TF32
    (`tf32_in_use`); `reference_tf32`: the reference never does."""
    device = context.device
    record = {
        **asdict(config),
        **context.common,
        "weights": weights,
        "status": "ok",
        **dict.fromkeys(MEASURED),
        **tf32_in_use(config.backend),
        "reference_tf32": False,
        "reference_error": None,
    }
    flow = None
    try:
        flow = _time_config(config, model, context, record)
    except NotAvailable as reason:
        record["status"] = f"unavailable: {reason}"
    except torch.cuda.OutOfMemoryError:
        record["status"] = "out of memory"
    except Exception as error:  # noqa: BLE001 - one failing configuration must not end the sweep
        record["status"] = f"error: {one_line(error)}"
    _release(config, device)
    if flow is not None:
        record["epe_vs_fp32"], record["reference_error"] = _drift(flow, model, config, context)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the reference's engine, or what a failed reference left
    return record


def run_sweep(
    configs: list[BenchConfig],
    device: torch.device,
    weights: Mapping[str, str | Loaded],
    warmup: int,
    runs: int,
    progress: bool = True,
) -> list[dict]:
    """Measure each configuration. `weights`: per variant, a model as `load_weights` returns it, or a
    checkpoint or preset to load here; variants without get random weights (seed 0)."""
    from tqdm import tqdm

    peak = matmul_peak_tflops(device)
    models = {variant: _load(variant, weights.get(variant)) for variant in sorted({c.variant for c in configs})}
    common = {
        "device": device_name(device),
        "versions": versions(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bf16_matmul_tflops": round(peak, 2),
    }
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as workdir:
        context = SweepContext(device, warmup, runs, peak, Path(workdir), common)
        records = []
        for config in tqdm(configs, desc="bench", unit="config", disable=not progress, file=sys.stderr):
            model, weights_used = models[config.variant]
            records.append(measure(config, model, context, weights_used))
    return records


def _cell(record: dict, key: str, fmt: str) -> str:
    value = record.get(key)
    return fmt.format(value) if record["status"] == "ok" and value is not None else "-"


def table(records: list[dict]) -> str:
    header = [
        "backend",
        "variant",
        "dtype",
        "corr",
        "batch",
        "size",
        "iters",
        "p50 ms",
        "p90 ms",
        "pairs/s",
        "peak MB",
        "GFLOP",
        "TFLOP/s",
        "% bf16",
        "EPE drift",
        "status",
    ]
    rows = []
    for r in records:
        rows.append(
            [
                r["backend"],
                r["variant"],
                r["dtype"],
                r["corr"],
                str(r["batch"]),
                f"{r['height']}x{r['width']}",
                str(r["iters"]),
                _cell(r, "latency_ms_p50", "{:.2f}"),
                _cell(r, "latency_ms_p90", "{:.2f}"),
                _cell(r, "pairs_per_s", "{:.2f}"),
                _cell(r, "peak_mem_mb", "{:.0f}"),
                _cell(r, "gflop_per_pair", "{:.0f}"),
                _cell(r, "tflops", "{:.2f}"),
                _cell({**r, "percent": 100 * (r.get("fraction_of_bf16_peak") or 0)}, "percent", "{:.1f}"),
                _cell(r, "epe_vs_fp32", "{:.4f}"),
                r["status"] + (f" (no drift: {r['reference_error']})" if r.get("reference_error") else ""),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependency("--plot needs matplotlib: pip install -e '.[plot]'", name="matplotlib") from error
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple, list[tuple[int, float, float]]] = {}
    for r in records:
        if r["status"] == "ok":
            key = (r["backend"], r["variant"], r["dtype"], r["corr"], r["height"], r["width"], r["iters"])
            series.setdefault(key, []).append((r["batch"], r["latency_ms_p50"], r["pairs_per_s"]))
    for key, points in sorted(series.items()):
        points.sort()
        label = f"{key[0]} {key[1]} {key[2]} {key[4]}x{key[5]} {key[6]}it"
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
    for axis, title in ((left, "latency (ms, median)"), (right, "throughput (pairs/s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.legend(fontsize=6, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def render_markdown(results_dir: Path) -> str:
    """BENCHMARKS.md: every results file, with its device, versions and command, as tables."""
    parts = [
        "# Benchmarks",
        "",
        "Rendered by `python bench.py --render benchmarks/results` from the JSON records there.",
        "Every number was measured by the command shown with it; reproduce a table by running that command.",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        records = json.loads(path.read_text())
        if not records:
            continue
        first = records[0]
        versions_text = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
        parts += [
            f"## {path.stem}",
            "",
            f"- device: {first['device']}",
            f"- versions: {versions_text}",
            f"- weights: {first['weights']}",
            f"- bf16 matrix-product peak measured: {first['bf16_matmul_tflops']} TFLOP/s",
            f"- date: {first['date']}",
            f"- command: `{first['command']}`",
            "",
            "```",
            table(records),
            "```",
            "",
        ]
    return "\n".join(parts)


def build_configs(
    variants: list[str],
    resolutions: list[tuple[int, int]],
    batches: list[int],
    iters: list[int],
    dtypes: list[str],
    corrs: list[str],
    backends: list[str],
) -> list[BenchConfig]:
    """Every combination of the lists, in this order of nesting (backends innermost)."""
    return [
        BenchConfig(backend, variant, dtype, batch, height, width, count, corr)
        for variant in variants
        for height, width in resolutions
        for batch in batches
        for count in iters
        for dtype in dtypes
        for corr in corrs
        for backend in backends
    ]
