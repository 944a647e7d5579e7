"""`raft-engine bench` (and `python bench.py`): latency, throughput, memory, FLOPs and accuracy drift of
RAFT configurations, with peers measured in the same run (see `raft_engine.tools.benchmark`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from raft_engine.cli import options
from raft_engine.errors import InputError, UsageError


def register(commands: Any) -> None:
    from raft_engine.runtime.options import DTYPE_NAMES
    from raft_engine.tools.bench_configs import MEASURED_BACKENDS, RESOLUTIONS, SWEEPS
    from raft_engine.tools.benchmark import COMPILED_WARMUP

    bench = commands.add_parser(
        "bench",
        help="benchmark configurations: latency, throughput, memory, FLOPs and drift, with peers in the same run",
        description="Latency, throughput, memory, FLOPs and accuracy drift of RAFT configurations (every combination "
        "of the list options), with peers measured in the same run. Without --quick or --sweep: RAFT-large at "
        "Sintel's size with every backend of the device.",
    )
    options.add_shared(bench, ("device",), {})
    bench.add_argument("--quick", action="store_true", help="a small sweep that finishes in under a minute")
    bench.add_argument("--sweep", choices=tuple(SWEEPS), help="a named sweep (overrides the list options)")
    bench.add_argument("--backend", nargs="+", choices=MEASURED_BACKENDS, default=None, help="backends to measure")
    bench.add_argument("--variant", nargs="+", choices=("large", "small"), default=None, help="RAFT variants")
    bench.add_argument(
        "--resolution",
        nargs="+",
        type=_resolution,
        default=None,
        help=f"{', '.join(f'{k} ({h}x{w})' for k, (h, w) in RESOLUTIONS.items())} or HxW",
    )
    bench.add_argument("--batch", nargs="+", type=int, default=None, help="batch sizes")
    bench.add_argument("--iters", nargs="+", type=int, default=None, help="iteration counts")
    bench.add_argument("--dtype", nargs="+", choices=DTYPE_NAMES, default=None, help="compute precisions")
    bench.add_argument("--corr", nargs="+", choices=("volume", "ondemand"), default=None, help="correlation modes")
    bench.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="W",
        help="checkpoint or preset per variant (default: random weights; speed does not depend on "
        "them, the drift does)",
    )
    default, quick = SWEEPS["default"], SWEEPS["quick"]
    bench.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"warm-up runs (default {default.warmup}, quick {quick.warmup}; compiled backends at least "
        f"{COMPILED_WARMUP})",
    )
    bench.add_argument(
        "--runs", type=int, default=None, help=f"timed runs (default {default.runs}, quick {quick.runs})"
    )
    bench.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    bench.add_argument("--plot", metavar="PATH", help="latency and throughput against batch size, PNG (matplotlib)")
    bench.add_argument("--render", metavar="DIR", help="only render DIR/*.json into BENCHMARKS.md and exit")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=run)


def _resolution(text: str) -> tuple[int, int]:
    from raft_engine.tools.bench_configs import parse_resolution

    try:
        return parse_resolution(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _apply_sweep(args: argparse.Namespace, device: Any) -> tuple[int, int]:
    """Fill the list options left unset from the sweep (--sweep, else "quick" with --quick, else "default")
    -> (warm-up runs, timed runs): the options', else the "quick" entry's with --quick, else the sweep's."""
    from raft_engine.tools.bench_configs import SWEEPS

    sweep = SWEEPS[args.sweep or ("quick" if args.quick else "default")]
    args.variant = args.variant or list(sweep.variants)
    args.resolution = args.resolution or sweep.sizes()
    args.batch = args.batch or list(sweep.batches)
    args.iters = args.iters or list(sweep.iters)
    args.dtype = args.dtype or list(sweep.dtypes)
    args.backend = args.backend or sweep.backends_on(device)
    args.corr = args.corr or ["volume"]
    if any(b < 1 for b in args.batch) or any(i < 1 for i in args.iters):
        raise UsageError("batch sizes and iteration counts must be >= 1")
    counts = SWEEPS["quick"] if args.quick else sweep
    warmup = args.warmup if args.warmup is not None else counts.warmup
    runs = args.runs if args.runs is not None else counts.runs
    if runs < 1 or warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    return warmup, runs


def run(args: argparse.Namespace) -> int:
    import torch

    from raft_engine.io.files import make_folder, write_atomically
    from raft_engine.tools import bench_configs, bench_report, benchmark

    if args.render:
        results = Path(args.render)
        if not results.is_dir():
            raise UsageError(f"--render {results}: no such folder")
        write_atomically("BENCHMARKS.md", bench_report.render_markdown(results))
        print(f"wrote BENCHMARKS.md from {results}")
        return 0

    from raft_engine.io.files import check_output_file

    if args.json:
        check_output_file(args.json, [".json"], what="--json")
    if args.plot:
        check_output_file(args.plot, [".png"], what="--plot")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but CUDA is not available")
    warmup, runs = _apply_sweep(args, device)
    weights = benchmark.load_weights(args.weights)  # each checkpoint once; the sweep reuses the models
    configs = bench_configs.build_configs(args.variant, args.resolution, args.batch, args.iters, args.dtype, args.corr,
                                      args.backend)  # fmt: skip
    records = benchmark.run_sweep(configs, device, weights, warmup, runs, progress=not args.no_progress)
    print(bench_report.table(records))
    print(
        f"device: {records[0]['device']}; bf16 matrix-product peak {records[0]['bf16_matmul_tflops']} TFLOP/s; "
        f"weights: {', '.join(sorted({r['weights'] for r in records}))}"
    )
    if args.json:
        make_folder(Path(args.json).parent)
        write_atomically(args.json, json.dumps(records, indent=1) + "\n")
    if args.plot:
        bench_report.plot(records, args.plot)
    return 0 if any(r["status"] == "ok" for r in records) else 1
