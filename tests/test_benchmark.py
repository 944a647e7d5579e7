"""The benchmark's plumbing: options, records, tables, rendering (the timings themselves are data)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from synthetic import layout

from raft_engine import RAFT, RAFTConfig
from raft_engine.benchmark import (
    BenchConfig,
    count_flops,
    main,
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
