"""Benchmark RAFT configurations: `python bench.py --help`. The code lives in raft_engine.tools.benchmark,
so that the installed `raft-engine bench` runs the same thing."""

import sys

from raft_engine.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
