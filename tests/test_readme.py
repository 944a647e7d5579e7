"""The README's examples run as written and give the results they should, and CI runs the README's
test command and builds the documentation as the README says. (The documentation's own examples run in
tests/test_docs.py.)

The examples run on the CPU (see `_env`), and after the Python example the test records its results
(RECORD) for the checks. The one change the tests make to the example's code is the iteration count:
its `iters=12` becomes 6 (`_with_iters` checks that every count it meets is 12, so an edited README
fails here rather than running something else), since the published code's 6-iteration flow for these
weights and frames is in tests/data/raft_reference.npz (`official_large_flow`), an oracle for the result.
Calls that give no count (`raft-engine flow`) run the default 12 iterations.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine import FlowEngine, load_model
from raft_engine.io import flow_to_color, read_flo

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# Iterations each Python example runs with (see the docstring), in README order.
ITERS = {"python": (6,)}
# What the test records after each Python example, in the same process, to check afterwards.
RECORD = ("_seen = dict(flow=result.flow, flow_low=result.flow_low, colours=colours)",)
# Flows that should match (px, largest difference of a component; the flows reach 50 px). Measured on
# the CPU: FlowEngine against the published code 0.
EXACT = 1e-4


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _with_iters(code: str, iters: int, pattern: str = r"\biters=(\d+)") -> str:
    """`code` with each iteration count matched by `pattern` (all of them 12) replaced by `iters`."""
    counts = re.findall(pattern, code)
    assert counts and set(counts) == {"12"}, f"expected iteration counts of 12 to replace, found {counts}:\n{code}"
    return re.sub(pattern, lambda match: match.group(0).replace("12", str(iters)), code)


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
    # The examples run on the CPU, where the values they are checked against were measured: on a GPU,
    # PyTorch's default TF32 convolutions alone would move the flows past EXACT. The CUDA paths have
    # gpu-marked tests of their own (tests/test_compile.py, test_export.py, ...).
    return {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning", "CUDA_VISIBLE_DEVICES": ""}


def _close(actual, expected, atol: float = EXACT) -> None:
    """Flows (or uint8 colours) within `atol` of each other, compared in float64."""
    actual, expected = (torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (actual, expected))
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def test_python_examples_run(example_dir, reference):
    """The Python blocks run in order in one process, as a reader would paste them."""
    blocks = _blocks("python")
    assert len(blocks) == len(ITERS["python"]), "README's Python examples changed: update ITERS and RECORD"
    script = []
    for block, iters, record in zip(blocks, ITERS["python"], RECORD, strict=True):
        script += [_with_iters(block, iters), record.format(iters=iters)]
    script.append("import numpy\nnumpy.savez('seen.npz', **{k: numpy.asarray(v) for k, v in _seen.items()})")
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(script)],
        cwd=example_dir,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "(1, 2, 128, 160)" in done.stdout.replace("torch.Size([", "(").replace("])", ")")
    with np.load(example_dir / "seen.npz") as npz:
        seen = dict(npz)

    oracle = reference["official_large_flow"]
    _close(seen["flow"][0], oracle)
    _close(seen["flow_low"][0], reference["official_large_flow_low"])
    _close(read_flo(example_dir / "flow.flo"), oracle.transpose(1, 2, 0))
    assert seen["colours"].shape == (128, 160, 3) and seen["colours"].dtype == np.uint8


def _run_cli_examples(folder: Path) -> dict[str, str]:
    """Each `raft-engine` command of the README's shell blocks, run in `folder` -> its output by command."""
    script = Path(sys.executable).parent / "raft-engine"
    commands = [line for block in _blocks("sh") for line in block.splitlines() if line.startswith("raft-engine ")]
    assert commands, "README has no raft-engine command"
    printed = {}
    for command in commands:
        args = command.split("#")[0].split()[1:]
        done = subprocess.run([str(script), *args], cwd=folder, capture_output=True, text=True, env=_env(), timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        printed[command.split("#")[0].strip()] = done.stdout
    return printed


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_examples_run(example_dir, reference, official_large):
    printed = _run_cli_examples(example_dir)

    # `raft-engine demo` prints the error the README quotes, and writes what it says.
    (quoted,) = re.findall(r"([0-9.]+) px for the default pair", README)
    assert f"EPE {quoted} px" in printed["raft-engine demo"], printed["raft-engine demo"]
    demo = example_dir / "demo"
    estimated, truth = read_flo(demo / "flow.flo"), read_flo(demo / "truth.flo")
    assert estimated.shape == truth.shape == (384, 512, 2) and np.isfinite(estimated).all()
    assert f"{np.linalg.norm(estimated - truth, axis=2).mean():.2f}" == quoted
    assert Image.open(demo / "demo.png").size == (2 * 512 + 10, 2 * 384 + 50)

    # The built-in model's flow of the demo's frames, as .flo and as colours (the first example runs as
    # written after the demo); RAFT-large's from the checkpoint, 12 iterations.
    demo_frames = [np.asarray(Image.open(demo / f"frame{k}.png").convert("RGB")) for k in (1, 2)]
    flow = read_flo(example_dir / "flow.flo")
    builtin = FlowEngine(load_model("builtin"), device="cpu")(*demo_frames, iters=12)[0]
    _close(flow, builtin.permute(1, 2, 0))
    np.testing.assert_array_equal(_png(example_dir / "flow.png"), flow_to_color(flow))
    image1, image2 = reference["image1"], reference["image2"]
    things = FlowEngine(official_large, device="cpu")(image1, image2, iters=12)[0]
    # Colours within one level: flows 1e-4 px apart can round to neighbouring levels.
    _close(_png(example_dir / "flow-things.png"), flow_to_color(things), atol=1)


def test_ci_runs_the_readme_test_command():
    (block,) = re.findall(r"```sh\n(.*?)```", _section("Tests"), flags=re.S)
    ci = (ROOT / ".ci" / "run").read_text()
    for command in block.strip().splitlines():
        assert command in ci, f"README test command {command!r} is not what .ci/run runs"
    for line in _blocks("sh")[0].splitlines():
        if line.startswith("pip install"):
            assert line.split("#")[0].strip() in ci, f"README set-up step {line!r} is not in .ci/run"
    (docs,) = [block for block in _blocks("sh") if "mkdocs serve" in block]
    assert 'pip install -e ".[docs]"' in docs and 'pip install -e ".[docs]"' in ci
    assert "mkdocs build -f docs/mkdocs.yml --strict" in ci
