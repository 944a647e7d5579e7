"""The built-in RAFT-small: its accuracy on the held-out generated scenes, and every way of running it
staying close to that accuracy."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from raft_engine import FlowEngine, RAFTConfig, load_model
from raft_engine.cli import main
from raft_engine.io import read_flo
from raft_engine.scenes import TRAINING_SEED_START, generate_pair
from raft_engine.training.loop import HELD_OUT, held_out_epe
from raft_engine.weights import builtin_path, builtin_record

# Mean EPE on the held-out set (train.HELD_OUT: seeds 0-7 at 384x512, 12 iterations), float32 PyTorch
# on the CPU: 3.717 px for the shipped weights (their record says the same). The test allows 2% more.
HELD_OUT_MAX = 3.80

# Drift: the mean EPE of one way of running the model minus float32 PyTorch's (3.098 px) on DRIFT_SET.
# Measured on the CPU for the shipped weights: Triton volume +2.4e-7, Triton on-demand 0, bf16
# -6.9e-4, fp16 -2.4e-3, ONNX Runtime fp32 +2.4e-7, fp16 -3.5e-4; measured again with the distances
# below: -2.4e-7, -2.4e-7, -1.16e-3, -2.37e-3, 0, -3.5e-4. The bounds leave room for other hardware:
# the GPU variants share them.
DRIFT_SET = {"seeds": [0, 1], "height": 192, "width": 256, "iters": 12}
DRIFT = {
    "triton-volume": 1e-4,
    "triton-ondemand": 1e-4,
    "bf16": 0.02,
    "fp16": 0.01,
    "onnx-fp32": 1e-4,
    "onnx-fp16": 0.01,
}
# A flow of the same mean EPE can still be a different flow: the CPU runs also bound the end-point
# distance to float32 PyTorch's flow, mean over the pixels of DRIFT_SET of |flow - flow_fp32| (px).
# Measured on the CPU (2 cores, torch 2.13, Triton's interpreter, ONNX Runtime's CPU provider) for the
# shipped weights: Triton volume 5.05e-6, Triton on-demand 5.04e-6, bf16 2.40e-2, fp16 4.84e-3, ONNX
# Runtime fp32 5.61e-6, fp16 1.59e-3 (the largest single component: 4.5e-5, 4.5e-5, 0.20, 0.034, 5.9e-5,
# 0.020). Each bound is 4 to 10 times its measurement. The GPU variants keep the EPE bounds only:
# their distances were not measured.
DISTANCE = {
    "triton-volume": 5e-5,
    "triton-ondemand": 5e-5,
    "bf16": 0.1,
    "fp16": 0.02,
    "onnx-fp32": 5e-5,
    "onnx-fp16": 8e-3,
}


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin")


@pytest.fixture(scope="module")
def drift_pairs():
    return [generate_pair(s, DRIFT_SET["height"], DRIFT_SET["width"]) for s in DRIFT_SET["seeds"]]


def flows_of(estimate, pairs) -> list[np.ndarray]:
    """estimate(image1, image2) -> (H, W, 2) flow, for each of `pairs`."""
    return [estimate(p.image1, p.image2) for p in pairs]


def mean_epe(flows, pairs) -> float:
    """Mean end-point error of `flows` against the exact flows of `pairs`."""
    return float(np.mean([np.linalg.norm(f - p.flow, axis=2).mean() for f, p in zip(flows, pairs, strict=True)]))


def mean_distance(flows, references) -> float:
    """Mean end-point distance (px) between two lists of flows of the same pairs."""
    return float(np.mean([np.linalg.norm(f - r, axis=2).mean() for f, r in zip(flows, references, strict=True)]))


def engine_flows(model, pairs, **options) -> list[np.ndarray]:
    engine = FlowEngine(model, **options)
    return flows_of(lambda a, b: engine(a, b, iters=DRIFT_SET["iters"])[0].permute(1, 2, 0).cpu().numpy(), pairs)


@pytest.fixture(scope="module")
def reference_flows(builtin, drift_pairs):
    return engine_flows(builtin, drift_pairs, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def reference_epe(reference_flows, drift_pairs):
    return mean_epe(reference_flows, drift_pairs)


def check_drift(name, flows, pairs, reference_flows, reference_epe, distance=True) -> None:
    """Mean EPE within DRIFT[name] of float32 PyTorch's and, if `distance`, the flows within
    DISTANCE[name] of its flows."""
    epe = mean_epe(flows, pairs)
    assert abs(epe - reference_epe) <= DRIFT[name], (name, epe, reference_epe)
    if distance:
        apart = mean_distance(flows, reference_flows)
        assert apart <= DISTANCE[name], f"{name}: mean end-point distance to float32 PyTorch {apart:.3g} px"


def test_builtin_loads_offline_with_its_record(builtin):
    assert builtin.config == RAFTConfig.small() and not builtin.training
    assert all(p.dtype == torch.float32 for p in builtin.parameters())
    assert builtin_path().stat().st_size < 4_000_000
    record = builtin_record()
    assert record["steps"] == record["config"]["steps"]
    for key in ("training_seeds", "training_seconds", "device", "torch", "stored_dtype", "validation_epe"):
        assert key in record, key
    assert {k: v for k, v in record["held_out"].items() if k != "epe"} == HELD_OUT
    first_training_seed = int(record["training_seeds"].split()[0])
    assert first_training_seed >= TRAINING_SEED_START > max(HELD_OUT["seeds"])


def test_held_out_epe_is_under_its_threshold_and_matches_the_record(builtin):
    epe = held_out_epe(builtin)
    assert epe < HELD_OUT_MAX
    assert epe == pytest.approx(builtin_record()["held_out"]["epe"], abs=1e-3)


@pytest.mark.parametrize(
    "name, options",
    [
        ("triton-volume", dict(device="cpu", backend="triton", corr="volume")),
        ("triton-ondemand", dict(device="cpu", backend="triton", corr="ondemand")),
        ("bf16", dict(device="cpu", backend="torch", dtype="bf16")),
        ("fp16", dict(device="cpu", backend="torch", dtype="fp16")),
    ],
)
def test_backends_and_dtypes_stay_within_their_drift(
    builtin, drift_pairs, reference_flows, reference_epe, name, options
):
    if options["backend"] == "triton":
        from raft_engine.interpreter import interpreting

        if not interpreting():
            pytest.skip("Triton's interpreter is off")
    flows = engine_flows(builtin, drift_pairs, **options)
    check_drift(name, flows, drift_pairs, reference_flows, reference_epe)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "name, options",
    [
        ("triton-volume", dict(backend="triton", corr="volume")),
        ("triton-ondemand", dict(backend="triton", corr="ondemand")),
        ("bf16", dict(backend="triton", dtype="bf16")),
        ("fp16", dict(backend="triton", dtype="fp16")),
    ],
)
def test_gpu_backends_stay_within_their_drift(builtin, drift_pairs, reference_flows, reference_epe, name, options):
    flows = engine_flows(builtin, drift_pairs, device="cuda", **options)
    check_drift(name, flows, drift_pairs, reference_flows, reference_epe, distance=False)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_onnx_runtime_stays_within_its_drift(builtin, drift_pairs, reference_flows, reference_epe, tmp_path, dtype):
    pytest.importorskip("onnxruntime")
    from raft_engine.export import OrtFlowSession, export_onnx

    report = export_onnx(
        builtin, tmp_path / "builtin.onnx", iters=DRIFT_SET["iters"],
        height=DRIFT_SET["height"], width=DRIFT_SET["width"], dtype=dtype,
    )  # fmt: skip
    session = OrtFlowSession(report.path, providers="cpu")
    flows = flows_of(lambda a, b: session(a, b)[0].permute(1, 2, 0).numpy(), drift_pairs)
    check_drift(f"onnx-{dtype}", flows, drift_pairs, reference_flows, reference_epe)


def test_cli_uses_the_builtin_model_by_default(tmp_path, drift_pairs, builtin, capsys):
    pair = drift_pairs[0]
    Image.fromarray(pair.image1).save(tmp_path / "a.png")
    Image.fromarray(pair.image2).save(tmp_path / "b.png")
    code = main(["flow", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                 "--flo", str(tmp_path / "f.flo"), "--iters", "12", "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    expected = FlowEngine(builtin, device="cpu")(pair.image1, pair.image2, iters=12)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(read_flo(tmp_path / "f.flo"), expected, rtol=0, atol=1e-4)


def test_demo_writes_the_sheet_and_prints_the_epe(tmp_path, builtin, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "-o", str(out), "--seed", "3", "--height", "192", "--width", "256", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    pair = generate_pair(3, 192, 256)
    estimated = read_flo(out / "flow.flo")
    np.testing.assert_array_equal(read_flo(out / "truth.flo"), pair.flow)
    epe = np.linalg.norm(estimated - pair.flow, axis=2).mean()
    assert re.search(rf"EPE {epe:.2f} px", printed), printed
    # Seed 3 at 192x256 (objects move by up to 26 px), float32 on the CPU: 1.58020 px measured (the
    # README's 3.68 px is at the default 384x512, which tests/test_readme.py runs). One iteration more or
    # less moves it by 5e-3 to 9e-3 px (11: 1.57539, 13: 1.58891), so it is bounded to 1e-3 px.
    (shown,) = re.findall(r"EPE ([0-9.]+) px", printed)
    assert shown == "1.58", printed
    torch.testing.assert_close(float(epe), 1.5802, rtol=0, atol=1e-3)
    assert Image.open(out / "demo.png").size == (2 * 256 + 10, 2 * 192 + 50)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame1.png")), pair.image1)
    for name in ("frame2.png", "flow.png", "truth.png"):
        assert Image.open(out / name).size == (256, 192)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(TRAINING_SEED_START)], "--seed must be in 0..999999"),
        (["--seed", "-1"], "--seed must be in"),
        (["--iters", "0"], "--iters must be >= 1"),
        (["--width", "100"], "at least 121"),
        (["--weights", "no-such-weights"], "no-such-weights"),
    ],
)
def test_demo_refuses_bad_requests(tmp_path, capsys, args, message):
    code = main(["demo", "-o", str(tmp_path / "d"), *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "d" / "demo.png").exists()
