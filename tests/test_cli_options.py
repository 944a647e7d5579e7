"""The command line's shared options follow the library: same choices, same default in every command;
the demo's minimum image size follows the model configuration."""

from __future__ import annotations

import argparse

import pytest
import torch

from raft_engine import RAFTConfig
from raft_engine.cli import main
from raft_engine.cli.main import build_parser as _build_parser
from raft_engine.cli.options import make_engine as _make_engine
from raft_engine.model.config import VARIANTS
from raft_engine.runtime.inputs import Padder
from raft_engine.runtime.options import BACKENDS, CORR_MODES, DTYPE_NAMES, PADDING_MODES
from raft_engine.weights import load_model

LIBRARY_CHOICES = {
    "backend": BACKENDS,
    "corr": CORR_MODES,
    "padding": PADDING_MODES,
    "dtype": DTYPE_NAMES,
    "variant": VARIANTS,
}
# Which commands take each option: a command losing one, or the test finding none, fails loudly.
TAKEN_BY = {
    "backend": {"flow", "inspect", "evaluate", "batch", "serve"},
    "corr": {"flow", "inspect", "evaluate", "export", "batch", "serve"},
    "padding": {"flow", "inspect", "evaluate", "batch", "serve"},
    "dtype": {"flow", "inspect", "evaluate", "batch", "serve"},
    "variant": {"flow"},
    "weights": {"flow", "inspect", "export", "demo", "evaluate", "batch", "serve"},
    "iters": {"flow", "inspect", "export", "demo", "evaluate", "batch", "serve"},
    "device": {"flow", "inspect", "demo", "selftest", "evaluate", "bench", "train", "batch", "serve"},
}
# bench's list options name what it sweeps (its backends include peers: ONNX Runtime, torchvision), and
# train's are the fields of the training configuration: options of their own, not the shared ones.
OWN_OPTIONS = {"bench": {"backend", "corr", "dtype", "iters", "variant", "weights"}, "train": {"iters", "variant"}}


def _commands() -> dict[str, argparse.ArgumentParser]:
    return _build_parser()._subparsers._group_actions[0].choices


def _option(command: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    return command._option_string_actions.get(f"--{name}")


@pytest.mark.parametrize("name", sorted(TAKEN_BY))
def test_shared_option_is_the_same_in_every_command(name):
    found = {
        command: _option(parser, name)
        for command, parser in _commands().items()
        if _option(parser, name) and name not in OWN_OPTIONS.get(command, ())
    }
    assert set(found) == TAKEN_BY[name]
    for command, action in found.items():
        # None: not given (flow --onnx refuses the options a graph fixes); the library's default applies.
        assert action.default is None, (command, action.default)
        assert action.choices == LIBRARY_CHOICES.get(name), (command, action.choices)
        assert "default" in action.help, (command, action.help)


def test_omitted_engine_options_leave_the_library_defaults():
    args = _build_parser().parse_args(["inspect", "a.png", "b.png", "--pixel", "1,2", "--device", "cpu"])
    engine = _make_engine(args, load_model("builtin"))
    assert (engine.device.type, engine.dtype, engine.padding, engine.corr) == ("cpu", torch.float32, "sintel", "auto")
    assert engine.backend == "torch"  # "auto" on the CPU


def _smallest_accepted_side(config: RAFTConfig) -> int:
    # Counted from the padding itself rather than from a formula like the one under test.
    return next(side for side in range(1, 1024) if Padder(side, side).padded_size[0] >= config.min_image_size)


def _demo(tmp_path, capsys, height, width):
    code = main(["demo", "-o", str(tmp_path / "demo"), "--height", str(height), "--width", str(width),
                 "--iters", "1", "--device", "cpu"])  # fmt: skip
    return code, capsys.readouterr().err


def test_demo_minimum_size_follows_the_configuration(tmp_path, capsys):
    smallest = _smallest_accepted_side(load_model("builtin").config)
    code, err = _demo(tmp_path, capsys, smallest - 1, smallest + 8)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("raft-engine: error: "), err
    assert f"at least {smallest}" in lines[0]
    assert not (tmp_path / "demo" / "demo.png").exists()

    code, err = _demo(tmp_path, capsys, smallest, smallest)
    assert code == 0, err
    assert (tmp_path / "demo" / "demo.png").is_file()


def test_demo_minimum_size_is_not_a_fixed_number(tmp_path, capsys, monkeypatch):
    # A configuration that needs a larger padded size moves the minimum with it.
    monkeypatch.setattr(RAFTConfig, "min_image_size", property(lambda config: 136))
    smallest = _smallest_accepted_side(load_model("builtin").config)
    assert smallest == 129
    code, err = _demo(tmp_path, capsys, smallest - 1, smallest)
    assert code == 1 and f"at least {smallest}" in err and "needs 136" in err, err


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_of_every_command_has_help(command, capsys):
    parser = _commands()[command]
    assert parser.description, f"{command} --help has no description"
    for action in parser._actions:
        if action.option_strings:
            assert action.help and action.help != argparse.SUPPRESS, (command, action.option_strings)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: raft-engine {command} ")
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in shown, (command, flag)


def test_the_aliases_run_the_same_commands():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for argv in (["bench.py", "--help"], ["-m", "raft_engine.train", "--help"]):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, cwd=root)
        assert done.returncode == 0, done.stderr
        command = "bench" if argv[0] == "bench.py" else "train"
        assert done.stdout.startswith(f"usage: raft-engine {command} "), done.stdout[:200]


def test_a_mistake_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from raft_engine.cli import presets
    from raft_engine.errors import InputError

    def mistake(args):
        raise InputError("the input is not acceptable")

    monkeypatch.setattr(presets, "run", mistake)
    assert main(["presets"]) == 1
    assert capsys.readouterr().err == "raft-engine: error: the input is not acceptable\n"

    def bug(args):
        raise ValueError("a library's own ValueError: a bug of ours, not the user's mistake")

    monkeypatch.setattr(presets, "run", bug)
    with pytest.raises(ValueError, match="a bug of ours"):
        main(["presets"])
