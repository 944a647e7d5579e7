"""The raft-engine command line, end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import rel_error
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine import FlowEngine, load_model
from raft_engine.cli import main
from raft_engine.io import read_flo, read_image
from raft_engine.model.warm_start import forward_interpolate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, reference):
    folder = tmp_path_factory.mktemp("cli")
    torch.save({"module." + k: v for k, v in synthetic_state_dict("official_small").items()}, folder / "raft-small.pth")
    frames = folder / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    base = reference["image1"]
    for i, name in enumerate(["frame_9.png", "frame_10.png", "frame_11.png"]):
        shifted = np.roll(base, shift=(i, 2 * i), axis=(0, 1))
        noisy = np.clip(shifted.astype(int) + rng.integers(-3, 4, shifted.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy[:123, :157]).save(frames / name)
    (frames / "notes.txt").write_text("not a frame")
    return folder


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pair_writes_image_and_flo(workdir, tmp_path, capsys):
    frames = workdir / "frames"
    out, flo = tmp_path / "flow.png", tmp_path / "flow.flo"
    code, stdout, _ = _run(
        [
            "flow",
            frames / "frame_9.png",
            frames / "frame_10.png",
            "--weights",
            workdir / "raft-small.pth",
            "-o",
            out,
            "--flo",
            flo,
            "--iters",
            3,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    assert "wrote 1 flow field(s) of 123x157" in stdout
    assert read_image(out).shape == (123, 157, 3)
    engine = FlowEngine(load_model(workdir / "raft-small.pth"), device="cpu")
    expected = engine(read_image(frames / "frame_9.png"), read_image(frames / "frame_10.png"), iters=3)
    np.testing.assert_allclose(read_flo(flo), expected[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("warm_start", [False, True])
def test_folder_sequence(workdir, tmp_path, capsys, warm_start):
    out = tmp_path / "flows"
    args = [
        "flow",
        workdir / "frames",
        "--weights",
        workdir / "raft-small.pth",
        "-o",
        out,
        "--flo",
        tmp_path / "flo",
        "--iters",
        2,
        "--device",
        "cpu",
        "--max-magnitude",
        10,
    ]
    code, stdout, _ = _run(args + (["--warm-start"] if warm_start else []), capsys)
    assert code == 0, stdout
    # Natural order: frame_9 before frame_10; one flow per consecutive pair, named after its first frame.
    assert sorted(p.name for p in out.iterdir()) == ["frame_10.png", "frame_9.png"]
    assert sorted(p.name for p in (tmp_path / "flo").iterdir()) == ["frame_10.flo", "frame_9.flo"]
    engine = FlowEngine(load_model(workdir / "raft-small.pth"), device="cpu")
    frames = [read_image(workdir / "frames" / n) for n in ("frame_9.png", "frame_10.png", "frame_11.png")]
    first = engine.estimate(frames[0], frames[1], iters=2)
    # Warm start carries the previous 1/8 flow to the next frame's grid, as the published Sintel code does.
    flow_init = forward_interpolate(first.flow_low) if warm_start else None
    second = engine.estimate(frames[1], frames[2], iters=2, flow_init=flow_init)
    written = torch.from_numpy(read_flo(tmp_path / "flo" / "frame_10.flo")).permute(2, 0, 1)
    # Each frame is encoded once, alone: float32 rounding apart from estimate's pair batch (6e-7 measured).
    assert rel_error(written, second.flow[0]) < 1e-5
    if warm_start:  # and the carry is not the unwarped flow
        unwarped = engine.estimate(frames[1], frames[2], iters=2, flow_init=first.flow_low)
        assert rel_error(written, unwarped.flow[0]) > 1e-3


def _one_line_error(code, err, expected_code=1):
    assert code == expected_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raft-engine: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_user_mistakes_are_one_line(workdir, tmp_path, capsys):
    frames = workdir / "frames"
    weights = workdir / "raft-small.pth"
    pair = [frames / "frame_9.png", frames / "frame_10.png"]
    cases = [
        (["flow", frames / "missing.png", pair[1], "--weights", weights], "no such image file"),
        (["flow", *pair, "--weights", tmp_path / "none.pth"], "no checkpoint file"),
        (["flow", *pair, "--weights", weights, "--iters", 0], "--iters must be >= 1"),
        (["flow", *pair, "--weights", weights, "--warm-start"], "--warm-start needs a sequence"),
        (["flow", pair[0], "--weights", weights], "give two frames"),
        (
            ["flow", frames / "notes.txt", pair[0], "--weights", weights, "--device", "cpu"],
            "is not an image file Pillow can read",
        ),
        (["flow", *pair, "--weights", weights, "--variant", "large"], "variant='large' was requested"),
        (["flow", *pair, "--weights", weights, "--device", "tpu9"], "unknown device"),
        (["flow", *pair, "--weights", weights, "--providers", "cpu"], "--providers applies with --onnx only"),
        (["flow", *pair, "--onnx", tmp_path / "x.onnx", "--dtype", "fp16"], "--dtype do(es) not apply with --onnx"),
    ]
    for args, message in cases:
        code, _, err = _run(args, capsys)
        assert message in _one_line_error(code, err), args


def test_sequence_outputs_must_not_overwrite_each_other(workdir, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.open(workdir / "frames" / "frame_9.png").save(tmp_path / folder / "x.png")
    frames = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", workdir / "frames" / "frame_10.png"]
    code, _, err = _run(["flow", *frames, "--weights", workdir / "raft-small.pth", "-o", tmp_path / "out"], capsys)
    assert "several frames are named 'x'" in _one_line_error(code, err)


def test_too_small_images(workdir, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / name)
    code, _, err = _run(
        ["flow", tmp_path / "a.png", tmp_path / "b.png", "--weights", workdir / "raft-small.pth", "--device", "cpu"],
        capsys,
    )
    assert "too small for RAFT" in _one_line_error(code, err)


def test_bad_option_value_is_a_usage_error(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["flow", "a.png", "b.png", "--weights", "w.pth", "--dtype", "fp8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_console_script_runs(workdir, tmp_path):
    frames = workdir / "frames"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "raft_engine.cli",
            "flow",
            frames / "frame_9.png",
            frames / "frame_10.png",
            "--weights",
            workdir / "raft-small.pth",
            "-o",
            tmp_path / "f.png",
            "--iters",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f.png").is_file()
    listed = subprocess.run(
        [sys.executable, "-m", "raft_engine.cli", "presets"], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0 and "raft-large-things" in listed.stdout


def test_missing_optional_package_is_one_line(workdir, tmp_path, capsys, monkeypatch):
    pair = [workdir / "frames" / "frame_9.png", workdir / "frames" / "frame_10.png"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ModuleNotFoundError
    code, _, err = _run(["flow", *pair, "--onnx", tmp_path / "x.onnx"], capsys)
    assert "flow needs onnxruntime: pip install onnxruntime-gpu" in _one_line_error(code, err)
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, _, err = _run(["export", "--weights", workdir / "raft-small.pth", "--height", 128, "--width", 160,
                         "-o", tmp_path / "x.onnx"], capsys)  # fmt: skip
    assert "export needs onnx: pip install onnx onnxscript" in _one_line_error(code, err)


@pytest.fixture
def tiny_frames(tmp_path, monkeypatch):
    """Three 16x16 frames in a folder. Every mistake below is caught before a model is loaded or an
    image decoded; were a check missing, 16x16 is too small for RAFT and the command would fail with
    another message (and --weights below names no file, so nothing slow runs). The working folder is
    tmp_path: a sequence creates its default output folder flow/ there."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"f{i}.png")
    return sorted(folder.iterdir())


def test_folder_with_fewer_than_two_frames(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "only.png")
    (folder / "notes.txt").write_text("not a frame")  # not an image suffix: not counted
    code, stdout, err = _run(["flow", folder, "--weights", tmp_path / "none.pth"], capsys)
    assert "holds 1 image(s); at least 2 frames are needed" in _one_line_error(code, err)
    assert stdout == ""


def test_folder_mixed_with_files(tiny_frames, tmp_path, capsys):
    folder = tiny_frames[0].parent
    for frames in ([folder, tiny_frames[0]], [tiny_frames[0], folder]):
        code, _, err = _run(["flow", *frames, "--weights", tmp_path / "none.pth"], capsys)
        assert f"{folder} is a folder; give either one folder or a list of image files" in _one_line_error(code, err)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_max_magnitude_must_be_positive(tiny_frames, tmp_path, capsys, value):
    args = ["flow", *tiny_frames[:2], "--weights", tmp_path / "none.pth", "-o", tmp_path / "f.png"]
    code, _, err = _run([*args, "--max-magnitude", value], capsys)
    assert f"--max-magnitude must be positive, got {float(value)}" in _one_line_error(code, err)
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("option", ["-o", "--flo"])
def test_sequence_output_that_is_an_existing_file(tiny_frames, tmp_path, capsys, option):
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    code, _, err = _run(["flow", *tiny_frames, "--weights", tmp_path / "none.pth", option, existing], capsys)
    assert f"{existing} exists and is not a folder" in _one_line_error(code, err)
    assert existing.read_text() == "keep me"


def test_warm_start_with_onnx(tiny_frames, tmp_path, capsys):
    # The check comes before the graph is opened: no export needed, the file need not exist.
    code, _, err = _run(["flow", *tiny_frames, "--onnx", tmp_path / "x.onnx", "--warm-start"], capsys)
    assert "--warm-start is not available with --onnx" in _one_line_error(code, err)


def test_inspect_iters_zero(tiny_frames, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["inspect", *tiny_frames[:2], "--pixel", "4,4", "--weights", tmp_path / "none.pth", "-o", out]
    code, _, err = _run([*args, "--iters", 0], capsys)
    assert "--iters must be >= 1, got 0" in _one_line_error(code, err)
    assert not out.exists()
