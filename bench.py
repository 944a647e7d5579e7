"""`python bench.py ...`: the same as `raft-engine bench ...` (raft_engine.cli.bench)."""

import sys

from raft_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
