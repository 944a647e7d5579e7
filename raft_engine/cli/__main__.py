"""`python -m raft_engine.cli`: the `raft-engine` command."""

import sys

from raft_engine.cli import main

sys.exit(main())
