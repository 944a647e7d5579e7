"""Forward and backward flow in one call: how much faster than two `estimate` calls, and how good the
occlusion masks of the forward-backward check are.

    python benchmarks/bidirectional.py --json benchmarks/results/DATE-bidirectional-cpu.json   # the CPU
    python benchmarks/bidirectional.py --device cuda --json benchmarks/results/DATE-bidirectional-GPU.json

(a) Speed: `FlowEngine.bidirectional` against `estimate(image1, image2)` then `estimate(image2, image1)`,
    RAFT-large (random weights, seed 0: speed does not depend on them) and RAFT-small (built-in) at
    440x1024, 12 iterations, each timed --repeats times taking turns, the median of each; beside the
    measured ratio, the one the saved work predicts: FLOPs of two `estimate` over one `bidirectional`
    (torch.utils.flop_counter on the meta device: one feature-encoder pass of each image and one
    correlation product fewer).
(b) Masks: precision, recall and F1 of the occlusion masks of the built-in model over the held-out
    generated pairs (both directions, every pixel), against the exact occlusion of the scenes; beside
    them the trivial mask (everything occluded) and the check applied to the exact flows (its ceiling).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _flops(model, height: int, width: int, iters: int) -> tuple[float, float]:
    """FLOPs of one estimate and of one bidirectional call (dense correlation), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from raft_engine.model.config import RAFTConfig
    from raft_engine.model.raft import RAFT
    from raft_engine.runtime.inputs import Padder
    from raft_engine.runtime.parts import build_parts

    with torch.device("meta"):
        meta = RAFT(RAFTConfig.from_variant(model.config.variant)).eval()
    meta = build_parts(meta, "torch", torch.float32)["volume"]
    padded_h, padded_w = Padder(height, width).padded_size
    image = torch.empty(1, 3, padded_h, padded_w, device="meta")
    counts = []
    for run in (lambda: meta(image, image, iters=iters), lambda: meta.forward_bidirectional(image, image, iters)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        counts.append(float(counter.get_total_flops()))
    return counts[0], counts[1]


def _speed(model, label: str, device: str, height: int, width: int, iters: int, repeats: int) -> dict:
    from raft_engine import FlowEngine
    from raft_engine.runtime.devices import synchronize
    from raft_engine.scenes import generate_pair

    engine = FlowEngine(model, device=device, corr="volume")
    pair = generate_pair(11, height, width)

    def two_calls():
        engine.estimate(pair.image1, pair.image2, iters=iters)
        engine.estimate(pair.image2, pair.image1, iters=iters)

    def one_call():
        engine.bidirectional(pair.image1, pair.image2, iters=iters)

    timings: dict[str, list[float]] = {"two_estimates": [], "bidirectional": []}
    one_call(), two_calls()  # warm-up (kernels, allocator)
    for _ in range(repeats):
        for name, run in (("two_estimates", two_calls), ("bidirectional", one_call)):
            synchronize(torch.device(device))
            start = time.perf_counter()
            run()
            synchronize(torch.device(device))
            timings[name].append(time.perf_counter() - start)
    two, one = (statistics.median(timings[name]) for name in ("two_estimates", "bidirectional"))
    estimate_flops, bidirectional_flops = _flops(model, height, width, iters)
    return {
        "model": label,
        "size": [height, width],
        "iters": iters,
        "two_estimates_s": round(two, 3),
        "bidirectional_s": round(one, 3),
        "measured_speedup": round(two / one, 3),
        "gflop_two_estimates": round(2 * estimate_flops / 1e9, 1),
        "gflop_bidirectional": round(bidirectional_flops / 1e9, 1),
        "predicted_speedup": round(2 * estimate_flops / bidirectional_flops, 3),
        "runs": repeats,
    }


def _scores(found: np.ndarray, truth: np.ndarray) -> dict:
    true_positive = float((found & truth).sum())
    precision = true_positive / max(float(found.sum()), 1.0)
    recall = true_positive / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def _masks(device: str, seeds: list[int], height: int, width: int, iters: int) -> dict:
    from raft_engine import FlowEngine, forward_backward_check, load_model
    from raft_engine.scenes import generate_pair

    engine = FlowEngine(load_model("builtin"), device=device)
    found: dict[str, list[np.ndarray]] = {"builtin": [], "exact_flows": [], "everything": []}
    truths = []
    for seed in seeds:
        pair = generate_pair(seed, height, width)
        result = engine.bidirectional(pair.image1, pair.image2, iters=iters)
        found["builtin"] += [result.occlusion[0].cpu().numpy(), result.occlusion_backward[0].cpu().numpy()]
        flows = [torch.from_numpy(f).permute(2, 0, 1)[None] for f in (pair.flow, pair.flow_backward)]
        found["exact_flows"] += [
            forward_backward_check(*flows)[0].numpy(),
            forward_backward_check(*flows[::-1])[0].numpy(),
        ]
        truths += [pair.occlusion, pair.occlusion_backward]
        found["everything"] += [np.ones_like(pair.occlusion), np.ones_like(pair.occlusion)]
    truth = np.concatenate([t.ravel() for t in truths])
    scores = {name: _scores(np.concatenate([m.ravel() for m in masks]), truth) for name, masks in found.items()}
    return {"pairs": len(seeds), "size": [height, width], "iters": iters,
            "occluded_fraction": round(float(truth.mean()), 4), "scores": scores}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=440)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128x160, 2 iterations, 1 repeat, 2 held-out pairs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from raft_engine import RAFT, RAFTConfig, __version__, load_model
    from raft_engine.runtime.devices import device_name
    from raft_engine.training.loop import HELD_OUT

    if args.quick:
        args.height, args.width, args.iters, args.repeats = 128, 160, 2, 1
    torch.set_num_threads(torch.get_num_threads())
    torch.manual_seed(0)
    large = RAFT(RAFTConfig.large()).eval()
    speed = [
        _speed(large, "RAFT-large (random, seed 0)", args.device, args.height, args.width, args.iters, args.repeats),
        _speed(load_model("builtin"), "RAFT-small (builtin)", args.device, args.height, args.width, args.iters,
               args.repeats),
    ]  # fmt: skip
    for record in speed:
        print(json.dumps(record))
    seeds = HELD_OUT["seeds"][:2] if args.quick else HELD_OUT["seeds"]
    size = (128, 160) if args.quick else (HELD_OUT["height"], HELD_OUT["width"])
    masks = _masks(args.device, seeds, *size, HELD_OUT["iters"] if not args.quick else 2)
    print(json.dumps(masks))
    if args.json:
        record = {
            "raft_engine": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": device_name(torch.device(args.device)),
            "command": " ".join(["python", *sys.argv]),
            "speed": speed,
            "masks": masks,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
