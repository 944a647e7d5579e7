"""The public API is documented in one docstring style, Google's, so that the reference the docs site
renders from it reads well: every public name (each `__all__` of the modules the docs' hook lists as
PUBLIC_MODULES, and the public methods and properties of its classes) has a docstring, a callable's
`Args:` section names exactly its parameters, and no docstring uses another style's sections (NumPy's
underlined headings, Sphinx's `:param x:` fields)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _public_modules() -> tuple[str, ...]:
    """The modules whose `__all__` is the public API, as the docs' hook renders them (read, not imported)."""
    tree = ast.parse((ROOT / "docs" / "hooks" / "generate.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [
            "PUBLIC_MODULES"
        ]:
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("docs/hooks/generate.py defines no PUBLIC_MODULES")


SECTIONS = ("Args:", "Returns:", "Yields:", "Raises:", "Attributes:", "Examples:", "Example:", "Note:")
FOREIGN = re.compile(
    r"^\s*(Parameters|Returns|Yields|Raises|Attributes)\n\s*-{3,}\s*$|^\s*:(param|returns?|raises?|type)\b", re.M
)


def _public_objects():
    """(qualified name, object) for every public function, class, method and property."""
    seen = set()
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        yield module_name, module
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{module_name}.{name}", obj
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for attribute, member in vars(obj).items():
                    if attribute.startswith("_") and attribute != "__call__":
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if inspect.isfunction(member) or isinstance(member, property):
                        yield f"{module_name}.{name}.{attribute}", member


def _documented_args(doc: str) -> list[str] | None:
    """The names of the `Args:` section, None when there is none."""
    match = re.search(r"^([ \t]*)Args:\n((?:\1[ \t]+.*\n?|[ \t]*\n)*)", doc, re.M)
    if not match:
        return None
    indent = len(match.group(1))
    names = []
    for line in match.group(2).splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            break
        entry = re.match(r"\s*(\*{0,2}[A-Za-z_][A-Za-z0-9_]*)(?: \([^)]*\))?:", line)
        if entry and depth == min(len(x) - len(x.lstrip()) for x in match.group(2).splitlines() if x.strip()):
            names.append(entry.group(1))
    return names


def _parameters(function) -> list[str]:
    names = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name in ("self", "cls"):
            continue
        prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        names.append(prefix + parameter.name)
    return names


def _problems() -> list[str]:
    problems = []
    for name, obj in _public_objects():
        target = obj.fget if isinstance(obj, property) else obj
        doc = inspect.getdoc(target) if not isinstance(obj, property) else obj.__doc__
        if inspect.isclass(obj) and obj.__doc__ is None:
            doc = None
        if not doc or not doc.strip():
            problems.append(f"{name}: no docstring")
            continue
        doc = inspect.cleandoc(doc)
        if FOREIGN.search(doc):
            problems.append(f"{name}: a NumPy or Sphinx section; use Google's (Args:, Returns:, ...)")
        if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, BaseException)):
            function = obj.__init__ if inspect.isclass(obj) else obj
            if inspect.isclass(obj) and function is object.__init__:
                continue
            if inspect.isclass(obj) and "__init__" not in vars(obj) and not hasattr(obj, "__dataclass_fields__"):
                continue
            if inspect.isclass(obj) and hasattr(obj, "__dataclass_fields__"):
                continue  # a dataclass documents its fields under Attributes:
            if inspect.isclass(obj) and getattr(obj, "_is_protocol", False):
                continue  # a Protocol is not instantiated: its __init__ is typing's
            expected = _parameters(function)
            documented = _documented_args(doc)
            if expected and documented is None:
                problems.append(f"{name}: parameters {expected} but no Args: section")
            elif documented is not None and documented != expected:
                problems.append(f"{name}: Args: lists {documented}, the signature has {expected}")
    return problems


def test_the_public_api_has_google_style_docstrings():
    problems = _problems()
    assert not problems, f"{len(problems)} docstring problem(s):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        (
            "Do it.\n\nArgs:\n    a: the first.\n    b (int): the second,\n        continued.\n\nReturns:\n    x.",
            ["a", "b"],
        ),
        ("Do it.\n\nArgs:\n    *frames: any.\n    **changes: more.", ["*frames", "**changes"]),
        ("Do it.", None),
    ],
)
def test_the_checker_reads_args_sections(doc, names):
    assert _documented_args(doc) == names
