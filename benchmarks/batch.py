"""Batch jobs on Ray: how `flow_batch` scales with its workers, what a job costs against one process, and
what restarting the warm start at each shard's first pair costs in accuracy.

    python benchmarks/batch.py --json benchmarks/results/DATE-batch-cpu.json   # the documented run, 2 CPUs
    python benchmarks/batch.py --scaling-only --clips 32 --repeats 1 --json ...  # (a) on a longer job
    python benchmarks/batch.py --quick                                         # a smoke run: small, 1 repeat

(a) Scaling: pairs/s of a job over --clips generated clips of --frames frames with 1 and with 2 workers of one
    CPU thread each; and, without Ray, of 1 and 2 plain processes started for the same clips, on one thread
    each, running each whole clip through `FlowEngine.sequence` (2 processes: half the clips each), which
    is what one would do without a job and shows what the machine itself allows. Ray starts once
    beforehand on this machine (--cpus CPUs), as a cluster is already running when a job is submitted;
    each wall time counts the start of the workers or processes (importing torch, loading the weights),
    their work, and for a job its tables. The runs take
    turns, --repeats times, and each figure is the median. ratio: 2-worker pairs/s over 1-worker pairs/s;
    beside it the same from the seconds the workers spent in their shards (the manifest's), without the
    start. overhead: the 1-worker job's wall time over the 1 process's, minus 1. wait: the mean time a
    worker spends between the end of one shard and the start of its next (the manifest's start times).
(b) Warm start: the mean end-point error against the exact flow of a job with --warm-start (cold at each
    shard's first pair, --shard-frames pairs per shard), of one process warm-starting over the whole clip,
    and of cold starts, on the same held-out generated clips with the built-in model; and over the pairs
    where the job restarts cold, the two warm EPEs.

On a machine with N GPUs the same job is, for example:

    raft-engine batch clips.txt -o OUT --weights raft-things.pth --workers N --gpus-per-worker 1 --compile
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _write_clips(root: Path, clips: int, frames: int, height: int, width: int, first_seed: int) -> list:
    """Folders of PNG frames (lossless, so the job reads exactly the generated frames) -> the sequences."""
    from raft_engine.scenes import generate_sequence

    sequences = []
    for k in range(clips):
        sequence = generate_sequence(first_seed + k, frames=frames, height=height, width=width)
        folder = root / f"clip{k}"
        folder.mkdir()
        for t, frame in enumerate(sequence.frames):
            Image.fromarray(frame).save(folder / f"{t:04d}.png")
        sequences.append(sequence)
    (root / "clips.txt").write_text("".join(f"clip{k}\n" for k in range(clips)))
    return sequences


def _job(root: Path, name: str, **settings) -> tuple[float, int, float, float]:
    """One job into a fresh folder -> (wall seconds, pairs, the seconds of its shards added up, the mean
    seconds a worker waited between the end of one shard and the start of its next)."""
    from raft_engine.distributed import flow_batch

    out = root / name
    started = time.perf_counter()
    report = flow_batch([str(root / "clips.txt")], out, **settings)
    wall = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"the job failed: {report.failed}")
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()[1:]]
    waits = []
    for pid in {entry["pid"] for entry in entries}:
        mine = sorted((entry["started"], entry["seconds"]) for entry in entries if entry["pid"] == pid)
        waits += [after[0] - (before[0] + before[1]) for before, after in itertools.pairwise(mine)]
    return wall, report.pairs, sum(entry["seconds"] for entry in entries), float(np.mean(waits)) if waits else 0.0


def _process(frames_of_clips: list[list[np.ndarray]], iters: int) -> tuple[float, int]:
    """A plain process's share of the clips, on one thread: each whole clip through FlowEngine.sequence, as
    one would run them without a job -> (its own seconds, pairs)."""
    torch.set_num_threads(1)
    from raft_engine import FlowEngine, load_model

    started = time.perf_counter()
    engine = FlowEngine(load_model("builtin"), device="cpu")
    pairs = 0
    for frames in frames_of_clips:
        pairs += sum(1 for _ in engine.sequence(frames, iters=iters))
    return time.perf_counter() - started, pairs


def _processes(sequences: list, count: int, iters: int) -> tuple[float, int, float, float]:
    """The job's work split by clips over `count` plain processes started for it (no Ray) -> (wall seconds
    from their start to the last one's end, pairs, the processes' own seconds added up)."""
    context = multiprocessing.get_context("spawn")
    shares = [[list(sequence.frames) for sequence in sequences[k::count]] for k in range(count)]
    started = time.perf_counter()
    with context.Pool(count) as pool:
        done = pool.starmap(_process, [(share, iters) for share in shares])
    return time.perf_counter() - started, sum(pairs for _, pairs in done), sum(seconds for seconds, _ in done), 0.0


def scaling(root: Path, args: argparse.Namespace) -> dict:
    sequences = _write_clips(root, args.clips, args.frames, args.height, args.width, first_seed=0)
    settings = dict(iters=args.iters, shard_frames=args.shard_frames, threads_per_worker=1)
    runs: dict[str, list] = {name: [] for name in ("processes_1", "processes_2", "workers_1", "workers_2")}
    for repeat in range(args.repeats):
        for count in (1, 2):
            runs[f"processes_{count}"].append(_processes(sequences, count, args.iters))
        for workers in (1, 2):
            runs[f"workers_{workers}"].append(_job(root, f"w{workers}-{repeat}", workers=workers, **settings))
        print(f"scaling repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {run[-1][0]:.1f} s" for name, run in runs.items()), file=sys.stderr)  # fmt: skip
    pairs = {run[1] for done in runs.values() for run in done}
    if len(pairs) != 1:
        raise SystemExit(f"the runs did different numbers of pairs: {pairs}")
    (pairs,) = pairs
    seconds = {name: statistics.median(run[0] for run in done) for name, done in runs.items()}
    working = {name: statistics.median(run[2] for run in done) for name, done in runs.items()}
    waits = {name: statistics.median(run[3] for run in runs[name]) for name in ("workers_1", "workers_2")}
    rate = {name: pairs / value for name, value in seconds.items()}
    return {
        "clips": args.clips, "frames_per_clip": args.frames, "pairs": pairs, "size": [args.height, args.width],
        "iters": args.iters, "shard_frames": args.shard_frames, "model": "builtin", "threads_per_worker": 1,
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
        "seconds_working": {name: round(value, 2) for name, value in working.items()},
        "pairs_per_s": {name: round(value, 3) for name, value in rate.items()},
        "ratio_2_over_1_workers": round(rate["workers_2"] / rate["workers_1"], 3),
        "ratio_2_over_1_plain_processes": round(rate["processes_2"] / rate["processes_1"], 3),
        "ratio_2_over_1_workers_working": round(2 * working["workers_1"] / working["workers_2"], 3),
        "overhead_1_worker_over_1_process": round(seconds["workers_1"] / seconds["processes_1"] - 1, 3),
        "worker_wait_between_shards_s": {name: round(value, 3) for name, value in waits.items()},
        "runs": {name: [round(run[0], 2) for run in done] for name, done in runs.items()},
    }  # fmt: skip


def warm_start_cost(root: Path, args: argparse.Namespace) -> dict:
    from raft_engine import FlowEngine, load_model
    from raft_engine.evaluation.metrics import end_point_error
    from raft_engine.io import read_flo

    sequences = _write_clips(root, args.warm_clips, args.warm_frames, args.warm_height, args.warm_width, first_seed=0)
    _job(root, "warm", iters=args.iters, shard_frames=args.shard_frames, workers=2, threads_per_worker=1,
         warm_start=True, writes=("flo",))  # fmt: skip
    engine = FlowEngine(load_model("builtin"), device="cpu")
    errors: dict[str, list[float]] = {"job_warm": [], "one_process_warm": [], "cold": []}
    restarts: dict[str, list[float]] = {"job_warm": [], "one_process_warm": []}
    for k, sequence in enumerate(sequences):
        frames = list(sequence.frames)
        warm = list(engine.sequence(frames, iters=args.iters, warm_start=True))
        cold = list(engine.sequence(frames, iters=args.iters, warm_start=False))
        for t, truth in enumerate(sequence.flows):
            job = read_flo(root / "warm" / f"clip{k}" / f"{t:06d}.flo")
            pair = {"job_warm": job, "one_process_warm": warm[t].flow, "cold": cold[t].flow}
            for name, flow in pair.items():
                if not isinstance(flow, np.ndarray):
                    flow = flow.reshape(2, *truth.shape[:2]).permute(1, 2, 0).numpy()
                array = flow
                errors[name].append(float(end_point_error(array, truth).mean()))
            if t > 0 and t % args.shard_frames == 0:  # a shard's first pair: the job starts it cold
                for name in restarts:
                    restarts[name].append(errors[name][-1])
    mean = {name: round(float(np.mean(values)), 4) for name, values in errors.items()}
    return {
        "clips": args.warm_clips, "frames_per_clip": args.warm_frames, "size": [args.warm_height, args.warm_width],
        "iters": args.iters, "shard_frames": args.shard_frames, "model": "builtin",
        "seeds": list(range(args.warm_clips)),
        "epe": mean,
        "epe_cost_of_shards": round(mean["job_warm"] - mean["one_process_warm"], 4),
        "restarted_pairs": len(restarts["job_warm"]),
        "epe_at_restarted_pairs": {name: round(float(np.mean(values)), 4) for name, values in restarts.items()},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--clips", type=int, default=8, help="clips in (a); (b) takes --warm-clips")
    parser.add_argument("--warm-clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17, help="frames per clip in (a)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--warm-frames", type=int, default=17, help="frames per clip in (b)")
    parser.add_argument("--warm-height", type=int, default=384)
    parser.add_argument("--warm-width", type=int, default=512)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--shard-frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scaling-only", action="store_true", help="(a) only, for a longer job: more --clips")
    parser.add_argument("--quick", action="store_true", help="2 clips of 5 frames at 128x160, 2 iterations, 1 run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.clips = args.warm_clips = 2
        args.frames, args.warm_frames, args.iters, args.repeats, args.shard_frames = 5, 5, 2, 1, 2
        args.height = args.warm_height = 128
        args.width = args.warm_width = 160

    import ray

    from raft_engine import __version__
    from raft_engine.runtime.devices import device_name

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a Ray on this machine only, for the benchmark
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "a").mkdir()
            (Path(scratch) / "b").mkdir()
            record = {"scaling": scaling(Path(scratch) / "a", args)}
            if not args.scaling_only:
                record["warm_start"] = warm_start_cost(Path(scratch) / "b", args)
    finally:
        ray.shutdown()
    record = {
        "raft_engine": __version__, "torch": torch.__version__, "ray": ray.__version__,
        "python": platform.python_version(), "device": device_name(torch.device("cpu")),
        "cpus": args.cpus, "command": " ".join(["python", *sys.argv]), **record,
    }  # fmt: skip
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
