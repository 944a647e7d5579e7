"""raft-engine selftest: its records, its verdicts and its exit code, on a few cheap checks."""

from __future__ import annotations

import json

import pytest
import torch

from raft_engine.cli import main
from raft_engine.runtime.devices import ieee_fp32
from raft_engine.tools import selftest
from raft_engine.tools.selftest import Check

KEYS = {"check", "backend", "variant", "dtype", "status", "drift", "latency_ms", "reason"}


@pytest.fixture
def few_checks(monkeypatch):
    """RAFT-small at 128x160 in torch fp32 and bf16, Triton in fp32, and ONNX Runtime on CUDA (skipped here)."""
    checks = [
        Check("torch", "small", "fp32", 128, 160),
        Check("torch", "small", "bf16", 128, 160),
        Check("triton", "small", "fp32", 128, 160, "ondemand"),
        Check("ort-cuda", "small", "fp32", 128, 160),
    ]
    monkeypatch.setattr(selftest, "plan", lambda device, quick: checks)
    return checks


def test_selftest_records_every_check(few_checks, tmp_path, capsys):
    path = tmp_path / "selftest.json"
    assert main(["selftest", "--device", "cpu", "--quick", "--json", str(path)]) == 0
    written = json.loads(path.read_text())
    assert written["environment"]["torch"] == torch.__version__
    assert {"c_compiler", "python_headers", "onnxruntime_providers", "tf32_conv"} <= set(written["environment"])
    toolchain, *records = written["records"]
    assert toolchain["check"] == "triton-launcher-toolchain" and toolchain["status"] == "skipped"
    assert [r["check"] for r in records] == [c.name for c in few_checks]
    assert all(KEYS <= set(r) for r in written["records"])
    torch_fp32, torch_bf16, triton_fp32, ort_cuda = records
    # The float32 torch check reruns the reference: deterministic on the CPU, so no drift at all.
    assert torch_fp32["status"] == "ok" and torch_fp32["drift"] == 0.0 and torch_fp32["latency_ms"] > 0
    # bf16 drifts, within its bound: measured 1.6e-2 px (4.1e-3 relative) with the built-in model.
    assert torch_bf16["status"] == "ok" and 1e-3 < torch_bf16["drift"] < 0.1
    assert torch_bf16["relative_error"] <= selftest.BOUNDS["bf16"]
    # Triton through the interpreter (conftest sets TRITON_INTERPRET=1): float32 to 1e-6 relative.
    assert triton_fp32["status"] == "ok" and triton_fp32["relative_error"] < 1e-5
    # This machine's onnxruntime-gpu lists the CUDA provider but there is no GPU; a CPU-only onnxruntime
    # does not list it. Either way the check is skipped, with the reason.
    assert ort_cuda["status"] == "skipped" and "CUDAExecutionProvider" in ort_cuda["reason"]
    out = capsys.readouterr().out
    assert "environment:" in out and "3 ok, 0 failed, 2 skipped" in out


def test_a_check_over_its_bound_fails_the_run(few_checks, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(selftest, "BOUNDS", {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-4})
    path = tmp_path / "selftest.json"
    assert main(["selftest", "--device", "cpu", "--quick", "--json", str(path)]) == 1
    records = json.loads(path.read_text())["records"]
    failed = [r for r in records if r["status"] == "fail"]
    assert [r["check"] for r in failed] == ["torch RAFT-small bf16 128x160"]
    assert failed[0]["reason"].startswith("relative error") and "above 0.0001" in failed[0]["reason"]
    assert "2 ok, 1 failed, 2 skipped" in capsys.readouterr().out


def test_a_crashing_check_is_one_line_and_a_failure(monkeypatch):
    context = selftest.Context(torch.device("cpu"), True, 2, workdir=None)  # type: ignore[arg-type]

    def broken(check, context):
        raise RuntimeError("kernel exploded\nwith a long traceback")

    monkeypatch.setattr(selftest, "_runner", broken)
    record = selftest.run_check(Check("torch", "small", "fp32", 128, 160), context)
    assert record["status"] == "fail" and record["reason"] == "RuntimeError: kernel exploded"


def test_toolchain_check_names_what_triton_lacks():
    environment = {"c_compiler": None, "python_headers": None}
    record = selftest.toolchain_record(torch.device("cuda"), environment)
    assert record["status"] == "fail"
    assert "a C compiler" in record["reason"] and "Python headers" in record["reason"]
    found = {"c_compiler": "/usr/bin/cc", "python_headers": "/usr/include/python3.11/Python.h"}
    assert selftest.toolchain_record(torch.device("cuda"), found)["status"] == "ok"


def test_tf32_is_off_while_checking_and_restored_after():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with pytest.raises(KeyError), ieee_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise KeyError("a failing check")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_full_plan_covers_every_backend_and_precision():
    checks = selftest.plan(torch.device("cuda"), quick=False)
    assert {c.backend for c in checks} == {
        "torch", "triton", "compiled", "compiled+graphs", "ort-cpu", "ort-cuda", "ort-tensorrt"
    }  # fmt: skip
    assert {(c.variant, c.dtype) for c in checks} == {
        (v, d) for v in ("large", "small") for d in ("fp32", "fp16", "bf16")
    }
    assert {(c.height, c.width) for c in checks} == set(selftest.SIZES[("cuda", False)])
    assert {c.corr for c in checks if c.backend == "triton"} == {"volume", "ondemand"}
    # The on-demand ONNX graph on every ONNX Runtime provider, for both variants.
    ondemand = {(c.backend, c.variant) for c in checks if c.backend.startswith("ort") and c.corr == "ondemand"}
    assert ondemand == {(b, v) for b in ("ort-cpu", "ort-cuda", "ort-tensorrt") for v in ("large", "small")}
