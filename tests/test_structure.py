"""How the package is put together: the core needs no Triton, and imports point one way."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folders and the package names they install as (pyproject.toml's package-dir).
PACKAGES = {
    "raft_engine": ROOT / "raft_engine",
    "raft_engine.kernels": ROOT / "kernels",
    "raft_engine.export": ROOT / "export",
}


def run_without_triton(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\nsys.modules['triton'] = None  # as if triton were not installed\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )


def test_the_core_runs_without_triton():
    done = run_without_triton(
        "import numpy as np\n"
        "from raft_engine import FlowEngine, load_model\n"
        "engine = FlowEngine(load_model('builtin'), device='cpu', backend='torch')\n"
        "rng = np.random.default_rng(0)\n"
        "image1 = rng.integers(0, 256, (128, 136, 3), dtype=np.uint8)\n"
        "result = engine.estimate(image1, np.roll(image1, 3, axis=1), iters=2)\n"
        "print(tuple(result.flow.shape), bool(result.flow.isfinite().all()))\n"
        "print('triton' in sys.modules and sys.modules['triton'] is not None)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["(1, 2, 128, 136) True", "False"]


def test_batch_without_ray_is_one_line_naming_the_extra(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nsys.modules['ray'] = None  # as if Ray were not installed\n"
         "from raft_engine.cli import main\nsys.exit(main(sys.argv[1:]))", "batch", str(tmp_path), "-o",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"},
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr == 'raft-engine: error: batch jobs need Ray Data, which is not installed: pip install -e ".[ray]"\n'
    )
    assert not (tmp_path / "out").exists()


def test_the_triton_backend_without_triton_is_one_clear_error():
    done = run_without_triton(
        "from raft_engine import FlowEngine, load_model\n"
        "model = load_model('builtin')\n"
        "try:\n"
        "    FlowEngine(model, device='cpu', backend='triton')\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingDependency backend='triton' needs the triton package, which is not installed")


def _module_names() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if not name.startswith(
                tuple(f"{other}." for other in PACKAGES if other != package and other.startswith(package))
            ):
                modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top, inside functions or for type checking.

    An edge goes to the module an import statement names (`from raft_engine.kernels import corr_lookup`
    names raft_engine.kernels.corr_lookup; `from raft_engine import __version__` names raft_engine).
    """
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            graph[name].update(target for target in targets if target in modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["raft_engine.runtime.engine"] >= {
        "raft_engine.runtime.inputs",
        "raft_engine.model.raft",
    }  # the parser sees imports
    assert "raft_engine.kernels" in graph["raft_engine.runtime.parts"]  # and those inside functions
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_imports_neither_kernels_nor_export_at_the_top():
    core = [name for name in _module_names() if not name.startswith(("raft_engine.kernels", "raft_engine.export"))]
    for name in core:
        path = _module_names()[name]
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        named = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        named += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [m for m in named if m.split(".")[0] in ("triton", "onnx", "onnxruntime", "onnxscript")], name
        assert not [m for m in named if m.startswith(("raft_engine.kernels", "raft_engine.export"))], name


# ------------------------------------------------------------------------------------------------
# The layers: what each room of the package may import (the rooms of the package itself, counting imports
# inside functions and for type checking). Dependencies go down: the network's parts know nothing of the
# runtime, the runtime nothing of the tools or the command line, io and scenes nothing but the errors.
LEAVES = {"raft_engine.errors", "raft_engine.interpreter"}
ALLOWED = {
    "raft_engine.errors": set(),
    "raft_engine.interpreter": set(),
    "raft_engine.io": {"raft_engine.errors"},
    "raft_engine.model": {"raft_engine.errors"},
    "raft_engine.scenes": {"raft_engine.errors"},
    "raft_engine.weights": {"raft_engine.errors", "raft_engine.model"},
    "raft_engine.kernels": {"raft_engine.errors", "raft_engine.interpreter", "raft_engine.model"},
    "raft_engine.runtime": {
        "raft_engine.errors", "raft_engine.interpreter", "raft_engine.model", "raft_engine.kernels",
    },
    "raft_engine": {"raft_engine.errors", "raft_engine.model", "raft_engine.runtime", "raft_engine.weights"},
    "raft_engine.export": {
        "raft_engine", "raft_engine.errors", "raft_engine.io", "raft_engine.model", "raft_engine.runtime",
        "raft_engine.scenes", "raft_engine.weights",
    },
    "raft_engine.evaluation": {"raft_engine.errors", "raft_engine.io", "raft_engine.model", "raft_engine.runtime"},
    "raft_engine.training": {
        "raft_engine.errors", "raft_engine.io", "raft_engine.model", "raft_engine.runtime", "raft_engine.scenes",
        "raft_engine.weights",
    },
    "raft_engine.tools": {
        "raft_engine.errors", "raft_engine.interpreter", "raft_engine.io", "raft_engine.model", "raft_engine.runtime",
        "raft_engine.scenes", "raft_engine.weights", "raft_engine.export",
    },
    "raft_engine.distributed": {
        "raft_engine.errors", "raft_engine.io", "raft_engine.model", "raft_engine.runtime", "raft_engine.weights",
    },
    "raft_engine.serving": {
        "raft_engine", "raft_engine.errors", "raft_engine.io", "raft_engine.model", "raft_engine.runtime",
        "raft_engine.weights",
    },
    "raft_engine.cli": {
        "raft_engine", "raft_engine.distributed", "raft_engine.errors", "raft_engine.evaluation", "raft_engine.export",
        "raft_engine.io",
        "raft_engine.model", "raft_engine.runtime", "raft_engine.scenes", "raft_engine.serving", "raft_engine.tools",
        "raft_engine.training", "raft_engine.weights",
    },
    "raft_engine.train": {"raft_engine.cli"},  # the alias of `raft-engine train`
}  # fmt: skip
MAX_MODULE_LINES = 520  # about 500 lines besides docstrings: a module past it is split by concern


def room(module: str) -> str:
    """The room of a module: its sub-package (raft_engine.model), or itself for the top modules."""
    parts = module.split(".")
    return module if len(parts) <= 2 else ".".join(parts[:2])


def room_graph() -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    return rooms


def test_every_room_has_a_layer():
    assert set(room_graph()) == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_each_room_imports_only_what_its_layer_allows(name):
    imported = room_graph()[name]
    assert imported <= ALLOWED[name], f"{name} imports {sorted(imported - ALLOWED[name])}"


def test_the_layering_the_design_states():
    rooms = room_graph()
    upper = {
        "raft_engine.runtime",
        "raft_engine.tools",
        "raft_engine.cli",
        "raft_engine.training",
        "raft_engine.evaluation",
    }
    assert not rooms["raft_engine.model"] & upper
    assert not rooms["raft_engine.runtime"] & {"raft_engine.tools", "raft_engine.cli"}
    assert rooms["raft_engine.io"] <= LEAVES
    for leaf in LEAVES:
        assert not rooms[leaf]


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """A model module importing the runtime is caught (the check reads the files it is given)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from raft_engine.runtime.engine import FlowEngine\n")
    modules = {**_module_names(), "raft_engine.model.bad": bad}
    monkeypatch.setattr(sys.modules[__name__], "_module_names", lambda: modules)
    assert "raft_engine.runtime" in room_graph()["raft_engine.model"]


def _lines_besides_docstrings(source: str) -> int:
    """The module's lines less those of its docstrings (the module's, its classes' and functions'): the
    reference documentation lives in docstrings and should not push a module to be split."""
    tree = ast.parse(source)
    docstring_lines = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstring_lines += first.end_lineno - first.lineno + 1
    return source.count("\n") - docstring_lines


def test_modules_are_small_and_say_what_they_hold():
    for name, path in _module_names().items():
        source = path.read_text()
        lines = _lines_besides_docstrings(source)
        assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines besides docstrings"
        docstring = ast.get_docstring(ast.parse(source))
        assert docstring and len(docstring) > 20, f"{name} has no docstring saying what it holds"


def test_pyproject_lists_every_package():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    folders = {
        ".".join((package, *path.parent.relative_to(folder).parts))
        for package, folder in PACKAGES.items()
        for path in folder.rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert listed == folders
