"""`raft-engine selftest`: whether this machine runs every backend correctly, and how fast."""

from __future__ import annotations

import argparse
from typing import Any

from raft_engine.cli import options


def register(commands: Any) -> None:
    selftest = commands.add_parser(
        "selftest",
        parents=[options.options("device")],
        help="check that this machine runs every backend correctly, and how fast (the first command on a new GPU)",
        description="Print the environment, run every backend that applies (torch, Triton, compiled, CUDA graphs, "
        "ONNX Runtime) on a generated pair at two sizes, RAFT-large and RAFT-small, float32 and half precision, and "
        "compare each with the float32 torch reference. Exits 1 when a check fails; skipped checks do not fail.",
    )
    selftest.add_argument("--quick", action="store_true", help="small sizes, 4 iterations, fewer compiles")
    selftest.add_argument("--json", metavar="PATH", help="also write the environment and one record per check")
    selftest.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raft_engine.io.files import check_output_file
    from raft_engine.runtime.inputs import parse_device
    from raft_engine.tools.selftest import run as selftest

    if args.json:
        check_output_file(args.json, [".json"], what="--json")
    return selftest(parse_device(args.device), args.quick, args.json)
