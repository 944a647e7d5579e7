"""The documentation site: every example of its pages runs, the site builds in MkDocs' strict mode, and a
built page renders to something a reader sees.

What runs: each page's Python blocks (```python), in order, in one process, and each `raft-engine`
command of its shell blocks (```sh, ```bash), in a folder holding what the examples name (frames, a
checkpoint in the published layout, a video, a list of clips). Shell blocks' set-up lines (pip, venv,
pytest, mkdocs) are what .ci/run and tests/test_packaging.py do. Blocks that need what a test machine
lacks (a GPU, Docker, a dataset, a server left running) are fenced ```text; NOT_RUN lists why, page by
page, and a test checks that no other page has them. The batch jobs' and the flow server's Python
examples run in tests/test_batch.py and tests/test_serving.py, where a Ray is up.

Iterations: every `iters=12` / `--iters 12` runs with ITERS of its page: 2 where the example compiles
(compiling unrolls every iteration) or exports only to show the command; 6 elsewhere, where the published
code's 6-iteration flow is the oracle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine.io import flow_to_color, read_flo

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "pages"
# Pages whose examples run elsewhere, with a Ray up: the module that runs them.
RUN_ELSEWHERE = {"guides/batch.md": "tests/test_batch.py", "guides/serving.md": "tests/test_serving.py"}
# Pages with ```text examples that cannot run in a test, and why.
NOT_RUN = {
    "guides/batch.md": "the command for N GPUs",
    "guides/serving.md": "a server left running; two replicas of one GPU each",
    "guides/triton-server.md": "Docker and the tritonserver container; a client of that server",
    "guides/evaluation.md": "the standard datasets (tests/test_evaluate.py runs their layouts)",
    "guides/benchmarking.md": "GPU sweeps (CI runs `python bench.py --device cpu --quick`)",
    "guides/training.md": "hours of training, on a GPU",
    "guides/video.md": "the command's synopsis",
    "development.md": "a documentation server left running",
}
ITERS = {"guides/compile.md": 2, "guides/triton-server.md": 2}
DEFAULT_ITERS = 6
EXACT = 1e-4  # px, as tests/test_readme.py


def pages() -> list[str]:
    return sorted(str(path.relative_to(PAGES)) for path in PAGES.rglob("*.md"))


def blocks(page: str, *languages: str) -> list[str]:
    text = (PAGES / page).read_text()
    found = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", text, flags=re.S | re.M)
    return [
        textwrap.dedent(indent + body.replace("\n" + indent, "\n")) for indent, lang, body in found if lang in languages
    ]


def commands(page: str) -> list[str]:
    """The `raft-engine` commands of a page's shell blocks, continuation lines joined."""
    found = []
    for block in blocks(page, "sh", "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("raft-engine "):
                found.append(" ".join(line.split()))
    return found


def with_iters(code: str, iters: int) -> str:
    return re.sub(r"(\biters=|--iters )12\b", lambda match: match.group(1) + str(iters), code)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, reference):
    """What the examples name: frames, a published-layout checkpoint, a video, frame folders."""
    from raft_engine.io import write_video
    from raft_engine.scenes import generate_pair, generate_sequence

    root = tmp_path_factory.mktemp("docs")
    Image.fromarray(reference["image1"]).save(root / "frame1.png")
    Image.fromarray(reference["image2"]).save(root / "frame2.png")
    state = {"module." + k: v for k, v in synthetic_state_dict("official_large").items()}
    torch.save(state, root / "raft-things.pth")
    clip = generate_sequence(seed=5, frames=4, height=128, width=160)
    write_video(root / "input.mp4", clip.frames, fps=10)
    (root / "frames").mkdir()
    for k, frame in enumerate(clip.frames[:3]):
        Image.fromarray(frame).save(root / "frames" / f"{k:04d}.png")
    sintel_size = generate_pair(9, 436, 1024)  # the size of the frames the inspection page shows
    Image.fromarray(sintel_size.image1).save(root / "frame_0016.png")
    Image.fromarray(sintel_size.image2).save(root / "frame_0017.png")
    return root


def run_page(page: str, root: Path) -> tuple[Path, str]:
    """A page's commands, then its Python blocks as one script, in a copy of `root` -> (folder, printed)."""
    work = root.parent / (root.name + "-" + page.replace("/", "-").removesuffix(".md"))
    shutil.copytree(root, work, dirs_exist_ok=True)
    iters = ITERS.get(page, DEFAULT_ITERS)
    printed = []
    executable = Path(sys.executable).parent / "raft-engine"
    for command in commands(page):
        done = subprocess.run(
            [str(executable), *with_iters(command, iters).split()[1:]],
            cwd=work, capture_output=True, text=True, env=_env(), timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{page}: {command}\n{done.stderr}"
        printed.append(done.stdout)
    script = "\n".join(with_iters(block, iters) for block in blocks(page, "python"))
    if script:
        script += "\n" + RECORD.get(page, "")
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=work, capture_output=True, text=True, env=_env(), timeout=900
        )
        assert done.returncode == 0, f"{page}\n{done.stderr}"
        printed.append(done.stdout)
    return work, "\n".join(printed)


# What a page's script saves after its examples, for the checks.
RECORD = {
    "getting-started.md": "import numpy\nnumpy.save('seen_flow.npy', result.flow.numpy())",
    "guides/compile.md": (
        "import numpy\nnumpy.save('compiled.npy', flow.numpy())\n"
        "numpy.save('eager.npy', FlowEngine(model).estimate(image1, image2, iters=2).flow.numpy())"
    ),
    "guides/onnx.md": "import numpy\nnumpy.save('onnx.npy', flow.numpy())",
    "guides/inspection.md": (
        "import numpy\nnumpy.save('trace.npy', trace.flow.numpy())\n"
        "numpy.save('eager.npy', engine.estimate(image1, image2, iters=6).flow.numpy())\n"
        "assert pixel.correspondence.shape == (7, 2) and pixel.window[k][level].shape == (9, 9)"
    ),
}


def _close(actual, expected, atol: float = EXACT) -> None:
    actual, expected = (torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (actual, expected))
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


RUN_HERE = [page for page in pages() if page not in RUN_ELSEWHERE and (commands(page) or blocks(page, "python"))]


@pytest.mark.parametrize("page", RUN_HERE)
def test_the_examples_of_each_page_run(page, folder, reference):
    work, printed = run_page(page, folder)
    oracle = reference["official_large_flow"]  # the published code's 6-iteration flow of these frames
    if page == "getting-started.md":
        _close(np.load(work / "seen_flow.npy")[0], oracle)
        assert (work / "demo" / "demo.png").is_file() and (work / "flow.mp4").is_file()
        assert len(list((work / "flo").glob("*.flo"))) == 3 and len(list(work.glob("flow-*.flo"))) == 3
    elif page == "guides/compile.md":
        _close(np.load(work / "compiled.npy"), np.load(work / "eager.npy"))
    elif page == "guides/onnx.md":
        errors = re.findall(r"relative error ([0-9.e+-]+)", printed)
        assert len(errors) == 2 and all(float(error) < 3e-6 for error in errors), printed
        _close(np.load(work / "onnx.npy")[0], oracle)
        _close(_png(work / "flow-onnx.png"), flow_to_color(torch.from_numpy(oracle)), atol=1)
    elif page == "guides/inspection.md":
        _close(np.load(work / "trace.npy"), np.load(work / "eager.npy"))
    elif page == "guides/video.md":
        assert read_flo(work / "flow.flo").shape == (128, 160, 2) and (work / "flow.mp4").is_file()
        assert len(list((work / "flows-flo").glob("*.flo"))) == 2
    elif page == "how-raft-works.md":
        assert (work / "inspect" / "index.html").is_file() and (work / "inspect" / "pixel1_level3.gif").is_file()


def test_text_examples_are_only_where_they_cannot_run():
    """A ```text block is a synopsis or needs what tests lack: only on the pages NOT_RUN names, and every
    page's runnable examples are run here or in the module RUN_ELSEWHERE names."""
    with_text = {page for page in pages() if blocks(page, "text")}
    assert with_text <= set(NOT_RUN), f"```text blocks on {sorted(with_text - set(NOT_RUN))}: run them, or say why not"
    for page, module in RUN_ELSEWHERE.items():
        assert '"' + page.split("/")[-1] + '"' in (ROOT / module).read_text(), (page, module)
    fences = {lang for page in pages() for lang in re.findall(r"^ *```(\w*)$", (PAGES / page).read_text(), re.M)}
    assert fences <= {"", "python", "sh", "bash", "text", "nginx"}, fences


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="MkDocs (the [docs] extra) is not installed")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-f", str(ROOT / "docs" / "mkdocs.yml"), "--strict", "-d", str(out)],
        capture_output=True, text=True, env={**_env(), "NO_MKDOCS_2_WARNING": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_the_site_builds_strictly_with_every_page(site):
    for page in pages():
        assert (site / page.removesuffix(".md").removesuffix("index") / "index.html").is_file() or (
            site / "index.html"
        ).is_file(), page
    for generated in ("reference/cli", "reference/api", "reference/benchmarks"):
        assert (site / generated / "index.html").stat().st_size > 10_000, generated
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("raft_engine.FlowEngine", "raft_engine.distributed.flow_batch", "raft_engine.serving.build_app"):
        assert f'id="{name}"' in api, name
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "raft-engine batch" in cli and "--max-batch-size" in cli


def test_a_page_renders_in_a_browser(site, tmp_path):
    """Headless Chromium opens the home page: the DOM after its scripts ran holds the text, and the
    screenshot is not blank."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    page = (site / "index.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "A fast, exact inference engine for RAFT optical flow" in dom and "md-nav" in dom
    shot = tmp_path / "home.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,900", page], capture_output=True, timeout=120
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # text, the picture and the navigation, not a blank page
