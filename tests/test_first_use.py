"""What a new user meets first: outputs checked before any work, one-line errors for files that are not what
they should be (never a library's traceback or advice), readers that fail only with the project's own
errors, progress only on a terminal, and no noise."""

from __future__ import annotations

import io
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

import raft_engine.weights
from raft_engine.cli import main
from raft_engine.cli.progress import Steps
from raft_engine.errors import RaftEngineError
from raft_engine.io import read_flo, read_image, read_kitti_flow, read_video, write_flo, write_kitti_flow, write_video


@pytest.fixture
def frames(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 136, 3), dtype=np.uint8)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    Image.fromarray(image).save(paths[0])
    Image.fromarray(np.roll(image, 2, axis=1)).save(paths[1])
    return [str(p) for p in paths]


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model fails the test: a refusal must come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(raft_engine.weights, "load_model", refuse)


def _one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("raft-engine: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "/proc/nope/flow.png"], "cannot create the folder /proc/nope"),
        (["-o", "out.txt"], "out.txt: unknown image file extension '.txt'"),
        (["-o", "out"], "unknown image file extension '(none)'"),
        (["--flo", "flow.txt"], "--flo flow.txt: expected a file ending in .flo, got .txt"),
        (["--flo", "/proc/nope/f.flo"], "cannot create the folder /proc/nope"),
    ],
)
def test_flow_outputs_are_checked_before_any_work(frames, no_work, capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    code = main(["flow", *frames, "--device", "cpu", *extra])
    assert message in _one_line(code, capsys.readouterr().err)


SIZE = ["--height", "128", "--width", "160"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", *SIZE, "-o", "model.txt"], "-o model.txt: expected a file ending in .onnx"),
        (["export", *SIZE, "-o", "/proc/x/raft.onnx"], "cannot create the folder /proc/x"),
        (["export", "-o", "raft.onnx"], "give --height and --width (multiples of 8)"),
        (["inspect", "a.png", "b.png", "--pixel", "1,2", "-o", "/proc/x"], "cannot create the folder /proc/x"),
        (["demo", "-o", "/proc/x"], "cannot create the folder /proc/x"),
        (["evaluate", "--dataset", "sintel", "--root", ".", "--json", "r.txt"], "--json r.txt: expected a file ending"),
        (["selftest", "--json", "/proc/x/s.json"], "cannot create the folder /proc/x"),
        (["bench", "--json", "b.csv"], "--json b.csv: expected a file ending in .json"),
    ],
)  # fmt: skip
def test_every_command_checks_its_outputs_first(no_work, capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in _one_line(main(argv), capsys.readouterr().err)


def test_missing_output_folders_are_created(frames, tmp_path, capsys):
    out = tmp_path / "newdir" / "sub" / "f.png"
    assert main(["flow", *frames, "--device", "cpu", "--iters", "1", "-o", str(out)]) == 0
    assert out.is_file()
    assert capsys.readouterr().err == ""  # not a terminal: no progress either


def test_files_that_are_not_what_they_should_be_are_one_line(frames, tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("# some notes, not a graph\n")
    message = _one_line(main(["flow", *frames, "--onnx", str(notes)]), capsys.readouterr().err)
    assert f"{notes} is not an ONNX graph" in message

    weights = tmp_path / "random.pth"
    weights.write_bytes(random.Random(0).randbytes(4000))
    message = _one_line(main(["flow", *frames, "--weights", str(weights)]), capsys.readouterr().err)
    assert f"{weights} is not a PyTorch checkpoint" in message and "weights_only=False" not in message

    torch.save({"weights": np.zeros(3)}, tmp_path / "objects.pth")
    message = _one_line(main(["flow", *frames, "--weights", str(tmp_path / "objects.pth")]), capsys.readouterr().err)
    assert "holds Python objects besides tensors (numpy" in message and "weights_only=False" not in message

    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + random.Random(1).randbytes(3000))
    message = _one_line(main(["flow", str(video), "-o", str(tmp_path / "out")]), capsys.readouterr().err)
    assert f"{video} is not a video PyAV can read" in message and "Errno" not in message


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """A damaged copy: bit flips, a cut, a spliced run of its own bytes, a rewritten header field, or an
    insertion."""
    buffer, kind = bytearray(data), rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        buffer = buffer[: rng.randrange(len(buffer))]
    elif kind == 2:
        start, end = sorted(rng.randrange(len(buffer)) for _ in range(2))
        at = rng.randrange(len(buffer))
        buffer = buffer[:at] + buffer[start:end] + buffer[at:]
    elif kind == 3:
        at = rng.randrange(min(len(buffer), 64))
        buffer[at : at + 4] = rng.randbytes(4)
    else:
        at = rng.randrange(len(buffer))
        buffer[at:at] = rng.randbytes(rng.randint(1, 32))
    return bytes(buffer)


def test_readers_fail_only_with_the_projects_errors(tmp_path):
    """A bounded, seeded fuzz: 80 damaged copies of each kind of file the package reads (the damage that
    once raised AttributeError in read_video and struct.error in read_kitti_flow among them)."""
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 5, (12, 16, 2)).astype(np.float32)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    write_flo(tmp_path / "a.flo", flow)
    write_kitti_flow(tmp_path / "a.png", flow)
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(image).save(tmp_path / "i.jpg", quality=90)
    readers = {"a.flo": read_flo, "a.png": read_kitti_flow, "i.png": read_image, "i.jpg": read_image}
    if _has_av():
        write_video(tmp_path / "v.mp4", [np.kron(np.roll(image, k, 1), np.ones((2, 2, 1), np.uint8)) for k in range(3)])
        readers["v.mp4"] = lambda path: list(read_video(path))
    for name, reader in readers.items():
        data, damaged = (tmp_path / name).read_bytes(), tmp_path / f"damaged{(tmp_path / name).suffix}"
        seeded = random.Random(name)
        for _ in range(80):
            damaged.write_bytes(_mutate(data, seeded))
            try:
                reader(damaged)
            except RaftEngineError:
                pass


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_steps_show_on_a_terminal_only():
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        with Steps("export", stream=stream, interval=0.01) as step:
            step("trace")
            step("verify")
    assert pipe.getvalue() == ""
    finished = re.findall(r"export: (\w+) ([0-9.]+) s\n", terminal.getvalue())
    assert [name for name, _ in finished] == ["trace", "verify"]

    failing = _Terminal()
    with pytest.raises(ZeroDivisionError), Steps("flow", stream=failing) as step:
        step("estimate")
        1 / 0  # noqa: B018
    assert re.search(r"flow: estimate stopped after [0-9.]+ s\n$", failing.getvalue())


def test_export_is_quiet_but_for_its_report(tmp_path, capfd, official_small):
    torch.save(official_small.state_dict(), tmp_path / "w.pth")
    argv = ["export", "--weights", str(tmp_path / "w.pth"), "--iters", "1", "--height", "128", "--width", "128"]
    assert main([*argv, "-o", str(tmp_path / "raft.onnx"), "--no-verify"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.startswith("exported RAFT-small"), (out, err)
