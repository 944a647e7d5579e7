"""`raft-engine batch`: flow for whole collections of clips on a Ray cluster, or Ray on this machine,
sharded and resumable, with per-clip motion scores (see `raft_engine.distributed`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from raft_engine.cli import options
from raft_engine.errors import UsageError


def register(commands: Any) -> None:
    from raft_engine.distributed import DEFAULT_SHARD_FRAMES, WRITE_KINDS

    batch = commands.add_parser(
        "batch",
        parents=[options.options("weights", "iters", *options.ENGINE_OPTIONS)],
        help="flow of whole collections of clips on a Ray cluster: sharded, resumable, with motion scores",
        description="The flow of every consecutive pair of every clip (video files, folders of frames, or text "
        "files listing them), in shards of consecutive frames on an actor pool of workers; OUT/pairs.parquet "
        "and OUT/clips.parquet hold the motion statistics, OUT/manifest.jsonl the finished shards (the same "
        "command again resumes), OUT/errors.jsonl the clips that could not be read.",
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of frames, lists of them")
    batch.add_argument("-o", "--output", required=True, metavar="OUT", help="the output folder")
    batch.add_argument(
        "--shard-frames",
        type=int,
        default=DEFAULT_SHARD_FRAMES,
        metavar="K",
        help=f"pairs per shard, the unit of work (default {DEFAULT_SHARD_FRAMES}): frames 0..K, K..2K, ...",
    )
    batch.add_argument("--workers", type=int, default=1, metavar="N", help="workers in the pool (default 1)")
    batch.add_argument(
        "--gpus-per-worker", type=float, default=0, metavar="G", help="GPUs per worker, fractions allowed (default 0)"
    )
    batch.add_argument(
        "--threads-per-worker", type=int, default=None, metavar="T", help="CPU threads per worker (default 1)"
    )
    batch.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="join a running cluster: auto, HOST:PORT or ray://HOST:10001 (default: start Ray on this machine)",
    )
    batch.add_argument(
        "--write",
        default="",
        metavar="KINDS",
        help=f"files per pair, comma-separated: {', '.join(WRITE_KINDS)} (default: none, the statistics only)",
    )
    batch.add_argument(
        "--batch-size", type=int, default=None, metavar="N", help="consecutive pairs a worker runs together (default 4)"
    )
    batch.add_argument("--compile", action="store_true", help="torch.compile in each worker, before its first shard")
    batch.add_argument(
        "--bidirectional", action="store_true", help="both directions and the occlusion masks; the occluded fraction"
    )
    batch.add_argument(
        "--warm-start", action="store_true", help="start each pair from the previous one's (cold at each shard's start)"
    )
    batch.add_argument("--overwrite", action="store_true", help="start over where OUT holds another configuration")
    batch.add_argument(
        "--max-retries", type=int, default=3, metavar="N", help="runs again of a shard whose worker died (default 3)"
    )
    batch.add_argument(
        "--start-timeout",
        type=float,
        default=300,
        metavar="S",
        help="seconds to wait for the workers to start before failing (default 300)",
    )
    batch.set_defaults(run=run)


class _Progress:
    """A bar of pairs done on a terminal, with pairs/s and the time left; short log lines otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=total, desc="batch", unit="pair", file=sys.stderr)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done in (0, total) or now - self.last > 10:
            self.last = now
            print(f"batch: {done}/{total} pairs", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from raft_engine.distributed import flow_batch

    options.check_iters(args)
    if args.shard_frames < 2:
        raise UsageError(f"--shard-frames must be >= 2 (pairs per shard), got {args.shard_frames}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.warm_start and args.bidirectional:
        raise UsageError("--warm-start and --bidirectional do not go together: a warm start carries one direction")
    writes = tuple(kind.strip() for kind in args.write.split(",") if kind.strip())
    engine_options = options.engine_options(args, compile=args.compile)
    progress = _Progress()
    try:
        report = flow_batch(
            args.inputs, args.output, weights=options.weights(args), options=engine_options, iters=options.iters(args),
            batch_size=args.batch_size, shard_frames=args.shard_frames, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, threads_per_worker=args.threads_per_worker, address=args.address,
            writes=writes, bidirectional=args.bidirectional, warm_start=args.warm_start, overwrite=args.overwrite,
            max_retries=args.max_retries, start_timeout=args.start_timeout, progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    print(
        f"{report.pairs} pairs of {report.clips} clip(s) in {args.output} ({report.shards_run} shard(s) run, "
        f"{report.shards_skipped} done before; {len(report.nodes)} node(s); {report.seconds:.1f} s)"
    )
    for clip, reason in sorted(report.failed.items()):
        print(f"raft-engine: error: clip {clip}: {reason}", file=sys.stderr)
    return 0 if report.ok else 1
