"""The benchmark's plumbing: options, records, tables, rendering (the timings themselves are data)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

import pytest
import torch
from synthetic import layout, synthetic_state_dict

import raft_engine.benchmark as benchmark
import raft_engine.weights
from raft_engine import RAFT, RAFTConfig
from raft_engine.benchmark import (
    BACKENDS,
    MEASURED,
    SWEEPS,
    BenchConfig,
    Sweep,
    SweepContext,
    count_flops,
    main,
    measure,
    parse_resolution,
    run_sweep,
    table,
    torchvision_state_dict,
)
from raft_engine.cli import main as cli_main

REQUIRED = {
    "device",
    "backend",
    "variant",
    "dtype",
    "batch",
    "height",
    "width",
    "iters",
    "latency_ms_p50",
    "latency_ms_p90",
    "pairs_per_s",
    "peak_mem_mb",
    "epe_vs_fp32",
    "versions",
    "command",
}


def test_resolutions():
    assert parse_resolution("sintel") == (440, 1024)
    assert parse_resolution("4k") == (2160, 3840)
    assert parse_resolution("500x1000") == (500, 1000)
    with pytest.raises(argparse.ArgumentTypeError, match="expected one of sintel"):
        parse_resolution("hd")


def test_sweep_records_and_unavailable_configurations():
    configs = [
        BenchConfig("torch", "small", "fp32", 1, 128, 160, 2, "volume"),
        BenchConfig("torch", "small", "bf16", 2, 128, 160, 2, "ondemand"),
        BenchConfig("compiled+graphs", "small", "fp32", 1, 128, 160, 2, "volume"),
        BenchConfig("ort-tensorrt", "small", "fp32", 1, 128, 160, 2, "volume"),
    ]
    records = run_sweep(configs, torch.device("cpu"), {}, warmup=0, runs=2, progress=False)
    assert [r["status"] for r in records[:2]] == ["ok", "ok"]
    assert records[2]["status"] == "unavailable: CUDA graphs need a GPU"
    assert records[3]["status"].startswith("unavailable:")
    assert all(REQUIRED <= set(record) for record in records)
    assert records[2]["latency_ms_p50"] is None and records[3]["epe_vs_fp32"] is None
    for record in records[:2]:
        assert record["latency_ms_p50"] > 0 and record["pairs_per_s"] > 0 and record["gflop_per_pair"] > 0
    assert records[0]["epe_vs_fp32"] == 0  # the reference itself
    assert 0 < records[1]["epe_vs_fp32"] < 1  # bf16 drifts a little
    text = table(records)
    assert "unavailable: CUDA graphs need a GPU" in text and "ondemand" in text


def test_flops_follow_the_correlation_mode():
    volume = count_flops(BenchConfig("torch", "large", "fp32", 1, 128, 160, 4, "volume"))
    ondemand = count_flops(BenchConfig("torch", "large", "fp32", 1, 128, 160, 4, "ondemand"))
    volume_matmul = 2 * (16 * 20) ** 2 * 256
    assert volume - ondemand == pytest.approx(volume_matmul - 4 * 4 * 2 * 320 * 81 * 256, rel=1e-6)


def test_quick_run_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results" / "cpu.json"
    code = main(
        [
            "--device",
            "cpu",
            "--quick",
            "--backend",
            "torch",
            "--dtype",
            "fp32",
            "--runs",
            "1",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "bf16 matrix-product peak" in printed
    records = json.loads(out.read_text())
    assert len(records) == 1 and REQUIRED <= set(records[0])
    monkeypatch.chdir(tmp_path)
    assert cli_main(["bench", "--render", str(tmp_path / "results")]) == 0
    rendered = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## cpu" in rendered and records[0]["command"] in rendered and "torch" in rendered


def test_torchvision_peer_gets_the_same_weights():
    """Every key of torchvision's RAFT layout maps onto this package's weights."""

    class FakePeer:
        def __init__(self, variant):
            self.keys = layout(f"torchvision_{variant}")

        def state_dict(self):
            return dict.fromkeys(self.keys)

    for variant in ("large", "small"):
        model = RAFT(RAFTConfig.from_variant(variant))
        mapped = torchvision_state_dict(model, FakePeer(variant))
        assert set(mapped) == set(layout(f"torchvision_{variant}"))
        native = model.state_dict()
        mapped_key, native_key = "update_block.motion_encoder.convcorr1.0.weight", "update_block.encoder.convc1.weight"
        assert torch.equal(mapped[mapped_key], native[native_key])


def test_measure_fills_every_measured_key_and_caches_per_shape(tmp_path):
    torch.manual_seed(0)
    model = RAFT(RAFTConfig.small()).eval()
    context = SweepContext(torch.device("cpu"), warmup=0, runs=1, peak=1.0, workdir=tmp_path, common={"device": "x"})
    fp32 = measure(BenchConfig("torch", "small", "fp32", 1, 128, 160, 1, "volume"), model, context, "random")
    bf16 = measure(BenchConfig("torch", "small", "bf16", 1, 128, 160, 1, "volume"), model, context, "random")
    for record in (fp32, bf16):
        assert record["status"] == "ok" and record["device"] == "x" and record["weights"] == "random"
        assert set(MEASURED) <= set(record)
        assert all(record[key] is not None for key in MEASURED if key != "peak_mem_mb")  # no memory on the CPU
        assert record["peak_mem_method"] == "not measured on the CPU" and record["runs"] == 1
    assert fp32["epe_vs_fp32"] == 0 and bf16["epe_vs_fp32"] > 0
    assert len(context.references) == 1 and len(context.flops) == 1  # one shape: computed once
    skipped = measure(BenchConfig("triton", "small", "fp32", 1, 128, 160, 1, "volume"), model, context, "random")
    assert skipped["status"].startswith("unavailable: the Triton kernels run on CUDA")
    assert set(MEASURED) <= set(skipped) and all(skipped[key] is None for key in MEASURED)
    assert list(skipped) == list(fp32)[: len(skipped)]  # same key order as a record that ran


def test_a_failing_configuration_is_recorded(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(benchmark, "make_runner", broken)
    context = SweepContext(torch.device("cpu"), warmup=0, runs=1, peak=1.0, workdir=tmp_path)
    record = measure(BenchConfig("torch", "small", "fp32", 1, 128, 160, 1, "volume"), None, context, "w")
    assert record["status"] == "error: RuntimeError: kaput"
    assert all(record[key] is None for key in MEASURED)


def capture_sweep(monkeypatch) -> dict:
    """Replace run_sweep: remember what main asked for, and return one "ok" record per configuration."""
    seen = {}

    def fake(configs, device, weights, warmup, runs, progress=True):
        seen.update(configs=configs, weights=weights, warmup=warmup, runs=runs)
        common = {"device": "cpu", "bf16_matmul_tflops": 1.0, "weights": "random (seed 0)", "status": "ok"}
        return [{**asdict(c), **common} for c in configs]

    monkeypatch.setattr(benchmark, "run_sweep", fake)
    return seen


def expected_configs(sweep: Sweep, backends) -> list[BenchConfig]:
    return [
        BenchConfig(backend, variant, dtype, batch, *parse_resolution(resolution), iters, "volume")
        for variant in sweep.variants
        for resolution in sweep.resolutions
        for batch in sweep.batches
        for iters in sweep.iters
        for dtype in sweep.dtypes
        for backend in backends
    ]


def test_quick_runs_the_quick_entry(monkeypatch):
    seen = capture_sweep(monkeypatch)
    quick = SWEEPS["quick"]
    assert main(["--device", "cpu", "--quick", "--no-progress"]) == 0
    assert seen["configs"] == expected_configs(quick, quick.backends)
    assert (seen["warmup"], seen["runs"]) == (quick.warmup, quick.runs) == (1, 3)
    assert main(["--device", "cpu", "--sweep", "quick", "--no-progress"]) == 0
    assert seen["configs"] == expected_configs(quick, quick.backends) and seen["runs"] == 3
    # --quick with another sweep: that sweep's lists, the quick entry's counts (as before the table had them).
    assert main(["--device", "cpu", "--quick", "--sweep", "ptlflow", "--no-progress"]) == 0
    assert seen["configs"] == expected_configs(SWEEPS["ptlflow"], BACKENDS)
    assert (seen["warmup"], seen["runs"]) == (1, 3)
    # The table is what --quick reads.
    monkeypatch.setitem(SWEEPS, "quick", replace(quick, iters=(2, 3), backends=("torch",), runs=5))
    assert main(["--device", "cpu", "--quick", "--no-progress"]) == 0
    assert [(c.backend, c.iters) for c in seen["configs"]] == [("torch", 2), ("torch", 2), ("torch", 3), ("torch", 3)]
    assert (seen["warmup"], seen["runs"]) == (1, 5)


def test_default_sweep_depends_on_the_device(monkeypatch):
    default = SWEEPS["default"]
    assert default.backends_on(torch.device("cpu")) == ["torch", "ort-cpu"]
    gpu = ["torch", "triton", "compiled", "compiled+graphs", "ort-cuda", "torchvision"]
    assert default.backends_on(torch.device("cuda")) == gpu
    assert default.sizes() == [(440, 1024)] and (default.warmup, default.runs) == (3, 20)
    assert SWEEPS["standard"].backends_on(torch.device("cpu")) == list(BACKENDS)  # no CPU variant: the same
    seen = capture_sweep(monkeypatch)
    assert main(["--device", "cpu", "--no-progress"]) == 0
    assert seen["configs"] == expected_configs(default, ["torch", "ort-cpu"])
    assert (seen["warmup"], seen["runs"]) == (3, 20)
    assert main(["--device", "cpu", "--no-progress", "--runs", "2", "--warmup", "0", "--backend", "torch"]) == 0
    assert (seen["warmup"], seen["runs"]) == (0, 2) and {c.backend for c in seen["configs"]} == {"torch"}


def test_weights_are_loaded_once(tmp_path, monkeypatch):
    path = tmp_path / "small.pth"
    torch.save(synthetic_state_dict("official_small"), path)
    loads = []
    load_model = raft_engine.weights.load_model

    def counting(source, *args, **kwargs):
        loads.append(source)
        return load_model(source, *args, **kwargs)

    monkeypatch.setattr(raft_engine.weights, "load_model", counting)
    out = tmp_path / "records.json"
    argv = ["--device", "cpu", "--quick", "--backend", "torch", "--dtype", "fp32", "--runs", "1", "--warmup", "0"]
    assert main([*argv, "--weights", str(path), "--json", str(out), "--no-progress"]) == 0
    assert loads == [str(path)]
    records = json.loads(out.read_text())
    assert [r["weights"] for r in records] == [str(path)] and records[0]["status"] == "ok"
