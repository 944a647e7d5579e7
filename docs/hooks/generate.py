"""MkDocs hook: the pages that are generated from the code at build time, so that they cannot drift from
it (the command line from the parsers, the benchmark results from benchmarks/results), and the source
tree the API reference is read from."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# The API reference reads the package statically. pyproject installs export/ and kernels/ as
# raft_engine.export and raft_engine.kernels, which a static reader cannot follow: this folder of links
# shows it the package as it installs.
SOURCE = ROOT / "docs" / ".source"


def _link_source() -> None:
    package = SOURCE / "raft_engine"
    package.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name: entry for entry in (ROOT / "raft_engine").iterdir() if entry.name != "__pycache__"}
    wanted["export"], wanted["kernels"] = ROOT / "export", ROOT / "kernels"
    for link in package.iterdir():
        if link.name not in wanted or not link.is_symlink() or Path(os.readlink(link)) != wanted[link.name]:
            link.unlink()
    for name, target in wanted.items():
        if not (package / name).is_symlink():
            (package / name).symlink_to(target)


_link_source()  # at import, before mkdocstrings reads its paths

# The public API: each module's `__all__` (tests/test_docstrings.py checks the same modules' docstrings).
PUBLIC_MODULES = (
    "raft_engine",
    "raft_engine.io",
    "raft_engine.export",
    "raft_engine.distributed",
    "raft_engine.serving",
    "raft_engine.evaluation",
    "raft_engine.scenes",
    "raft_engine.errors",
    "raft_engine.kernels",
)


def _cli_markdown() -> str:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("COLUMNS", "110")  # argparse wraps its help to the terminal's width
    from raft_engine.cli.main import build_parser

    parser = build_parser()
    lines = [
        "# Command line",
        "",
        "Generated from the parsers of `raft-engine` when this site is built; `raft-engine COMMAND --help`",
        "prints the same. User mistakes print one line and exit with status 1.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for action in parser._actions:  # argparse has no public API for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                lines += [f"## `raft-engine {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _benchmarks_markdown() -> str:
    from raft_engine.tools.bench_report import render_markdown

    text = render_markdown(ROOT / "benchmarks" / "results")
    return text.replace(
        "Rendered by `python bench.py --render benchmarks/results`",
        "Rendered when this site is built (and by `python bench.py --render benchmarks/results`)",
    )


def _api_markdown() -> str:
    import importlib

    sys.path.insert(0, str(ROOT))
    lines = [
        "# Python API",
        "",
        "Every public name, module by module (each module's `__all__`), rendered from the docstrings when",
        "this site is built.",
        "",
    ]
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip()
        lines += [f"## `{module_name}`", "", summary, ""]
        for name in module.__all__:
            if name.startswith("__"):
                continue
            lines += [f"::: {module_name}.{name}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/cli.md", content=_cli_markdown()))
    files.append(File.generated(config, "reference/api.md", content=_api_markdown()))
    files.append(File.generated(config, "reference/benchmarks.md", content=_benchmarks_markdown()))
    return files
