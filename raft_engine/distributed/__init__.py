"""Flow for whole collections on a Ray cluster (`flow_batch`, `raft-engine batch`): clips cut into shards
of consecutive frames (`clips`), run by an actor pool of workers that build their engine once
(`worker`), resumable through a manifest, with per-pair and per-clip motion statistics (`results`).
Ray is an optional extra: `pip install -e ".[ray]"`."""

from raft_engine.distributed.job import DEFAULT_SHARD_FRAMES, BatchReport, flow_batch
from raft_engine.distributed.results import WRITE_KINDS

__all__ = ["DEFAULT_SHARD_FRAMES", "WRITE_KINDS", "BatchReport", "flow_batch"]
