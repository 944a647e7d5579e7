"""The worker of a batch job: a Ray Data actor that builds its FlowEngine once and then runs shard after
shard, decoding each shard's frames itself, writing each pair's files and returning the pairs' statistics.
A shard that cannot be read comes back as an error row, not an exception: the job goes on."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from raft_engine.errors import RaftEngineError


class ShardWorker:
    """One per actor. weights: a checkpoint or preset; options: EngineOptions as a dict; iters, batch_size,
    bidirectional, warm_start: as `FlowEngine.sequence` takes them; writes: the kinds of file per pair;
    output: OUT. threads: torch's CPU threads (None: torch's default). compile_first: warm the compiled
    graph up on the first shard's size before its pairs. crash_marker: a test switch, the path of a file
    whose absence makes the worker exit in the middle of its first shard of at least 2 pairs, once (it
    creates the file first)."""

    def __init__(
        self,
        weights: str,
        options: dict[str, Any],
        iters: int,
        batch_size: int | None,
        bidirectional: bool,
        warm_start: bool,
        writes: tuple[str, ...],
        output: str,
        threads: int | None = None,
        crash_marker: str | None = None,
    ) -> None:
        import torch

        from raft_engine.runtime.engine import FlowEngine
        from raft_engine.runtime.options import EngineOptions
        from raft_engine.weights import load_model

        if threads:
            torch.set_num_threads(threads)
        self.engine = FlowEngine(load_model(weights), EngineOptions(**options))
        self.iters, self.batch_size = iters, batch_size
        self.bidirectional, self.warm_start = bidirectional, warm_start
        self.writes, self.output = writes, Path(output)
        self.crash_marker = crash_marker
        self.warmed: set[tuple[int, int]] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One shard (a batch of one row) -> one row: the shard, status "ok" or "error", the reason, the
        pairs' statistics (JSON), the node and process that ran it, when it started (Unix time) and the
        seconds it took."""
        import ray

        from raft_engine.distributed.clips import Shard

        shard = Shard(**{name: _item(batch[name][0]) for name in ("clip", "path", "kind", "start", "stop")})
        started, start = time.time(), time.perf_counter()
        try:
            pairs, status, reason = self._run(shard), "ok", ""
        except RaftEngineError as error:
            pairs, status, reason = [], "error", str(error)
        except OSError as error:  # a clip gone or unreadable since the job planned it, a full disk
            pairs, status, reason = [], "error", f"{error.strerror or error}: {error.filename or shard.path}"
        row = {
            **shard.row(),
            "status": status,
            "reason": reason,
            "pairs": _json(pairs),
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "started": started,
            "seconds": time.perf_counter() - start,
        }
        return {name: np.array([value]) for name, value in row.items()}

    def _run(self, shard: Any) -> list[dict[str, Any]]:
        from raft_engine.distributed.clips import shard_frames
        from raft_engine.distributed.results import pair_statistics, write_pair

        frames = list(shard_frames(shard))
        height, width = frames[0].shape[:2]
        if self.engine.compiled is not None and (height, width) not in self.warmed:
            self.warmed.add((height, width))
            self.engine.warmup(1, height, width, self.iters)
        results = self.engine.sequence(
            frames, iters=self.iters, warm_start=self.warm_start, batch_size=self.batch_size,
            bidirectional=self.bidirectional,
        )  # fmt: skip
        pairs = []
        for first, result in zip(shard.pairs, results, strict=True):
            write_pair(self.output, shard.clip, first, self.writes, result)
            pairs.append({"frame1": first, "frame2": first + 1, **pair_statistics(result)})
            if (
                self.crash_marker
                and len(shard.pairs) >= 2
                and first == shard.start
                and not Path(self.crash_marker).exists()
            ):
                Path(self.crash_marker).touch()
                os._exit(1)  # the test switch: a worker that dies with half its shard written
        return pairs


def _item(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _json(pairs: list[dict[str, Any]]) -> str:
    import json

    return json.dumps(pairs)
