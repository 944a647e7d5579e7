"""kernels/ and export/ install inside the package, in regular and editable installs alike, and the
package installs without network over an environment that already has its dependencies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from raft_engine import FlowEngine, load_model

ROOT = Path(__file__).resolve().parent.parent
# The discard port: nothing listens there, so anything that tries to download through it fails at once.
DEAD_PROXY = "http://127.0.0.1:9"


def _offline_env() -> dict[str, str]:
    """The environment of a machine without network: no pip configuration (this machine's points at local
    wheel folders and indexes), PIP_NO_INDEX, and proxies that lead nowhere."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_") and k.lower() != "no_proxy"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    env.update({name: DEAD_PROXY for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
    return env


def _run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once for the module, offline: no build isolation, so this environment's setuptools."""
    # From a clean copy of what the build reads: setuptools builds in the tree's build/ folder and puts what
    # an earlier build left there into the wheel (package data taken out of pyproject.toml stays in it).
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("raft_engine", "kernels", "export"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source],
        env=_offline_env(),
    )
    # Setuptools older than 70.1 builds wheels only with the `wheel` package installed beside it.
    hint = "building offline needs setuptools>=68 here, and the wheel package below setuptools 70.1"
    assert built.returncode == 0, f"{hint}\n{built.stderr[-3000:]}"
    (found,) = dist.glob("raft_engine-*.whl")
    return found


def test_wheel_maps_kernels_into_the_package(wheel):
    """What the wheel holds; test_offline_install_over_an_existing_torch installs and imports it."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"raft_engine/kernels/corr_lookup.py", "raft_engine/export/onnx_export.py", "raft_engine/py.typed"} <= names
    assert {"raft_engine/data/builtin-small.pth", "raft_engine/data/builtin-small.json"} <= names
    assert not any(name.startswith(("kernels/", "export/", "tests/")) for name in names)


def test_editable_install_resolves_to_the_repository():
    import raft_engine.export
    import raft_engine.kernels

    for package, folder in ((raft_engine.kernels, "kernels"), (raft_engine.export, "export")):
        location = Path(package.__file__).resolve()
        if location.is_relative_to(ROOT):
            assert location.parent == ROOT / folder
        else:  # a regular install of this checkout
            assert location.parent.name == folder and location.parent.parent.name == "raft_engine"


def _existing_environment(view: Path) -> list[Path]:
    """This environment as an "existing torch" (the GPU machine's Python): the folders its site adds to the
    path (site-packages and what their .pth files add), as folders of links without raft-engine itself.
    This environment has it (editable), and pip would answer "Requirement already satisfied" from there."""
    script = "import json, sys; print(json.dumps(sys.path))"
    bare = set(json.loads(_run([sys.executable, "-I", "-S", "-c", script]).stdout))  # the standard library
    added = [p for p in json.loads(_run([sys.executable, "-I", "-c", script]).stdout) if p not in bare]
    folders = []
    for index, site in enumerate(p for p in added if Path(p).is_dir()):
        folder = view / str(index)
        folder.mkdir(parents=True)
        for entry in Path(site).iterdir():
            if not entry.name.lower().replace("-", "_").startswith(("raft_engine", "__editable__")):
                (folder / entry.name).symlink_to(entry)
        folders.append(folder)
    assert folders, "no site-packages found"
    return folders


def _install_offline(python: Path, *args: str | Path) -> None:
    done = _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", *args], cwd=python.parent, env=_offline_env()
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # pip goes on from an index it cannot reach (through the dead proxy) after retries and a warning.
    assert "Retrying" not in output and "ProxyError" not in output, output


# Where the package, its kernels and export subpackages and the built-in weights come from (find_spec: without
# importing the kernels, which imports triton: 1.5 s), then, given a pair, its flow by the built-in model.
PROBE = """
import importlib, importlib.util as u, json, sys
import numpy as np
import raft_engine
from raft_engine.weights import builtin_path
found = {"version": raft_engine.__version__, "package": raft_engine.__file__, "builtin": str(builtin_path())}
found["subpackages"] = {name: importlib.import_module(f"raft_engine.{name}").__file__ for name in SUBPACKAGES}
found.update({name: u.find_spec(f"raft_engine.{name}").origin for name in ("kernels", "export")})
found["top_level"] = [str(u.find_spec(name)) for name in ("kernels", "export")]
if len(sys.argv) > 1:
    pair = np.load(sys.argv[1])
    engine = raft_engine.FlowEngine(raft_engine.load_model("builtin"), device="cpu", backend="torch")
    np.save(sys.argv[2], engine.estimate(pair[0], pair[1], iters=2).flow.numpy())
print(json.dumps(found))
"""


# The sub-packages of raft_engine/ (kernels and export are checked by find_spec above), each imported.
SUBPACKAGES = sorted(path.parent.name for path in (ROOT / "raft_engine").glob("*/__init__.py"))


def _probe(python: Path, cwd: Path, *pair_and_flow: Path) -> dict:
    # -I and a temporary working folder: the repository is not on the path, only what was installed.
    probe = PROBE.replace("SUBPACKAGES", repr(SUBPACKAGES))
    done = _run([python, "-I", "-c", probe, *pair_and_flow], cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_offline_install_over_an_existing_torch(wheel, tmp_path):
    """The README's "Installing without network": the wheel, then the checkout in editable mode, go into
    a fresh venv that sees this environment's torch, numpy, pillow, tqdm, triton (and pip, setuptools)
    through a .pth file, with no index and no way out."""
    # --without-pip: pip comes from the existing environment like torch does (ensurepip's pip, and on 3.11
    # its setuptools 65.5, cost 6 s and would hide the existing setuptools).
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "existing-environment.pth").write_text("".join(f"{p}\n" for p in _existing_environment(tmp_path / "env")))

    pair = tmp_path / "pair.npy"
    images = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    np.save(pair, images)
    expected = FlowEngine(load_model("builtin"), device="cpu", backend="torch").estimate(*images, iters=2).flow

    _install_offline(python, "--find-links", wheel.parent, "raft-engine")
    found = _probe(python, tmp_path, pair, tmp_path / "flow.npy")
    assert found["version"] == wheel.name.split("-")[1]  # from the installed metadata, not "0+unknown"
    for key in ("package", "kernels", "export", "builtin"):
        assert Path(found[key]).is_relative_to(site), (key, found[key])
    assert set(found["subpackages"]) == set(SUBPACKAGES) >= {"model", "runtime", "io", "scenes", "cli", "tools"}
    for name, origin in found["subpackages"].items():
        assert Path(origin) == site / "raft_engine" / name / "__init__.py", (name, origin)
    assert found["top_level"] == ["None", "None"]  # no top-level `kernels` or `export` to collide with others
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "flow.npy")), expected)

    # The editable install from the checkout needs pyproject.toml's setuptools where pip runs: the venv has
    # none of its own, so the existing environment's. Left out, with a warning, where that one is older
    # (61 to 67, with the wheel package, build the wheel above; torch 2.13 itself requires 77 or later).
    needed = int(re.search(r'requires = \["setuptools>=(\d+)', (ROOT / "pyproject.toml").read_text()).group(1))
    tools = _run([python, "-I", "-c", "import setuptools; print(setuptools.__version__)"])
    version = tools.stdout.split()[-1] if tools.returncode == 0 else "missing"
    if version == "missing" or int(version.split(".")[0]) < needed:
        warnings.warn(f"offline editable install not checked: setuptools {version} < {needed}", stacklevel=1)
        return
    _install_offline(python, "--no-build-isolation", "-e", ROOT)
    found = _probe(python, tmp_path)
    assert found["version"] == wheel.name.split("-")[1]
    assert Path(found["package"]) == ROOT / "raft_engine" / "__init__.py"
    assert Path(found["kernels"]) == ROOT / "kernels" / "__init__.py"
    assert Path(found["export"]) == ROOT / "export" / "__init__.py"
    assert Path(found["builtin"]) == ROOT / "raft_engine" / "data" / "builtin-small.pth"
    for name, origin in found["subpackages"].items():
        assert Path(origin) == ROOT / "raft_engine" / name / "__init__.py", (name, origin)
    assert not (site / "raft_engine").exists()  # the regular install was replaced, not shadowed
