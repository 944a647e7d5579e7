"""The `raft-engine` command line."""

from raft_engine.cli.flow import main

__all__ = ["main"]
