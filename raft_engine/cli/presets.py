"""`raft-engine presets`: the named weights, and whether each is in the cache."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    presets = commands.add_parser(
        "presets",
        help="list the named weights and whether they are cached",
        description="List the weights that --weights takes by name: the built-in model (in the package, offline) "
        "and the published checkpoints, whether each is in the cache, and where the cache is (RAFT_ENGINE_CACHE).",
    )
    presets.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from raft_engine.weights import PRESETS, cache_dir

    folder = cache_dir()
    print(f"{'builtin':22s} RAFT-small in package  this project's own, trained on generated scenes (offline)")
    for preset in PRESETS.values():
        cached = "cached" if (folder / preset.filename).is_file() else "not cached"
        print(f"{preset.name:22s} RAFT-{preset.variant:5s} {cached:10s} {preset.description}")
    print(f"cache: {folder} (RAFT_ENGINE_CACHE)")
