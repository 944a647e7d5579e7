"""Kernel benchmarks: each Triton kernel against its PyTorch reference, and the on-demand
correlation against the dense volume end to end (latency and peak memory).

    python benchmarks/kernels.py                      # on a GPU: the grids of 440x1024, 1088x1920, 2160x3840
    python benchmarks/kernels.py --device cpu --quick # through Triton's interpreter, small grids (a smoke test)

Per kernel and grid (RAFT-large: 4 levels, radius 4, D = 256): median ms (triton.testing.do_bench on
a GPU), the bytes a kernel must move at least (each input read once, the output written once) over
that time as GB/s, and that as a fraction of the device's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial

import torch

GRIDS = {"440x1024": (55, 128), "1088x1920": (136, 240), "2160x3840": (270, 480)}
LEVELS, RADIUS, DIM = 4, 4, 256


def bench_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # its default is the mean
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a large device-to-device copy, counting bytes read plus bytes written."""
    size = (1 << 28) if device.type == "cuda" else (1 << 24)
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * size / (bench_ms(lambda: target.copy_(source), device) / 1000) / 1e9


def measure(kernel: str, grid: str, dtype: torch.dtype, implementations, moved: int, device, bandwidth: float):
    """Time each (name, callable) -> result rows: ms, GB/s over the `moved` bytes, fraction of copy bandwidth."""
    rows = []
    for which, fn in implementations:
        ms = bench_ms(fn, device)
        rows.append(
            dict(
                kernel=kernel,
                grid=grid,
                dtype=str(dtype).split(".")[-1],
                impl=which,
                ms=ms,
                gb_per_s=moved / ms / 1e6,
                of_copy=moved / ms / 1e6 / bandwidth,
            )
        )
    return rows


def lookup_bytes(cells: int, height: int, width: int, itemsize: int) -> int:
    window = (2 * RADIUS + 1) ** 2
    patch = min((2 * RADIUS + 2) ** 2, height * width)
    reads = cells * (8 + LEVELS * patch * itemsize)  # coords, and at least the patch around each window
    return reads + cells * LEVELS * window * 4


def grid_rows(name: str, height: int, width: int, device: torch.device, generator, bandwidth: float) -> list[dict]:
    """Each kernel against its reference on one 1/8 grid, in float32 and float16."""
    from raft_engine.kernels.convex_upsample import convex_upsample, convex_upsample_ref
    from raft_engine.kernels.corr_lookup import corr_lookup, corr_lookup_ref
    from raft_engine.kernels.corr_ondemand import corr_ondemand, corr_ondemand_ref, pooled_pyramid
    from raft_engine.model.correlation import all_pairs_correlation, correlation_pyramid

    rows: list[dict] = []
    cells = height * width
    fmap1 = torch.randn(1, DIM, height, width, device=device, generator=generator)
    fmap2 = torch.randn(1, DIM, height, width, device=device, generator=generator)
    coords = torch.stack(
        torch.meshgrid(
            torch.arange(width, device=device, dtype=torch.float32),
            torch.arange(height, device=device, dtype=torch.float32),
            indexing="xy",
        )
    )[None]
    coords = coords + 3 * torch.randn(coords.shape, device=device, generator=generator)
    dense_bytes = 4 * cells * cells * 4 // 3
    if dense_bytes < 0.6 * (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 2**31):
        pyramid32 = correlation_pyramid(all_pairs_correlation(fmap1, fmap2), LEVELS)
        for dtype in (torch.float32, torch.float16):
            pyramid = [level.to(dtype) for level in pyramid32]
            moved = lookup_bytes(cells, height, width, pyramid[0].element_size())
            rows += measure(
                "corr_lookup",
                name,
                dtype,
                [
                    ("reference", partial(corr_lookup_ref, pyramid, coords, RADIUS)),
                    ("triton", partial(corr_lookup, pyramid, coords, RADIUS)),
                ],
                moved,
                device,
                bandwidth,
            )
            del pyramid
        del pyramid32
    else:
        rows.append(
            dict(
                kernel="corr_lookup",
                grid=name,
                dtype="-",
                impl="-",
                ms=None,
                gb_per_s=None,
                of_copy=None,
                note=f"dense pyramid of {dense_bytes / 1e9:.1f} GB does not fit",
            )
        )
    for dtype in (torch.float32, torch.float16):
        features1 = fmap1.permute(0, 2, 3, 1).to(dtype).contiguous()
        levels = [level.permute(0, 2, 3, 1).to(dtype).contiguous() for level in pooled_pyramid(fmap2, LEVELS)]
        moved = sum(t.numel() * t.element_size() for t in [features1, *levels]) + cells * (8 + LEVELS * 81 * 4)
        implementations = [("triton", partial(corr_ondemand, features1, levels, coords, RADIUS))]
        if cells <= 55 * 128:  # the reference samples (D x window) per cell: only at the small grid
            implementations.insert(0, ("reference", partial(corr_ondemand_ref, features1, levels, coords, RADIUS)))
        rows += measure("corr_ondemand", name, dtype, implementations, moved, device, bandwidth)
    flow = torch.randn(1, 2, height, width, device=device, generator=generator)
    for dtype in (torch.float32, torch.float16):
        up_mask = torch.randn(1, 576, height, width, device=device, generator=generator).to(dtype)
        moved = flow.numel() * 4 + up_mask.numel() * up_mask.element_size() + 2 * 64 * cells * 4
        rows += measure(
            "convex_upsample",
            name,
            dtype,
            [
                ("reference", partial(convex_upsample_ref, flow, up_mask)),
                ("triton", partial(convex_upsample, flow, up_mask)),
            ],
            moved,
            device,
            bandwidth,
        )

    return rows


def end_to_end_rows(device: torch.device) -> list[dict]:
    """RAFT-large, 12 iterations, Triton backend: the dense against the on-demand correlation at 1080p,
    and on-demand at 4K: latency and peak memory."""
    end_to_end = []
    from raft_engine import RAFT, FlowEngine, RAFTConfig

    model = RAFT(RAFTConfig.large()).eval()
    for size, modes in (((1088, 1920), ("volume", "ondemand")), ((2160, 3840), ("ondemand",))):
        images = torch.randint(0, 256, (2, 1, 3, *size), device=device, dtype=torch.uint8)
        for mode in modes:
            engine = FlowEngine(model, device=device, backend="triton", corr=mode)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            ms = bench_ms(partial(engine, images[0], images[1], iters=12), device)
            end_to_end.append(
                dict(
                    size=f"{size[0]}x{size[1]}",
                    corr=mode,
                    ms=ms,
                    peak_gb=torch.cuda.max_memory_allocated(device) / 1e9,
                )
            )
            del engine

    return end_to_end


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="a small grid only")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before raft_engine imports triton
    elif not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu --quick for the interpreter")

    grids = {"quick 16x20": (16, 20)} if args.quick else GRIDS
    bandwidth = copy_bandwidth(device)
    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    for name, (height, width) in grids.items():
        rows += grid_rows(name, height, width, device, generator, bandwidth)
    run_end_to_end = device.type == "cuda" and not args.skip_end_to_end and not args.quick
    end_to_end = end_to_end_rows(device) if run_end_to_end else []

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {device_name}; copy bandwidth {bandwidth:.0f} GB/s; torch {torch.__version__}")
    print(f"{'kernel':16s} {'grid':12s} {'dtype':8s} {'impl':10s} {'ms':>9s} {'GB/s':>8s} {'of copy':>8s}")
    for row in rows:
        if row["ms"] is None:
            print(f"{row['kernel']:16s} {row['grid']:12s} {row['note']}")
            continue
        print(
            f"{row['kernel']:16s} {row['grid']:12s} {row['dtype']:8s} {row['impl']:10s} {row['ms']:9.3f} "
            f"{row['gb_per_s']:8.1f} {row['of_copy']:8.3f}"
        )
    for row in end_to_end:
        print(
            f"end to end RAFT-large {row['size']} corr={row['corr']}: {row['ms']:.1f} ms, peak {row['peak_gb']:.2f} GB"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "copy_gb_per_s": bandwidth,
                    "torch": torch.__version__,
                    "command": " ".join(sys.argv),
                    "kernels": rows,
                    "end_to_end": end_to_end,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
