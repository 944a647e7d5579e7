"""`raft-engine`'s entry point: it registers each command's module and dispatches to it. A mistake in
what was asked (a `RaftEngineError`) is one line on stderr and exit status 1; anything else is a bug and
keeps its traceback."""

from __future__ import annotations

import argparse
import sys
import warnings

from raft_engine.cli import batch, bench, demo, evaluate, export, flow, inspect, presets, selftest, serve, train
from raft_engine.errors import RaftEngineError

# One module per command, in the order `raft-engine --help` lists them.
COMMANDS = (flow, inspect, export, demo, batch, serve, bench, presets, selftest, evaluate, train)

# Optional packages some commands need, and how to get them.
OPTIONAL = {
    "onnx": "pip install onnx onnxscript (the project's [onnx] extra)",
    "onnxscript": "pip install onnx onnxscript (the project's [onnx] extra)",
    "onnxruntime": "pip install onnxruntime-gpu (or the CPU-only onnxruntime)",
    "av": 'pip install av (PyAV, the project\'s [video] extra: pip install -e ".[video]")',
    "tritonclient": "pip install 'tritonclient[http]' (the project's [triton-client] extra)",
    "matplotlib": "pip install matplotlib (the project's [plot] extra)",
    "ray": 'pip install -e ".[ray]" (Ray Data and Ray Serve)',
    "pyarrow": 'pip install -e ".[ray]" (pyarrow, for the Parquet tables)',
    "fastapi": 'pip install -e ".[ray]" (Ray Serve\'s FastAPI)',
    "multipart": 'pip install -e ".[ray]" (python-multipart, for the server\'s forms)',
}


def build_parser() -> argparse.ArgumentParser:
    from raft_engine import __version__

    parser = argparse.ArgumentParser(prog="raft-engine", description="RAFT optical flow.")
    parser.add_argument("--version", action="version", version=f"raft-engine {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"raft-engine: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv[argv.index(args.command) + 1 :]  # what followed the command's name, for the records
    warnings.showwarning = _show_warning
    try:
        code = args.run(args)
    except ModuleNotFoundError as error:
        # An optional package that this command needs: one line that says how to install it. Any other
        # missing module is a broken installation (a bug), and keeps its traceback.
        if error.name in OPTIONAL:
            print(f"raft-engine: error: {args.command} needs {error.name}: {OPTIONAL[error.name]}", file=sys.stderr)
            return 1
        if not isinstance(error, RaftEngineError):
            raise
        print(f"raft-engine: error: {error}", file=sys.stderr)
        return 1
    except RaftEngineError as error:  # a mistake in what was asked, or a missing resource: one line
        print(f"raft-engine: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raft-engine: interrupted", file=sys.stderr)
        return 130
    return code or 0
