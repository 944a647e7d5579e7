"""The `raft-engine` command line: one module per command (`flow`, `inspect`, `export`, `demo`, `batch`,
`serve`, `bench`, `presets`, `selftest`, `evaluate`, `train`), each declaring its options from the shared builders of
`options` and calling the library; `main` registers them and dispatches."""

from raft_engine.cli.main import main

__all__ = ["main"]
