"""Sequences: what encoding each frame once and warm start buy, measured on generated clips with exact flow.

    python benchmarks/sequence.py                          # the documented run: CPU, 436x1024, RAFT-large and -small
    python benchmarks/sequence.py --device cuda --compile  # the same on a GPU, compiled (one graph per shape)
    python benchmarks/sequence.py --quick                  # a smoke run: 128x160, 3 frames

(a) Encoder reuse: pairs/s of `FlowEngine.sequence(warm_start=False)` against `estimate` pair by pair,
    both at 12 iterations on the same frames, with the largest relative difference of their flows.
    Beside it, the gain the saved feature-encoder pass predicts: FLOPs of a pair's forward over the
    same without one of its two feature-encoder passes (counted with torch.utils.flop_counter).
(b) Warm start: mean end-point error against the exact flow, cold and warm, at each of --iters, on
    --clips generated sequences; the fewest iterations whose warm EPE is no worse than cold at 12,
    and pairs/s of the warm sequence there against pairwise cold 12. EPE needs trained weights: the
    built-in RAFT-small, and RAFT-large only with --large-weights (a published checkpoint); random
    RAFT-large weights are timed only.

Timings: wall clock over all pairs of a clip after one warm-up pair (CUDA synchronised), the best of
--repeats runs of each, the runs compared taking turns, so that they see the same frames and, on a
shared machine, the same slow spells.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raft_engine import RAFT, FlowEngine, RAFTConfig, load_model
from raft_engine.model.raft import normalize_images
from raft_engine.model.warm_start import forward_interpolate
from raft_engine.runtime.inputs import Padder
from raft_engine.scenes import generate_sequence


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pairwise(engine: FlowEngine, frames, iters: int, warm_start: bool = False) -> list:
    results: list = []
    for image1, image2 in itertools.pairwise(frames):
        flow_init = forward_interpolate(results[-1].flow_low) if warm_start and results else None
        results.append(engine.estimate(image1, image2, iters=iters, flow_init=flow_init))
    return results


def best_of(runs: dict, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Run each of `runs` (name -> callable) `repeats` times, taking turns so that a slow spell of a
    shared machine hits them alike -> (the results of each, its shortest time in seconds)."""
    results, seconds = {}, {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            results[name] = run()
            _sync(device)
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return results, seconds


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def epe(results, flows) -> float:
    """Mean end-point error over all pixels of all pairs."""
    errors = [
        np.linalg.norm(r.flow[0].permute(1, 2, 0).cpu().numpy() - f, axis=2).mean()
        for r, f in zip(results, flows, strict=True)
    ]
    return float(np.mean(errors))


def encoder_share(model: RAFT, height: int, width: int, iters: int) -> tuple[float, float]:
    """GFLOP of one feature-encoder pass and of a pair's forward at `iters`, at the padded size."""
    from torch.utils.flop_counter import FlopCounterMode

    padded_h, padded_w = Padder(height, width).padded_size
    image = torch.zeros(1, 3, padded_h, padded_w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.fnet(normalize_images(image))
    fnet = counter.get_total_flops() / 1e9
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image, image, iters=iters)
    return fnet, counter.get_total_flops() / 1e9


def measure_reuse(name, model, clip, args, device) -> dict:
    """(a): sequence(warm_start=False) against estimate pair by pair, at 12 iterations."""
    engine = FlowEngine(model, device=device, compile=args.compile)
    frames = clip.frames
    engine.estimate(frames[0], frames[1], iters=12)  # warm-up (compiles the pair graph)
    if args.compile or device.type == "cuda":  # and the sequence's graphs; on the CPU eagerly, no need
        list(engine.sequence(frames, iters=12, batch_size=args.batch_size))
    pairs = len(frames) - 1
    runs = {
        "pairwise": lambda: pairwise(engine, frames, 12),
        "sequence": lambda: list(engine.sequence(frames, iters=12, batch_size=args.batch_size)),
    }
    outputs, seconds = best_of(runs, args.repeats, device)
    reference, results = outputs["pairwise"], outputs["sequence"]
    pairwise_s, sequence_s = seconds["pairwise"], seconds["sequence"]
    fnet, total = encoder_share(model, args.height, args.width, 12)
    record = dict(
        model=name,
        pairs=pairs,
        pairwise_pairs_per_s=pairs / pairwise_s,
        sequence_pairs_per_s=pairs / sequence_s,
        speedup=pairwise_s / sequence_s,
        predicted_speedup=total / (total - fnet),
        fnet_gflop=fnet,
        pair_gflop=total,
        max_relative_difference=max(relative(r.flow, e.flow) for r, e in zip(results, reference, strict=True)),
    )
    print(
        f"(a) {name}: pairwise {record['pairwise_pairs_per_s']:.3f} pairs/s, sequence "
        f"{record['sequence_pairs_per_s']:.3f} pairs/s: x{record['speedup']:.3f} (FLOPs predict "
        f"x{record['predicted_speedup']:.3f}: encoder {fnet:.1f} of {total:.1f} GFLOP per pair); largest relative "
        f"difference {record['max_relative_difference']:.1e}",
        flush=True,
    )
    return record


def measure_warm(name, model, clips, args, device) -> dict:
    """(b): EPE cold and warm at each iteration count; the fewest warm iterations no worse than cold 12,
    and its pairs/s against pairwise cold 12."""
    engine = FlowEngine(model, device=device, compile=args.compile)
    table = {}
    for iters in sorted(set(args.iters) | {12}):
        row = {}
        for mode, warm in (("cold", False), ("warm", True)):
            results = [
                list(engine.sequence(c.frames, iters=iters, warm_start=warm, batch_size=args.batch_size)) for c in clips
            ]
            row[mode] = float(np.mean([epe(r, c.flows) for r, c in zip(results, clips, strict=True)]))
            # Pairs 1.. only: the first pair of a clip starts cold either way.
            row[f"{mode}_after_first"] = float(
                np.mean([epe(r[1:], c.flows[1:]) for r, c in zip(results, clips, strict=True)])
            )
        table[iters] = row
        print(f"(b) {name} {iters:2d} iterations: EPE cold {row['cold']:.3f}, warm {row['warm']:.3f} px", flush=True)
    target = table[12]["cold"]
    enough = [iters for iters in sorted(table) if table[iters]["warm"] <= target]
    record: dict = dict(model=name, epe=table, cold12_epe=target, fewest_warm_iters=enough[0] if enough else None)
    if enough:
        frames = clips[0].frames
        pairs = len(frames) - 1
        engine.estimate(frames[0], frames[1], iters=12)  # warm-up
        runs = {
            "cold": lambda: pairwise(engine, frames, 12),
            "warm": lambda: list(engine.sequence(frames, iters=enough[0], warm_start=True, batch_size=args.batch_size)),
        }
        _, seconds = best_of(runs, args.repeats, device)
        cold_s, warm_s = seconds["cold"], seconds["warm"]
        record.update(
            pairwise_cold12_pairs_per_s=pairs / cold_s, warm_pairs_per_s=pairs / warm_s, speedup=cold_s / warm_s
        )
        print(
            f"(b) {name}: warm {enough[0]} iterations (EPE {table[enough[0]]['warm']:.3f} <= cold 12 {target:.3f}): "
            f"{pairs / warm_s:.3f} pairs/s against pairwise cold 12 {pairs / cold_s:.3f}: x{cold_s / warm_s:.2f}",
            flush=True,
        )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="FlowEngine(compile=True)")
    parser.add_argument("--height", type=int, default=436)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=4, help="frames per clip for (a) (default 4: 3 pairs)")
    parser.add_argument("--clips", type=int, default=2, help="generated clips for (b) (default 2)")
    parser.add_argument("--clip-frames", type=int, default=6, help="frames per clip for (b) (default 6)")
    parser.add_argument("--iters", type=int, nargs="+", default=[4, 6, 8, 12], help="(b)'s iteration counts")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each, taking turns; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=["large", "small"], choices=["large", "small"])
    parser.add_argument("--large-weights", help="a RAFT-large checkpoint, for (b) with RAFT-large")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reuse", "warm"])
    parser.add_argument("--quick", action="store_true", help="128x160, 3 frames, 1 clip: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the records")
    args = parser.parse_args(argv)
    if args.quick:
        args.height, args.width, args.frames, args.clips, args.clip_frames = 128, 160, 3, 1, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"{args.height}x{args.width}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"compile={args.compile}, batch_size={args.batch_size}; {platform.processor() or platform.machine()}",
        flush=True,
    )
    torch.manual_seed(0)
    models = {
        "large": load_model(args.large_weights) if args.large_weights else RAFT(RAFTConfig.large()).eval(),
        "small": load_model("builtin"),
    }
    trained = {"large": args.large_weights is not None, "small": True}
    # Seeds below 1,000,000 are held out from the built-in model's training.
    reuse_clip = generate_sequence(100, frames=args.frames, height=args.height, width=args.width)
    warm_clips = [generate_sequence(200 + k, args.clip_frames, args.height, args.width) for k in range(args.clips)]
    records: dict = {"command": " ".join(sys.argv), "height": args.height, "width": args.width, "device": str(device)}
    for name in args.models:
        variant = f"RAFT-{name}" + ("" if trained[name] else " (random weights)")
        if "reuse" not in args.skip:
            records.setdefault("reuse", []).append(measure_reuse(variant, models[name], reuse_clip, args, device))
        if "warm" not in args.skip and trained[name]:
            records.setdefault("warm", []).append(measure_warm(variant, models[name], warm_clips, args, device))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
