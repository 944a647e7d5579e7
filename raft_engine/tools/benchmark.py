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

import datetime
import gc
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from raft_engine.errors import NotAvailable, UsageError
from raft_engine.runtime.devices import device_name, ieee_fp32, synchronize
from raft_engine.tools.bench_configs import BenchConfig
from raft_engine.tools.measure import ENGINE_BACKENDS, ORT_PROVIDERS, build_estimator, one_line, versions

if TYPE_CHECKING:
    from raft_engine.model.raft import RAFT

# ------------------------------------------------------------------------------------------------
# Measurement helpers


def time_runs(run, device: torch.device, warmup: int, runs: int) -> tuple[list[float], float]:
    """-> (latencies in ms of the timed runs, seconds spent warming up)."""
    start = time.perf_counter()
    for _ in range(warmup):
        run()
    synchronize(device)
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


def benchmark_pairs(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _estimator_runner(model, config: BenchConfig, device: torch.device, workdir: Path):
    """A callable running one batch of `config` through its estimator (`build_estimator`: the engine of an
    engine backend, or the exported graph on an ONNX Runtime provider) -> the flow."""
    from raft_engine.runtime.inputs import Padder

    estimator = build_estimator(
        model,
        config.backend,
        device,
        config.dtype,
        config.corr,  # "volume" or "ondemand": an exported graph's correlation is the configuration's
        iters=config.iters,
        padded_size=Padder(config.height, config.width).padded_size,
        batch=config.batch,
        workdir=workdir,
    )
    image1, image2 = benchmark_pairs(config.batch, config.height, config.width)
    iters = None if estimator.settings.runs_own_iters else config.iters
    if config.backend in ENGINE_BACKENDS:
        image1, image2 = image1.to(device), image2.to(device)  # uint8: no range check in the timed runs
    elif config.backend != "ort-cpu":  # the GPU providers bind float32 device memory
        image1, image2 = image1.to(device).float(), image2.to(device).float()
    return lambda: estimator.estimate(image1, image2, iters=iters).flow


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
        padder.pad(x.float().to(device) / 127.5 - 1) for x in benchmark_pairs(config.batch, config.height, config.width)
    )

    @torch.inference_mode()
    def run():
        return padder.unpad(peer(image1, image2, num_flow_updates=config.iters)[-1])

    return run


# ------------------------------------------------------------------------------------------------


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
                run = _estimator_runner(model, reference_config, self.device, self.workdir)
                self.references[key] = run().float().cpu()
        return self.references[key]

    def flops_per_pair(self, config: BenchConfig) -> float:
        key = (config.variant, config.height, config.width, config.iters, config.corr)
        if key not in self.flops:
            self.flops[key] = count_flops(config)
        return self.flops[key]


def make_runner(model, config: BenchConfig, device: torch.device, workdir: Path):
    """A callable running one batch of `config` and returning its flow; NotAvailable where it cannot run."""
    if config.backend == "triton" and device.type != "cuda":
        raise NotAvailable("the Triton kernels run on CUDA (the CPU only has Triton's interpreter)")
    if config.backend in ENGINE_BACKENDS or config.backend in ORT_PROVIDERS:
        return _estimator_runner(model, config, device, workdir)
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
