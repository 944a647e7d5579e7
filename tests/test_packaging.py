"""kernels/ and export/ install inside the package, in regular and editable installs alike."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regular_install_maps_kernels_into_the_package(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("raft_engine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "raft_engine/kernels/corr_lookup.py" in names
    assert "raft_engine/export/onnx_export.py" in names
    assert {"raft_engine/data/builtin-small.pth", "raft_engine/data/builtin-small.json"} <= set(names)
    assert not any(name.startswith(("kernels/", "export/", "tests/")) for name in names)

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    probe = (
        "import raft_engine.kernels.corr_lookup as m, raft_engine.export.onnx_export, importlib.util as u; "
        "print(m.__file__); print(u.find_spec('kernels'), u.find_spec('export')); "
        "from raft_engine.weights import builtin_path, load_model; load_model('builtin'); print(builtin_path())"
    )
    # -I: isolated mode, neither the repository nor the editable install is on the path.
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    module_file, top_level, builtin = done.stdout.splitlines()
    assert Path(module_file).is_relative_to(target) and Path(builtin).is_relative_to(target)
    assert top_level == "None None"


def test_editable_install_resolves_to_the_repository():
    import raft_engine.export
    import raft_engine.kernels

    for package, folder in ((raft_engine.kernels, "kernels"), (raft_engine.export, "export")):
        location = Path(package.__file__).resolve()
        if location.is_relative_to(ROOT):
            assert location.parent == ROOT / folder
        else:  # a regular install of this checkout
            assert location.parent.name == folder and location.parent.parent.name == "raft_engine"
