"""Every Triton kernel, in every GPU autotune configuration, compiles for the H100 (sm_90) without
register spills, and torch.compile sees the lookups write nothing but their output. No GPU needed:
Triton compiles for a named target with its bundled ptxas (tests/sm90.py does the work, in a process
of its own because this one runs Triton's interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run_sm90(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(HERE / "sm90.py"), *args], capture_output=True, text=True, timeout=1200, env=env, cwd=HERE
    )


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    done = _run_sm90()
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_configuration_compiles_for_sm90_without_spills(compiled):
    # 7 lookup and 5 upsampling configurations x 3 dtypes (x 2 radii for the lookup); the on-demand
    # kernel's 9 configurations x 3 dtypes x 2 radii x 2 feature sizes.
    assert len(compiled) == 7 * 3 * 2 + 9 * 3 * 2 * 2 + 5 * 3
    failed = [r for r in compiled if "error" in r]
    assert not failed, failed[:3]
    spilled = [r for r in compiled if r["stack_bytes"] > 0]
    assert not spilled, [(r["kernel"], r["config"], r["num_warps"], r["dtype"], r["radius"]) for r in spilled]
    assert all(0 < r["registers"] <= 255 for r in compiled)


def test_compile_sees_only_the_output_written():
    done = _run_sm90("mutations")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"lookup": ["out"], "ondemand": ["out"]}
