"""The benchmark's plumbing: options, records, tables, rendering (the timings themselves are data)."""

from __future__ import annotations

import json
import weakref
from dataclasses import asdict, replace

import pytest
import torch
from synthetic import layout, synthetic_state_dict
from torch.cuda import OutOfMemoryError

import raft_engine.tools.benchmark as benchmark
import raft_engine.weights
from raft_engine import RAFT, FlowEngine, RAFTConfig
from raft_engine.cli import main as cli_main
from raft_engine.runtime.devices import ieee_fp32
from raft_engine.tools.bench_configs import MEASURED_BACKENDS, SWEEPS, BenchConfig, Sweep, parse_resolution
from raft_engine.tools.bench_report import table
from raft_engine.tools.benchmark import (
    MEASURED,
    SweepContext,
    count_flops,
    measure,
    run_sweep,
    torchvision_state_dict,
)


def main(argv: list[str]) -> int:
    """The benchmark's command line, as `raft-engine bench` runs it."""
    return cli_main(["bench", *argv])


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
    with pytest.raises(ValueError, match="expected one of sintel"):
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
    # On the CPU (no TF32) the fp32 torch configuration computes the reference's flow bit for bit: exactly 0.
    # bf16 must drift, and not by much: measured 0.0035 px here (x86-64, torch 2.13) on a mean flow of
    # 0.59 px (0.6%); 0.01 px leaves room for other CPUs' bf16 kernels and fails if the reference were
    # bf16 (0) or the drift a sum instead of a mean (x 2*128*160).
    assert records[0]["epe_vs_fp32"] == 0.0
    assert 0 < records[1]["epe_vs_fp32"] < 0.01
    for record in records:
        assert record["reference_tf32"] is False and record["reference_error"] is None
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
    assert len(context.references) == 1 and len(context.flops) == 1  # one shape: computed once
    # The drifts against a flow computed without the benchmark or the engine: the model's own forward in
    # fp32 (128x160 needs no padding) and the mean end-point distance written out. fp32 gives 0 exactly on
    # the CPU; bf16 measured 0.0018 px here on a mean flow of 0.26 px (rounded to 1e-5 px in the record).
    image1, image2 = (x.float() for x in benchmark.benchmark_pairs(1, 128, 160))
    with torch.no_grad():
        independent = model(image1, image2, iters=1).flow
    torch.testing.assert_close(next(iter(context.references.values())), independent, rtol=0, atol=1e-5)
    bf16_flow = FlowEngine(model, device="cpu", dtype="bf16", backend="torch", corr="volume")(
        image1.to(torch.uint8), image2.to(torch.uint8), iters=1
    )
    expected = (bf16_flow - independent).square().sum(dim=1).sqrt().mean().item()
    assert fp32["epe_vs_fp32"] == 0.0 and 0 < expected < 0.01
    assert bf16["epe_vs_fp32"] == pytest.approx(expected, abs=1e-5)
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
    assert seen["configs"] == expected_configs(SWEEPS["ptlflow"], MEASURED_BACKENDS)
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
    assert SWEEPS["standard"].backends_on(torch.device("cpu")) == list(MEASURED_BACKENDS)  # no CPU variant: the same
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


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.fixture
def set_tf32():
    """Set PyTorch's TF32 flags (cudnn, matmul) for a test, and put back conftest's after it. (monkeypatch
    cannot: torch.backends.cuda.matmul answers allow_tf32 through __getattr__, so undoing deletes it.)"""
    saved = tf32_flags()

    def set_flags(conv: bool, matmul: bool) -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul

    yield set_flags
    set_flags(*saved)


@pytest.mark.parametrize("before", [(True, True), (True, False), (False, True)])
def test_ieee_fp32_turns_tf32_off_and_restores_the_flags(set_tf32, before):
    set_tf32(*before)
    with ieee_fp32():
        assert tf32_flags() == (False, False)
    assert tf32_flags() == before
    with pytest.raises(ZeroDivisionError), ieee_fp32():
        assert tf32_flags() == (False, False)
        1 / 0  # noqa: B018
    assert tf32_flags() == before


class FakeRunner:
    """A runner returning a zero flow and noting the TF32 flags of each call (one pair of 128x160)."""

    def __init__(self, calls: list):
        self.calls = calls

    def __call__(self) -> torch.Tensor:
        self.calls.append(tf32_flags())
        return torch.zeros(1, 2, 128, 160)


def test_records_say_whether_tf32_was_on_and_the_reference_runs_without(tmp_path, monkeypatch, set_tf32):
    measured, reference = [], []
    monkeypatch.setattr(benchmark, "make_runner", lambda *args: FakeRunner(measured))

    def fake_reference_runner(model, config, device, workdir):
        assert (config.backend, config.dtype) == ("torch", "fp32")

        def run():
            reference.append(tf32_flags())
            return torch.stack([torch.full((128, 160), 3.0), torch.full((128, 160), 4.0)])[None]

        return run

    monkeypatch.setattr(benchmark, "_estimator_runner", fake_reference_runner)
    monkeypatch.setattr(benchmark, "count_flops", lambda config: 1e9)
    set_tf32(True, False)
    context = SweepContext(torch.device("cpu"), warmup=1, runs=2, peak=1.0, workdir=tmp_path)
    record = measure(BenchConfig("torch", "small", "fp32", 1, 128, 160, 1, "volume"), None, context, "w")
    assert record["status"] == "ok"
    assert (record["tf32_conv"], record["tf32_matmul"], record["reference_tf32"]) == (True, False, False)
    assert measured == [(True, False)] * 4  # 1 warm-up, 2 timed, 1 for the flow
    assert reference == [(False, False)]
    assert tf32_flags() == (True, False)  # restored after the reference
    assert record["epe_vs_fp32"] == 5.0  # |(3, 4)| at every pixel
    set_tf32(True, True)
    again = measure(BenchConfig("torch", "small", "bf16", 1, 128, 160, 1, "volume"), None, context, "w")
    assert (again["tf32_conv"], again["tf32_matmul"]) == (True, True) and len(reference) == 1  # cached
    # ONNX Runtime does not read PyTorch's flags: its CUDA sessions are made with use_tf32=0.
    assert benchmark.tf32_in_use("ort-cuda") == {"tf32_conv": False, "tf32_matmul": False}
    assert benchmark.tf32_in_use("ort-tensorrt") == {"tf32_conv": None, "tf32_matmul": None}


@pytest.mark.parametrize(
    "error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\ndetails"), ValueError()]
)
def test_a_failing_reference_leaves_only_the_drift_missing(tmp_path, monkeypatch, error):
    alive = []

    def runner(*args):
        runner = FakeRunner([])
        alive.append(weakref.ref(runner))
        return runner

    def failing_reference(self, model, config):
        # The measured runner (and the engine it would hold) is gone before the reference runs.
        assert len(alive) == 1 and alive[0]() is None
        raise error

    monkeypatch.setattr(benchmark, "make_runner", runner)
    monkeypatch.setattr(SweepContext, "reference", failing_reference)
    monkeypatch.setattr(benchmark, "count_flops", lambda config: 1e9)
    context = SweepContext(torch.device("cpu"), warmup=0, runs=1, peak=1.0, workdir=tmp_path)
    record = measure(BenchConfig("torch", "small", "fp32", 1, 128, 160, 1, "volume"), None, context, "w")
    assert record["status"] == "ok" and record["epe_vs_fp32"] is None
    expected = {
        OutOfMemoryError: "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ValueError: "ValueError",
    }[type(error)]
    assert record["reference_error"] == expected
    assert all(record[key] is not None for key in MEASURED if key not in ("peak_mem_mb", "epe_vs_fp32"))
    assert f"ok (no drift: {expected})" in table([record])


def test_compiled_backends_warm_up_at_least_three_times(tmp_path, monkeypatch):
    calls: dict[str, list] = {}

    def counting_runner(model, config, *args):
        return FakeRunner(calls.setdefault(config.backend, []))

    monkeypatch.setattr(benchmark, "make_runner", counting_runner)
    monkeypatch.setattr(SweepContext, "reference", lambda self, model, config: torch.zeros(1, 2, 128, 160))
    monkeypatch.setattr(benchmark, "count_flops", lambda config: 1e9)
    monkeypatch.setattr(benchmark, "matmul_peak_tflops", lambda device: 1.0)
    out = tmp_path / "records.json"
    argv = ["--device", "cpu", "--quick", "--backend", "torch", "compiled", "--dtype", "fp32", "--no-progress"]
    assert main([*argv, "--json", str(out)]) == 0
    # --quick: 1 warm-up run and 3 timed runs, then one run for the flow; compiled: at least 3 warm-ups
    # (compile; with CUDA graphs warm-up, record, replay), so that none of them is timed.
    assert {backend: len(seen) for backend, seen in calls.items()} == {"torch": 1 + 3 + 1, "compiled": 3 + 3 + 1}
    records = json.loads(out.read_text())
    assert [(r["backend"], r["warmup_runs"], r["runs"], r["status"]) for r in records] == [
        ("torch", 1, 3, "ok"),
        ("compiled", 3, 3, "ok"),
    ]
    assert benchmark.warmup_runs("compiled+graphs", 1) == 3 and benchmark.warmup_runs("compiled", 5) == 5
    assert benchmark.warmup_runs("triton", 0) == 0
