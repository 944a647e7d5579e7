"""`python -m raft_engine.train ...`: the same as `raft-engine train ...` (raft_engine.cli.train)."""

import sys

from raft_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
