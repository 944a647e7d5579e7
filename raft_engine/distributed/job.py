"""`flow_batch`: the flow of whole collections of clips on a Ray cluster (or Ray on this machine), sharded,
resumable and idempotent, with per-pair and per-clip motion statistics.

The driver plans the shards, skips those the manifest records as finished (with their files in place),
and hands the rest to a Ray Data actor pool of `ShardWorker`s, one shard per block, so that each shard
streams back and is retried on its own: a worker that dies is replaced and its shard run again (at most
`max_retries` times); a clip that cannot be read is recorded in OUT/errors.jsonl and the job goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft_engine.distributed.clips import Clip, Shard, count_frames, find_clips, plan_shards
from raft_engine.distributed.results import (
    CLIPS_TABLE,
    ERRORS,
    PAIRS_TABLE,
    Manifest,
    check_writes,
    pair_files,
    write_tables,
)
from raft_engine.errors import ClusterError, InputError, MissingDependency, RaftEngineError
from raft_engine.io.files import check_output_folder
from raft_engine.runtime.options import EngineOptions

log = logging.getLogger(__name__)

DEFAULT_SHARD_FRAMES = 32


@dataclass(frozen=True)
class BatchReport:
    """What a batch job did.

    Attributes:
        clips: the clips of the job.
        pairs: their pairs in all.
        shards_run: the shards run by this call.
        shards_skipped: the shards a previous run had finished.
        failed: clip name -> the reason it failed (also in OUT/errors.jsonl).
        nodes: the Ray nodes that ran shards.
        seconds: the job's wall time.
    """

    clips: int
    pairs: int
    shards_run: int
    shards_skipped: int
    failed: dict[str, str]
    nodes: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether every clip succeeded."""
        return not self.failed


def _weights_identity(weights: str) -> dict[str, Any]:
    """A checkpoint file by its content's hash (the same weights under another name are the same job); a
    preset or "builtin" by name."""
    path = Path(weights)
    if not path.is_file():
        return {"name": weights}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "sha256": digest.hexdigest()}


def _check(
    shard_frames: int, workers: int, gpus_per_worker: float, threads: int | None, max_retries: int, start_timeout: float
) -> None:
    if isinstance(shard_frames, bool) or not isinstance(shard_frames, int) or shard_frames < 2:
        raise InputError(f"shard_frames must be an integer >= 2 (pairs per shard), got {shard_frames!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if not gpus_per_worker >= 0:
        raise InputError(f"gpus_per_worker must be >= 0 (fractions allowed), got {gpus_per_worker!r}")
    if threads is not None and threads < 1:
        raise InputError(f"threads_per_worker must be >= 1, got {threads!r}")
    if max_retries < 0:
        raise InputError(f"max_retries must be >= 0, got {max_retries!r}")
    if not start_timeout >= 1:
        raise InputError(f"start_timeout must be >= 1 second, got {start_timeout!r}")


def _require_ray() -> None:
    """Ray Data and pyarrow, before any work: without them, one error that names the extra."""
    for module, what in (("ray.data", "Ray Data"), ("pyarrow.parquet", "pyarrow")):
        try:
            __import__(module)
        except ModuleNotFoundError as error:
            raise MissingDependency(
                f'batch jobs need {what}, which is not installed: pip install -e ".[ray]"', name=error.name
            ) from error


def _connect(address: str | None) -> bool:
    """Ray for the job -> whether this call started it (and should stop it). Without an address, the Ray
    already running in this process, or a new one on this machine with its CPUs and GPUs."""
    import ray

    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        _reachable(address)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address and address not in ("auto", "local") and address != current:
            raise ClusterError(f"this process is connected to the Ray cluster at {current} already, not {address}")
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {str(error).splitlines()[0]}") from error
    return True


def _reachable(address: str) -> None:
    """A host:port that refuses connections fails in a second, not after Ray's minute of retries."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {reason}") from error


def _configure_ray_data(start_timeout: float) -> None:
    """Ray Data draws its own bars and logs its plans: the job shows its own progress instead; and it waits
    for the whole pool before the first shard, so that the first worker up does not take every shard while the
    others load their weights (set before any dataset is made: a dataset copies the context)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = max(1, int(start_timeout))
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.execution_options.verbose_progress = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _plan(
    clips: list[Clip], shard_frames: int, output: Path, done: dict[tuple, dict], writes: tuple[str, ...], both: bool
) -> tuple[list[Shard], dict[str, int], dict[str, str], list[dict]]:
    """-> (shards to run, frames per clip, clips that could not be read, finished entries kept)."""
    todo: list[Shard] = []
    frames: dict[str, int] = {}
    failed: dict[str, str] = {}
    kept: list[dict] = []
    for clip in clips:
        try:
            frames[clip.name] = count_frames(clip)
        except RaftEngineError as error:
            failed[clip.name] = str(error)
            continue
        if frames[clip.name] < 2:
            failed[clip.name] = f"{clip.path} holds {frames[clip.name]} frame(s); a clip needs at least 2"
            continue
        for shard in plan_shards(clip, frames[clip.name], shard_frames):
            entry = done.get((shard.clip, shard.path, shard.start, shard.stop))
            files = [file for first in shard.pairs for file in pair_files(output, shard.clip, first, writes, both)]
            if entry is not None and all(file.is_file() for file in files):
                kept.append(entry)
            else:
                todo.append(shard)
    return todo, frames, failed, kept


def flow_batch(
    inputs: list[str],
    output: str | Path,
    *,
    weights: str = "builtin",
    options: EngineOptions | None = None,
    iters: int = 12,
    batch_size: int | None = None,
    shard_frames: int = DEFAULT_SHARD_FRAMES,
    workers: int = 1,
    gpus_per_worker: float = 0,
    threads_per_worker: int | None = None,
    address: str | None = None,
    writes: tuple[str, ...] = (),
    bidirectional: bool = False,
    warm_start: bool = False,
    overwrite: bool = False,
    max_retries: int = 3,
    start_timeout: float = 300,
    progress: Callable[[int, int], None] | None = None,
    crash_marker: str | None = None,
) -> BatchReport:
    """Compute the flow of every consecutive pair of every clip, on a Ray cluster.

    Each clip is cut into shards of `shard_frames` pairs that overlap by one frame; an actor pool of
    `workers` runs them, each worker building its engine once and running `FlowEngine.sequence` over a
    shard. The files asked for are written atomically under `output/<clip>/`, the statistics into
    `output/pairs.parquet` and `output/clips.parquet`, and a manifest records each finished shard, so that
    the same call again skips them (docs/pages/guides/batch.md describes the outputs).

    Args:
        inputs: video files, folders of frames, or text files (.txt, .lst, .list) listing them; each is one clip.
        output: the output folder, created if missing.
        weights: the checkpoint or preset of `load_model` ("builtin" by default).
        options: the engine's settings; without GPUs per worker the device defaults to the CPU.
        iters: refinement iterations per pair.
        batch_size: consecutive pairs a worker runs together (`FlowEngine.sequence`'s, default 4).
        shard_frames: pairs per shard, at least 2.
        workers: actors in the pool.
        gpus_per_worker: GPUs per worker, fractions allowed; 0 runs on the CPU.
        threads_per_worker: CPU threads of each worker without a GPU (default 1).
        address: None to start Ray on this machine (or use the Ray this process runs); "auto", "HOST:PORT"
            or "ray://HOST:10001" to join a cluster.
        writes: the files per pair, kinds of `WRITE_KINDS` ("flo", "png", "kitti", "npz", "masks").
        bidirectional: both directions and the occlusion masks; adds the occluded fraction to pairs.parquet.
        warm_start: start each pair from the previous one's flow; cold again at each shard's first pair.
        overwrite: start over where `output` holds a job of another configuration (else it is refused).
        max_retries: how often a shard whose worker died runs again.
        start_timeout: seconds to wait for the pool's workers to start; a cluster too small for them fails
            then, naming its resources.
        progress: called with (pairs done, pairs in all) as shards finish.
        crash_marker: a test switch: the path of a file whose absence makes a worker exit in the middle of
            its first shard of at least 2 pairs, once (it creates the file first).

    Returns:
        What the job did: clips and pairs, shards run and skipped, the clips that failed, the nodes.

    Raises:
        InputError: a setting out of range, an unknown write kind, no inputs, two clips of one name, or an
            output folder holding another configuration without `overwrite`.
        MissingDependency: Ray or pyarrow is not installed.
        ClusterError: the cluster cannot be reached, or is too small for the pool.
    """
    started = time.perf_counter()
    _require_ray()
    _check(shard_frames, workers, gpus_per_worker, threads_per_worker, max_retries, start_timeout)
    writes = check_writes(writes, bidirectional)
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        _reachable(address)  # before any work: a wrong address fails at once
    options = options or EngineOptions()
    if gpus_per_worker == 0 and options.device is None:
        options = options.replace(device="cpu")  # a worker without a GPU must not take one by default
    clips = find_clips(inputs)
    # Absolute: the workers run in folders of their own, on this machine or another.
    out = check_output_folder(output, what="the output folder").absolute()
    config = {
        "weights": _weights_identity(weights), "options": options.to_dict(), "iters": iters,
        "shard_frames": shard_frames, "writes": list(writes), "bidirectional": bidirectional,
        "warm_start": warm_start,
    }  # fmt: skip
    manifest = Manifest(out)
    previous, entries = manifest.read()
    if previous is not None and previous != config:
        if not overwrite:
            changed = sorted(key for key in set(previous) | set(config) if previous.get(key) != config.get(key))
            raise InputError(
                f"{out} holds a job of another configuration ({', '.join(changed)} differ): give --overwrite to "
                "start it over, or another output folder"
            )
        _clear(out, entries)
        entries = []
    done = {(e["shard"]["clip"], e["shard"]["path"], e["shard"]["start"], e["shard"]["stop"]): e for e in entries}
    todo, frames, failed, kept = _plan(clips, shard_frames, out, done, writes, bidirectional)
    manifest.start(config, kept)
    skipped = len(kept)
    total = sum(len(shard.pairs) for shard in todo) + sum(len(e["pairs"]) for e in kept)
    finished = sum(len(e["pairs"]) for e in kept)
    nodes: set[str] = set()
    if progress:
        progress(finished, total)
    if todo:
        owns_ray = _connect(address)
        try:
            worker_options = dict(weights=weights, options=options.to_dict(), iters=iters, batch_size=batch_size,
                                  bidirectional=bidirectional, warm_start=warm_start, writes=writes, output=str(out),
                                  threads=threads_per_worker, crash_marker=crash_marker)  # fmt: skip
            for row in _run(
                todo, worker_options, workers, gpus_per_worker, threads_per_worker or 1, max_retries, start_timeout
            ):
                if row["status"] != "ok":
                    failed.setdefault(row["clip"], row["reason"])
                    continue
                shard = {name: row[name] for name in ("clip", "path", "kind", "start", "stop")}
                pairs = json.loads(row["pairs"])
                entry = {"shard": shard, "pairs": pairs, "node": row["node"], "pid": row["pid"],
                         "started": round(row["started"], 3), "seconds": round(row["seconds"], 3)}  # fmt: skip
                manifest.append(entry)
                kept.append(entry)
                nodes.add(row["node"])
                finished += len(pairs)
                if progress:
                    progress(finished, total)
        finally:
            if owns_ray:
                import ray

                ray.shutdown()
    _write_errors(out, failed)
    write_tables(out, kept, frames, bidirectional)
    return BatchReport(
        len(clips), finished, len(todo), skipped, failed, tuple(sorted(nodes)),
        time.perf_counter() - started,
    )  # fmt: skip


def _run(
    todo: list[Shard], worker_options: dict, workers: int, gpus: float, cpus: int, retries: int, start_timeout: float
):
    """The shards through an actor pool of ShardWorkers, at most two queued per worker -> their rows, as they
    finish."""
    import ray.data
    import ray.exceptions

    from raft_engine.distributed.worker import ShardWorker

    _configure_ray_data(start_timeout)
    rows = [shard.row() for shard in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one shard per block: retried alone
    with warnings.catch_warnings():
        # max_restarts and max_task_retries go through Ray's deprecated remote arguments: no named form yet.
        warnings.simplefilter("ignore")
        # Two shards per worker: the next one waits in the worker's queue while it runs one, so that it does
        # not idle between shards for the driver's round trip (the pool starts only once every worker is up,
        # and gives each shard to the least busy one).
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2)
        results = dataset.map_batches(
            ShardWorker, fn_constructor_kwargs=worker_options, compute=pool, batch_size=1, batch_format="numpy",
            num_cpus=cpus, num_gpus=gpus or None, max_restarts=retries, max_task_retries=retries,
        )  # fmt: skip
    try:
        for row in results.iter_rows():
            yield {name: value.item() if hasattr(value, "item") else value for name, value in row.items()}
    except ray.exceptions.GetTimeoutError as error:
        need = f"{gpus:g} GPU(s)" if gpus else f"{cpus} CPU(s)"
        raise ClusterError(
            f"the cluster did not start {workers} worker(s) of {need} each within {start_timeout:g} s: it has "
            f"{_resources()}; ask for fewer --workers or join a larger cluster"
        ) from error


def _resources() -> str:
    import ray

    total = ray.cluster_resources()
    return f"{total.get('CPU', 0):g} CPU(s) and {total.get('GPU', 0):g} GPU(s) on {len(ray.nodes())} node(s)"


def _write_errors(out: Path, failed: dict[str, str]) -> None:
    from raft_engine.io.files import write_atomically

    path = out / ERRORS
    if failed:
        write_atomically(path, "".join(json.dumps({"clip": c, "reason": r}) + "\n" for c, r in sorted(failed.items())))
    elif path.exists():
        path.unlink()


def _clear(out: Path, entries: list[dict]) -> None:
    """--overwrite: the previous job's own files (its clips' folders, tables, errors, manifest)."""
    for clip in {entry["shard"]["clip"] for entry in entries}:
        shutil.rmtree(out / clip, ignore_errors=True)
    for name in (PAIRS_TABLE, CLIPS_TABLE, ERRORS, "manifest.jsonl"):
        (out / name).unlink(missing_ok=True)


__all__ = ["DEFAULT_SHARD_FRAMES", "BatchReport", "flow_batch"]
