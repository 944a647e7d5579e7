"""The README's examples run as written, and CI runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from synthetic import synthetic_state_dict

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory, reference):
    """What the examples expect in their folder: two frames and a published-layout checkpoint."""
    folder = tmp_path_factory.mktemp("readme")
    Image.fromarray(reference["image1"]).save(folder / "frame1.png")
    Image.fromarray(reference["image2"]).save(folder / "frame2.png")
    state = {"module." + k: v for k, v in synthetic_state_dict("official_large").items()}
    torch.save(state, folder / "raft-things.pth")
    return folder


def _env() -> dict[str, str]:
    # The synthetic checkpoint's duplicate norms differ (see tests/data/README.md); real ones do not.
    return {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"}


def test_python_examples_run(example_dir):
    """The Python blocks run in order in one process, as a reader would paste them."""
    blocks = _blocks("python")
    assert len(blocks) >= 3, "README has fewer Python examples than expected"
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=example_dir,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "(1, 2, 128, 160)" in done.stdout.replace("torch.Size([", "(").replace("])", ")")
    assert (example_dir / "flow.flo").is_file()


def test_cli_examples_run(example_dir):
    script = Path(sys.executable).parent / "raft-engine"
    commands = [line for block in _blocks("sh") for line in block.splitlines() if line.startswith("raft-engine ")]
    assert commands, "README has no raft-engine command"
    for command in commands:
        args = command.split("#")[0].split()[1:]
        done = subprocess.run(
            [str(script), *args], cwd=example_dir, capture_output=True, text=True, env=_env(), timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert (example_dir / "flow.png").is_file()


def test_ci_runs_the_readme_test_command():
    (block,) = re.findall(r"```sh\n(.*?)```", _section("Tests"), flags=re.S)
    ci = (ROOT / ".ci" / "run").read_text()
    for command in block.strip().splitlines():
        assert command in ci, f"README test command {command!r} is not what .ci/run runs"
    for line in _blocks("sh")[0].splitlines():
        if line.startswith("pip install"):
            assert line.split("#")[0].strip() in ci, f"README set-up step {line!r} is not in .ci/run"
