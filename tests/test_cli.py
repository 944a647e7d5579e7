"""The raft-engine command line, end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine import FlowEngine, load_model
from raft_engine.cli import main
from raft_engine.io import read_flo, read_image


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
    second = engine.estimate(frames[1], frames[2], iters=2, flow_init=first.flow_low if warm_start else None)
    np.testing.assert_allclose(
        read_flo(tmp_path / "flo" / "frame_10.flo"), second.flow[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-5
    )


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
        (["flow", frames / "notes.txt", pair[0], "--weights", weights, "--device", "cpu"], "cannot read image"),
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
