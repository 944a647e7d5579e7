"""Forward and backward flow in one call, and the occlusion masks of the forward-backward check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rel_error
from PIL import Image

from raft_engine import FlowEngine, forward_backward_check, load_model
from raft_engine.cli import main
from raft_engine.interpreter import interpreting
from raft_engine.io import read_flo
from raft_engine.model.correlation import DenseCorrelation, OnDemandCorrelation
from raft_engine.scenes import Layer, Pose, generate_pair, generate_sequence, occlusion_between

# The bound for each direction against its own `estimate`: float32 rounding of a batch of 2B
# instead of B and of a transposed product. Measured up to 1.1e-6 on the CPU.
EXACT = 1e-5


# ------------------------------------------------------------------------------------------------
# The check


def _check_by_hand(forward: np.ndarray, backward: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """A pixel at a time, in float64: the definition, with b read bilinearly at x + f(x)."""
    _, height, width = forward.shape
    occluded = np.zeros((height, width), bool)
    for y in range(height):
        for x in range(width):
            tx, ty = x + forward[0, y, x], y + forward[1, y, x]
            if not (0 <= tx <= width - 1 and 0 <= ty <= height - 1):
                occluded[y, x] = True
                continue
            x0, y0 = min(int(np.floor(tx)), width - 2), min(int(np.floor(ty)), height - 2)
            fx, fy = tx - x0, ty - y0
            b = (
                backward[:, y0, x0] * (1 - fx) * (1 - fy)
                + backward[:, y0, x0 + 1] * fx * (1 - fy)
                + backward[:, y0 + 1, x0] * (1 - fx) * fy
                + backward[:, y0 + 1, x0 + 1] * fx * fy
            )
            f = forward[:, y, x]
            occluded[y, x] = ((f + b) ** 2).sum() > alpha1 * ((f**2).sum() + (b**2).sum()) + alpha2
    return occluded


def test_the_check_is_its_definition():
    generator = torch.Generator().manual_seed(0)
    forward = torch.randn(2, 2, 9, 11, generator=generator, dtype=torch.float64) * 3
    backward = -forward + torch.randn(2, 2, 9, 11, generator=generator, dtype=torch.float64) * 0.6
    for alpha1, alpha2 in ((0.01, 0.5), (0.1, 0.0), (0.0, 2.0)):
        mask = forward_backward_check(forward, backward, alpha1, alpha2)
        assert mask.shape == (2, 9, 11) and mask.dtype == torch.bool
        for k in range(2):
            expected = _check_by_hand(forward[k].numpy(), backward[k].numpy(), alpha1, alpha2)
            np.testing.assert_array_equal(mask[k].numpy(), expected)
        assert 0 < mask.float().mean() < 1  # both outcomes occur


def test_hand_computed_cases():
    height, width = 6, 10
    shift = torch.zeros(1, 2, height, width)
    shift[:, 0] = 3.0
    # A consistent translation: only the targets past the right edge (x + 3 > 9, the last 3 columns).
    mask = forward_backward_check(shift, -shift)
    assert mask[0, :, :7].sum() == 0 and mask[0, :, 7:].all()
    # No backward flow at all: |f + b|^2 = 9 > 0.01 * 9 + 0.5 everywhere.
    assert forward_backward_check(shift, torch.zeros_like(shift))[0, :, :7].all()
    # Half a pixel off: 0.25 <= 0.0025 + 0.5, confirmed.
    assert not forward_backward_check(shift * 0 + torch.tensor([0.5, 0.0]).view(1, 2, 1, 1), torch.zeros_like(shift))[
        0, :, :9
    ].any()
    # Bilinear, not nearest: b alternates -1 and 0 along x, read half way between at x + 0.5: exactly -0.5.
    half = torch.zeros(1, 2, height, width)
    half[:, 0] = 0.5
    alternating = torch.zeros(1, 2, height, width)
    alternating[:, 0, :, ::2] = -1.0
    mask = forward_backward_check(half, alternating, alpha1=0.0, alpha2=0.0)
    assert not mask[0, :, 0:8:2].any()  # even x: between -1 at x and 0 at x + 1 -> -0.5, cancels 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha1": -0.1}, "alpha1 must be a finite number >= 0"),
        ({"alpha2": float("nan")}, "alpha2 must be a finite number >= 0"),
        ({"alpha1": "0.1"}, "alpha1 must be a number"),
    ],
)
def test_the_check_refuses_bad_constants(kwargs, message):
    flow = torch.zeros(1, 2, 4, 4)
    with pytest.raises((ValueError, TypeError), match=message):
        forward_backward_check(flow, flow, **kwargs)


def test_the_check_refuses_bad_flows():
    flow = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="forward is .* but backward is"):
        forward_backward_check(flow, torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="floating-point .B, 2, H, W. flow"):
        forward_backward_check(torch.zeros(2, 4, 4), flow)
    with pytest.raises(TypeError, match="backward must be a torch tensor"):
        forward_backward_check(flow, np.zeros((1, 2, 4, 4)))


# ------------------------------------------------------------------------------------------------
# The correlation of both directions


def test_both_directions_from_one_product():
    generator = torch.Generator().manual_seed(1)
    fmap1, fmap2 = torch.randn(2, 2, 32, 7, 9, generator=generator)
    for storage in (torch.float32, torch.float16):
        part = DenseCorrelation(levels=2, radius=3, storage_dtype=storage)
        both = part.build_bidirectional(fmap1, fmap2)
        forward, backward = part.build(fmap1, fmap2), part.build(fmap2, fmap1)
        for level, (got, one, other) in enumerate(zip(both, forward, backward, strict=True)):
            rows = one.shape[0]
            torch.testing.assert_close(got[:rows], one, rtol=0, atol=0)  # the same product, the same bits
            # The backward volume is the forward one transposed: its own product sums in another order.
            tolerance = 1e-6 if storage == torch.float32 else 2e-3 * (level + 1)
            torch.testing.assert_close(got[rows:].float(), other.float(), rtol=tolerance, atol=tolerance)
    ondemand = OnDemandCorrelation(levels=2, radius=3)
    state_fmap1, state_pyramid = ondemand.build_bidirectional(fmap1, fmap2)
    assert state_fmap1.shape[0] == 4 and torch.equal(state_fmap1[2:], fmap2.permute(0, 2, 3, 1))
    assert torch.equal(state_pyramid[0][:2], fmap2.permute(0, 2, 3, 1))


# ------------------------------------------------------------------------------------------------
# FlowEngine.bidirectional


@pytest.fixture(scope="module")
def pair():
    scene = generate_pair(7, 123, 157)  # odd: both paddings pad
    return scene.image1, scene.image2


BACKENDS = [("torch", "volume"), ("torch", "ondemand")]
if interpreting():
    BACKENDS += [("triton", "volume"), ("triton", "ondemand")]


@pytest.mark.parametrize(("backend", "corr"), BACKENDS)
@pytest.mark.parametrize("padding", ["sintel", "kitti"])
def test_each_direction_equals_its_own_estimate(pair, backend, corr, padding):
    engine = FlowEngine(load_model("builtin"), device="cpu", backend=backend, corr=corr, padding=padding)
    result = engine.bidirectional(*pair, iters=2)
    forward, backward = engine.estimate(*pair, iters=2), engine.estimate(pair[1], pair[0], iters=2)
    assert rel_error(result.forward.flow, forward.flow) < EXACT
    assert rel_error(result.backward.flow, backward.flow) < EXACT
    assert rel_error(result.forward.flow_low, forward.flow_low) < EXACT
    assert rel_error(result.backward.flow_low, backward.flow_low) < EXACT
    assert result.occlusion.shape == result.occlusion_backward.shape == (1, 123, 157)
    # The masks are the check of the returned flows, computed on the device.
    torch.testing.assert_close(result.occlusion, forward_backward_check(result.forward.flow, result.backward.flow))
    torch.testing.assert_close(
        result.occlusion_backward, forward_backward_check(result.backward.flow, result.forward.flow)
    )


def test_a_large_model_and_a_batch(pair, official_large):
    engine = FlowEngine(official_large, device="cpu")
    image1 = np.stack([pair[0], pair[1]])
    image2 = np.stack([pair[1], pair[0]])
    result = engine.bidirectional(image1, image2, iters=2)
    assert rel_error(result.forward.flow, engine.estimate(image1, image2, iters=2).flow) < EXACT
    assert rel_error(result.backward.flow, engine.estimate(image2, image1, iters=2).flow) < EXACT
    assert result.occlusion.shape == (2, 123, 157)


def test_warm_start_takes_a_pair_of_flows(pair):
    engine = FlowEngine(load_model("builtin"), device="cpu")
    first = engine.bidirectional(*pair, iters=2)
    init = (first.forward.flow_low, first.backward.flow_low)
    again = engine.bidirectional(*pair, iters=2, flow_init=init)
    expected = engine.estimate(pair[1], pair[0], iters=2, flow_init=first.backward.flow_low)
    assert rel_error(again.backward.flow, expected.flow) < EXACT
    with pytest.raises(TypeError, match="flow_init must be a pair .forward, backward."):
        engine.bidirectional(*pair, flow_init=first.forward.flow_low)
    with pytest.raises(ValueError, match=r"flow_init\[1\] \(backward\) has shape"):
        engine.bidirectional(*pair, flow_init=(init[0], init[1][..., :-1]))
    with pytest.raises(ValueError, match="alpha1 must be a finite number >= 0"):
        engine.bidirectional(*pair, alpha1=-1.0)


def test_a_sequence_in_both_directions_encodes_each_frame_once():
    clip = generate_sequence(3, frames=4, height=128, width=136)
    engine = FlowEngine(load_model("builtin"), device="cpu")
    encoded = []
    hook = engine.model.fnet.register_forward_hook(lambda module, inputs, output: encoded.append(output.shape[0]))
    try:
        results = list(engine.sequence(clip.frames, iters=2, batch_size=2, bidirectional=True))
    finally:
        hook.remove()
    assert sum(encoded) == 4 and len(results) == 3
    for k, result in enumerate(results):
        expected = engine.bidirectional(clip.frames[k], clip.frames[k + 1], iters=2)
        assert rel_error(result.forward.flow, expected.forward.flow) < EXACT
        assert rel_error(result.backward.flow, expected.backward.flow) < EXACT
        assert torch.equal(result.occlusion, expected.occlusion)
    with pytest.raises(ValueError, match="warm_start and bidirectional together are not supported"):
        engine.sequence(clip.frames, warm_start=True, bidirectional=True)


def test_compiled_bidirectional_equals_eager(pair):
    eager = FlowEngine(load_model("builtin"), device="cpu")
    compiled = FlowEngine(load_model("builtin"), device="cpu", compile=True)
    expected, result = eager.bidirectional(*pair, iters=2), compiled.bidirectional(*pair, iters=2)
    assert rel_error(result.forward.flow, expected.forward.flow) < EXACT
    assert rel_error(result.backward.flow, expected.backward.flow) < EXACT


# ------------------------------------------------------------------------------------------------
# Exact occlusion of generated scenes


def _texture() -> torch.Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_exact_occlusion_of_hand_built_layers():
    """A static background and a 11x11 box moving 10 px right (then one leaving the frame)."""
    height, width = 40, 64
    background = Layer(_texture(), "full", (), Pose((32, 20), 0, 1), Pose((32, 20), 0, 1))
    box = Layer(_texture(), "box", (5.0, 5.0), Pose((20, 20), 0, 1), Pose((30, 20), 0, 1))
    layers = [background, box]
    mask = occlusion_between(layers, [l.pose1 for l in layers], [l.pose2 for l in layers], height, width).numpy()  # noqa: E741
    ys, xs = np.mgrid[0:height, 0:width]
    rows = np.abs(ys - 20) <= 5
    # The background the box covers in frame 2 (x from 25 to 35) but not in frame 1 (x from 15 to 25).
    expected = rows & (xs > 25) & (xs <= 35)
    np.testing.assert_array_equal(mask, expected)
    # The same box moving to x = 70, mostly out of the frame: its pixels whose target leaves it.
    leaving = Layer(_texture(), "box", (5.0, 5.0), Pose((50, 20), 0, 1), Pose((70, 20), 0, 1))
    layers = [background, leaving]
    mask = occlusion_between(layers, [l.pose1 for l in layers], [l.pose2 for l in layers], height, width).numpy()  # noqa: E741
    on_box = rows & (np.abs(xs - 50) <= 5)
    np.testing.assert_array_equal(mask[on_box], (xs + 20 >= width - 0.5)[on_box])
    # Static: nothing occluded.
    static = [background, Layer(_texture(), "box", (5.0, 5.0), Pose((20, 20), 0, 1), Pose((20, 20), 0, 1))]
    assert not occlusion_between(static, [l.pose1 for l in static], [l.pose2 for l in static], height, width).any()  # noqa: E741


def test_generated_pairs_and_clips_carry_their_occlusion():
    scene = generate_pair(5, 64, 96)
    assert scene.occlusion.shape == (64, 96) and 0 < scene.occlusion.mean() < 0.5
    assert scene.flow_backward.shape == (64, 96, 2) and scene.occlusion_backward.shape == (64, 96)
    flows = [torch.from_numpy(f).permute(2, 0, 1)[None] for f in (scene.flow, scene.flow_backward)]
    # The check on the exact flows finds most of the exact occlusion (its own ceiling).
    found = forward_backward_check(*flows)[0].numpy()
    assert (found & scene.occlusion).sum() / scene.occlusion.sum() > 0.9
    clip = generate_sequence(5, frames=3, height=64, width=96)
    assert len(clip.occlusions) == 2 and clip.pair(1).occlusion is clip.occlusions[1]


# ------------------------------------------------------------------------------------------------
# Command line


def _save(image: np.ndarray, path) -> str:
    Image.fromarray(image).save(path)
    return str(path)


def test_pair_command_writes_both_directions_and_the_masks(pair, tmp_path, capsys):
    frames = [_save(image, tmp_path / f"{k}.png") for k, image in enumerate(pair)]
    out = {name: tmp_path / f"{name}.{ext}" for name, ext in (("back", "flo"), ("occ", "png"), ("occb", "png"))}
    argv = ["flow", *frames, "--iters", "2", "--device", "cpu", "-o", str(tmp_path / "f.png"), "--flo-back",
            str(out["back"]), "--occlusion", str(out["occ"]), "--occlusion-back", str(out["occb"])]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    expected = FlowEngine(load_model("builtin"), device="cpu").bidirectional(*pair, iters=2)
    assert rel_error(read_flo(out["back"]), expected.backward.flow[0].permute(1, 2, 0)) < EXACT
    occlusion = np.asarray(Image.open(out["occ"]))
    assert Image.open(out["occ"]).mode == "1"
    np.testing.assert_array_equal(occlusion, expected.occlusion[0].numpy())
    np.testing.assert_array_equal(np.asarray(Image.open(out["occb"])), expected.occlusion_backward[0].numpy())


def test_sequence_command_writes_both_directions_beside_each_other(tmp_path, capsys):
    clip = generate_sequence(4, frames=3, height=128, width=136)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(clip.frames):
        _save(frame, folder / f"f{k}.png")
    argv = ["flow", str(folder), "--iters", "2", "--device", "cpu", "--bidirectional", "--flo-dir",
            str(tmp_path / "flo"), "--occlusion-dir", str(tmp_path / "occ"), "-o",
            str(tmp_path / "pictures")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "flo").iterdir()) == [
        "f0.backward.flo", "f0.flo", "f1.backward.flo", "f1.flo",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "occ").iterdir()) == [
        "f0.backward.png", "f0.png", "f1.backward.png", "f1.png",
    ]  # fmt: skip
    assert (tmp_path / "pictures" / "f1.backward.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--occlusion-dir", "occ"], "--occlusion-dir needs --bidirectional"),
        (["--bidirectional", "--warm-start", "--flo-dir", "f"], "--warm-start and --bidirectional do not go together"),
        (["--occlusion", "o.png", "--flo-dir", "flo"], "--occlusion apply to a pair; for a sequence give"),
        (["--occlusion", "o.txt"], "--occlusion o.txt: expected a file ending in .png"),
    ],
)
def test_direction_options_are_checked(pair, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    frames = [_save(image, tmp_path / f"{k}.png") for k, image in enumerate(pair)]
    assert main(["flow", *frames, "--device", "cpu", *extra]) == 1
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# ONNX


def test_one_graph_for_both_directions(tmp_path, pair, capsys):
    from raft_engine.export import OrtFlowSession, export_onnx, triton_model_config

    model = load_model("builtin")
    report = export_onnx(
        model, tmp_path / "both.onnx", iters=2, height=128, width=136, dynamic_size=True, flow_low=True,
        bidirectional=True,
    )  # fmt: skip
    assert report.outputs == (
        "flow", "flow_backward", "occlusion", "occlusion_backward", "flow_low", "flow_low_backward",
    )  # fmt: skip
    session = OrtFlowSession(report.path, providers="cpu")
    engine = FlowEngine(model, device="cpu")
    for image1, image2 in (pair, (pair[0][:128, :136], pair[1][:128, :136])):  # padded, and not
        result, expected = session.bidirectional(image1, image2), engine.bidirectional(image1, image2, iters=2)
        assert rel_error(result.forward.flow, expected.forward.flow) < 1e-5
        assert rel_error(result.backward.flow, expected.backward.flow) < 1e-5
        assert rel_error(result.backward.flow_low, expected.backward.flow_low) < 1e-5
        assert (result.occlusion != expected.occlusion).float().mean() < 1e-3
        assert (result.occlusion_backward != expected.occlusion_backward).float().mean() < 1e-3
    # The one-way call of the same graph, and the Inference Server's configuration with the masks.
    assert rel_error(session.estimate(*pair).flow, engine.estimate(*pair, iters=2).flow) < 1e-5
    config = triton_model_config(report.path, max_batch_size=0)
    assert 'name: "occlusion_backward"\n    data_type: TYPE_BOOL' in config
    # The command line takes it; a one-way graph is refused for masks, in one line.
    frames = [_save(image, tmp_path / f"{k}.png") for k, image in enumerate(pair)]
    argv = ["flow", *frames, "-o", str(tmp_path / "f.png"), "--occlusion", str(tmp_path / "o.png")]
    assert main([*argv, "--onnx", str(report.path)]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "o.png")), engine.bidirectional(*pair, iters=2).occlusion[0].numpy()
    )
    one_way = export_onnx(model, tmp_path / "one.onnx", iters=1, height=128, width=160, verify=False)
    assert main([*argv, "--onnx", str(one_way.path)]) == 1
    assert "was exported one-way: export it with --bidirectional" in capsys.readouterr().err
