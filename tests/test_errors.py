"""One root for the errors raised on purpose, kept as the built-in exceptions callers catch."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import raft_engine.errors as errors
from raft_engine import RaftEngineError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*ROOT.glob("raft_engine/**/*.py"), *ROOT.glob("kernels/*.py"), *ROOT.glob("export/*.py")]
# Built-in exceptions that code raising on purpose must not raise bare: each has a class under the root.
BARE = {"ValueError", "TypeError", "OSError", "FileNotFoundError", "IsADirectoryError", "ImportError",
        "ModuleNotFoundError", "RuntimeError", "SystemExit", "Exception", "KeyError"}  # fmt: skip


def test_every_error_class_derives_from_the_root():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) == len(errors.__all__)
    for cls in classes:
        assert issubclass(cls, RaftEngineError), cls


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.InputError, ValueError),
        (errors.InputTypeError, TypeError),
        (errors.FileFormatError, ValueError),
        (errors.WeightsError, ValueError),
        (errors.PathError, OSError),
        (errors.MissingFileError, FileNotFoundError),
        (errors.MissingDependency, ModuleNotFoundError),
        (errors.DownloadError, OSError),
        (errors.ProviderError, OSError),
        (errors.ExportError, RuntimeError),
    ],
)
def test_errors_stay_the_builtin_exceptions_callers_catch(cls, builtin):
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("message")


def _bare_raises(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            if node.exc.func.id in BARE:
                found.append(f"{path.relative_to(root)}:{node.lineno} raises {node.exc.func.id}")
    return found


def test_no_module_raises_a_bare_builtin_exception():
    """Every error raised on purpose is one of raft_engine.errors' classes (AssertionError marks a bug)."""
    found = [line for path in SOURCES for line in _bare_raises(path)]
    assert not found, "\n".join(found)


def test_the_check_sees_a_bare_raise(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f(x):\n    if x:\n        raise ValueError('bad')\n    raise errors.InputError('ok')\n")
    assert _bare_raises(sample, tmp_path) == ["sample.py:3 raises ValueError"]
