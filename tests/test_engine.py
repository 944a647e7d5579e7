"""FlowEngine: input forms, padding, warm start, precision modes, and the errors of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_error, to_tensor
from PIL import Image

from raft_engine import FlowEngine, FlowResult
from raft_engine.model.raft import coords_grid
from raft_engine.runtime.inputs import Padder

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def engine(random_small):
    return FlowEngine(random_small, device="cpu")


@pytest.fixture(scope="module")
def pair(reference):
    return reference["odd_image1"], reference["odd_image2"]


def test_result_shapes_and_types(engine, pair):
    result = engine.estimate(*pair, iters=3)
    assert isinstance(result, FlowResult)
    assert result.flow.shape == (1, 2, 123, 157) and result.flow.dtype == torch.float32
    assert result.flow_low.shape == (1, 2, 16, 20) and result.flow_low.dtype == torch.float32
    torch.testing.assert_close(engine(*pair, iters=3), result.flow)


def test_input_forms_agree(engine, pair):
    image1, image2 = pair
    expected = engine(image1, image2, iters=2)
    as_torch = [torch.from_numpy(x).permute(2, 0, 1) for x in pair]
    forms = {
        "numpy float": (image1.astype(np.float32), image2.astype(np.float64)),
        "numpy batch": (image1[None], image2[None]),
        "PIL": (Image.fromarray(image1), Image.fromarray(image2)),
        "torch uint8 CHW": tuple(as_torch),
        "torch float BCHW": tuple(x[None].float() for x in as_torch),
        "non-contiguous": tuple(
            torch.from_numpy(np.ascontiguousarray(x[:, ::-1])).flip(1).permute(2, 0, 1) for x in pair
        ),
    }
    for name, (a, b) in forms.items():
        torch.testing.assert_close(engine(a, b, iters=2), expected, msg=name)


def test_grayscale_becomes_three_channels(engine, pair):
    gray1, gray2 = (x.mean(axis=2).round().astype(np.uint8) for x in pair)
    expected = engine(np.repeat(gray1[..., None], 3, 2), np.repeat(gray2[..., None], 3, 2), iters=2)
    for a, b in [
        (gray1, gray2),
        (gray1[..., None], gray2[..., None]),
        (Image.fromarray(gray1), Image.fromarray(gray2)),
        (torch.from_numpy(gray1)[None], torch.from_numpy(gray2)[None]),
    ]:
        torch.testing.assert_close(engine(a, b, iters=2), expected)


def test_batch_matches_single_pairs(engine, reference, pair):
    batch1 = np.stack([reference["image1"][:123, :157], pair[0]])
    batch2 = np.stack([reference["image2"][:123, :157], pair[1]])
    batched = engine.estimate(batch1, batch2, iters=2)
    assert batched.flow.shape == (2, 2, 123, 157)
    for i in range(2):
        single = engine.estimate(batch1[i], batch2[i], iters=2)
        # Only the convolutions' blocking differs with the batch size. Measured: relative error 6.7e-7,
        # largest difference 7.4e-6 px on flows up to 1.4 px.
        assert rel_error(batched.flow[i], single.flow[0]) < 1e-5
        torch.testing.assert_close(batched.flow[i], single.flow[0], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(
    "mode, size, expected",
    [
        ("sintel", (123, 157), (1, 2, 2, 3)),  # (left, right, top, bottom)
        ("kitti", (123, 157), (1, 2, 0, 5)),
        ("sintel", (128, 160), (0, 0, 0, 0)),
        ("kitti", (375, 1242), (3, 3, 0, 1)),
    ],
)
def test_padding_conventions(mode, size, expected):
    padder = Padder(*size, mode)
    assert padder.pads == expected
    image = torch.rand(1, 3, *size)
    padded = padder.pad(image)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    torch.testing.assert_close(padder.unpad(padded), image)
    left, _, top, _ = expected
    torch.testing.assert_close(padded[..., :top, left : left + size[1]], image[..., :1, :].expand(-1, -1, top, -1))


def published_pads(height: int, width: int, mode: str) -> list[int]:
    """(left, right, top, bottom) as the published RAFT's InputPadder (core/utils/utils.py) computes them."""
    pad_ht = (((height // 8) + 1) * 8 - height) % 8
    pad_wd = (((width // 8) + 1) * 8 - width) % 8
    if mode == "sintel":
        return [pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2]
    return [pad_wd // 2, pad_wd - pad_wd // 2, 0, pad_ht]


def test_padding_modes_run_the_model_on_the_published_padding(official_small, pair):
    """123x157 pads by 5 rows and 3 columns: "kitti" puts all 5 rows at the bottom, "sintel" 2 on top and
    3 at the bottom; both 1 column left, 2 right. The engine's flow is the model's on the image padded
    by hand (replicate), cropped back."""
    height, width = pair[0].shape[:2]
    image1, image2 = (to_tensor(image) for image in pair)
    results = {}
    for mode, expected_pads in [("kitti", [1, 2, 0, 5]), ("sintel", [1, 2, 2, 3])]:
        pads = published_pads(height, width, mode)
        assert pads == expected_pads
        engine = FlowEngine(official_small, device="cpu", padding=mode)
        result = engine.estimate(*pair, iters=2)
        model = engine.model_for(engine.corr_mode_for(1, height, width))
        with torch.inference_mode():
            by_hand = model(F.pad(image1, pads, mode="replicate"), F.pad(image2, pads, mode="replicate"), iters=2)
        left, _, top, _ = pads
        # The same operations on the same numbers: measured bit-identical.
        torch.testing.assert_close(
            result.flow, by_hand.flow[..., top : top + height, left : left + width], rtol=1e-6, atol=1e-6
        )
        torch.testing.assert_close(result.flow_low, by_hand.flow_low, rtol=1e-6, atol=1e-6)
        results[mode] = result.flow
    # Not a vacuous match: the two paddings give different flows (measured relative difference 0.41).
    assert rel_error(results["kitti"], results["sintel"]) > 0.1


def test_warm_start_continues_the_iterations(official_small, reference):
    """flow_init moves every cell's starting correspondence: one iteration from a converged flow_low
    lands near that flow, one iteration from zero does not."""
    engine = FlowEngine(official_small, device="cpu")
    image1, image2 = reference["image1"], reference["image2"]
    first = engine.estimate(image1, image2, iters=6)
    warm = engine.estimate(image1, image2, iters=1, flow_init=first.flow_low)
    cold = engine.estimate(image1, image2, iters=1)
    assert rel_error(warm.flow, first.flow) < 0.5 * rel_error(cold.flow, first.flow)
    as_numpy = engine.estimate(image1, image2, iters=1, flow_init=first.flow_low.numpy())
    torch.testing.assert_close(as_numpy.flow, warm.flow)


def test_warm_start_is_the_iteration_from_coords0_plus_flow_init(official_small, reference):
    """The published warm start: coords1 = coords0 + flow_init, then the iterations. Run by hand from the
    engine's own model parts, it gives the engine's numbers."""
    engine = FlowEngine(official_small, device="cpu")
    image1, image2 = reference["image1"], reference["image2"]  # 128x160: no padding, a 16x20 grid
    flow_init = engine.estimate(image1, image2, iters=6).flow_low
    warm = engine.estimate(image1, image2, iters=2, flow_init=flow_init)
    model = engine.model_for(engine.corr_mode_for(1, 128, 160))
    with torch.inference_mode():
        fmap1, fmap2, net, inp = model.encode(to_tensor(image1), to_tensor(image2))
        corr_state = model.correlation.build(fmap1, fmap2)
        coords0 = coords_grid(1, 16, 20, fmap1.device)
        coords1 = coords0 + flow_init
        for _ in range(2):
            corr = model.correlation.lookup(corr_state, coords1)
            net, delta_flow = model.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta_flow
        flow_low = coords1 - coords0
        flow = model.upsample(flow_low, net)
    # The same operations on the same numbers: measured bit-identical.
    torch.testing.assert_close(warm.flow_low, flow_low, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(warm.flow, flow, rtol=1e-6, atol=1e-6)
    # Far from the cold start (measured relative difference 3.4), so the match pins flow_init's use; starting
    # from half of flow_init instead gives a relative difference of 0.66.
    cold = engine.estimate(image1, image2, iters=2)
    assert rel_error(warm.flow, cold.flow) > 1.0


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_stays_close_to_fp32(official_small, reference, dtype):
    image1, image2 = reference["image1"], reference["image2"]
    reference_flow = FlowEngine(official_small, device="cpu").estimate(image1, image2, iters=6).flow
    half = FlowEngine(official_small, device="cpu", dtype=dtype)
    assert half.model.fnet.conv1.weight.dtype == HALF[dtype]
    result = half.estimate(image1, image2, iters=6)
    assert result.flow.dtype == torch.float32 and result.flow_low.dtype == torch.float32
    # Synthetic weights, 6 iterations: bf16 (8-bit mantissa) measured 1.3e-2, fp16 2.0e-3.
    assert rel_error(result.flow, reference_flow) < {"bf16": 3e-2, "fp16": 5e-3}[dtype]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("variant", ["small", "large"])
def test_half_precision_casts_every_trained_tensor(request, dtype, variant):
    """Every floating-point parameter and buffer of fnet, cnet and update_block (RAFT-large's context
    BatchNorm statistics included) is in the compute dtype; integer buffers (num_batches_tracked) stay."""
    engine = FlowEngine(request.getfixturevalue(f"official_{variant}"), device="cpu", dtype=dtype)
    assert engine.model.compute_dtype == HALF[dtype]
    for name, part in engine.model.parts().items():
        tensors = dict(part.named_parameters()) | dict(part.named_buffers())
        floating = {key: t.dtype for key, t in tensors.items() if t.is_floating_point()}
        assert floating, name
        assert {key: d for key, d in floating.items() if d != HALF[dtype]} == {}, name
        assert all(t.dtype == torch.int64 for t in tensors.values() if not t.is_floating_point()), name
    if variant == "large":  # the context encoder's BatchNorm statistics are buffers, not parameters
        assert engine.model.cnet.norm1.running_var.dtype == HALF[dtype]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_keeps_correlation_and_coordinates_float32(official_small, reference, dtype):
    """The encoders' outputs come in the compute dtype, except the features, which go to the correlation
    in float32: both correlation states (default storage) are float32. (The flows: see above.)"""
    engine = FlowEngine(official_small, device="cpu", dtype=dtype)
    volume, ondemand = engine.model_for("volume"), engine.model_for("ondemand")
    assert volume.fnet is engine.model.fnet and ondemand.update_block is engine.model.update_block
    with torch.inference_mode():
        fmap1, fmap2, net, inp = volume.encode(to_tensor(reference["image1"]), to_tensor(reference["image2"]))
        pyramid = volume.correlation.build(fmap1, fmap2)
        features1, pyramid2 = ondemand.correlation.build(fmap1, fmap2)
    assert net.dtype == inp.dtype == HALF[dtype]
    assert fmap1.dtype == fmap2.dtype == torch.float32
    assert len(pyramid) == len(pyramid2) == 4
    assert {t.dtype for t in [*pyramid, features1, *pyramid2]} == {torch.float32}


def test_corr_auto_follows_the_memory_budget(official_small, reference, caplog):
    image1, image2 = reference["image1"], reference["image2"]  # 128x160: a 16x20 grid
    dense_bytes = 4 * (320 * 320 + 320 * 80 + 320 * 20 + 320 * 4)
    roomy = FlowEngine(official_small, device="cpu", corr_budget=dense_bytes)
    tight = FlowEngine(official_small, device="cpu", corr_budget=dense_bytes - 1)
    assert roomy.corr_mode_for(1, 128, 160) == "volume"
    with caplog.at_level("INFO", logger="raft_engine.runtime.engine"):
        assert tight.corr_mode_for(1, 128, 160) == "ondemand"
    assert "chose 'ondemand' for 1 pair(s) of 128x160" in caplog.text
    assert tight.corr_mode_for(2, 128, 160) == "ondemand" and roomy.corr_mode_for(2, 128, 160) == "ondemand"
    ondemand, volume = tight(image1, image2, iters=4), roomy(image1, image2, iters=4)
    # The same numbers summed in another order. Measured: relative error 4.5e-7, largest difference 3.0e-5 px
    # on flows up to 21 px.
    assert rel_error(ondemand, volume) < 1e-5
    torch.testing.assert_close(ondemand, volume, rtol=1e-5, atol=1e-4)
    assert FlowEngine(official_small, device="cpu", corr="volume", corr_budget=1).corr_mode_for(9, 999, 999) == "volume"


@pytest.mark.parametrize("corr", ["volume", "ondemand"])
@pytest.mark.parametrize("corr_dtype", ["fp16", "bf16"])
def test_half_precision_correlation_storage(official_small, reference, corr, corr_dtype):
    image1, image2 = reference["image1"], reference["image2"]
    exact = FlowEngine(official_small, device="cpu", corr=corr).estimate(image1, image2, iters=6).flow
    half = FlowEngine(official_small, device="cpu", corr=corr, corr_dtype=corr_dtype).estimate(image1, image2, iters=6)
    # Synthetic weights, 6 iterations; measured: fp16 1.9e-4 (volume) and 6.4e-5 (on-demand), bf16 1.6e-3 and 4.9e-4.
    assert rel_error(half.flow, exact) < {"fp16": 2e-3, "bf16": 1e-2}[corr_dtype]


def test_engine_does_not_modify_the_model(official_small):
    before = official_small.fnet.conv1.weight.clone()
    FlowEngine(official_small, device="cpu", dtype="bf16")
    assert official_small.fnet.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(official_small.fnet.conv1.weight, before)


def test_low_range_float_images_warn(engine, pair):
    with pytest.warns(UserWarning, match="within 0..1"):
        engine(pair[0] / 255.0, pair[1] / 255.0, iters=1)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 128, 136, 3), dtype=np.uint8)


def _bad(engine, a, b, match, error=ValueError, **kwargs):
    with pytest.raises(error, match=match):
        engine.estimate(a, b, **kwargs)


def test_mismatched_pairs(engine, images):
    a, b = images
    _bad(engine, a, b[:, :128], r"image sizes differ: image1 is 128x136 \(HxW\), image2 is 128x128")
    _bad(engine, np.stack([a, a]), b, "batch sizes differ: image1 has 2 images, image2 has 1")


def test_non_finite_and_out_of_range(engine, images):
    a, b = images
    nan = a.astype(np.float32)
    nan[3, 4, 1] = np.nan
    _bad(engine, nan, b, "image1 contains NaN or Inf")
    inf = b.astype(np.float32)
    inf[0, 0, 0] = np.inf
    _bad(engine, a, inf, "image2 contains NaN or Inf")
    _bad(engine, a.astype(np.float32) * 2, b, r"image1 has values outside 0..255 \(min 0, max 510\)")
    _bad(engine, a.astype(np.float32) - 1, b, "outside 0..255")


def test_wrong_types_shapes_and_channels(engine, images):
    a, b = images
    _bad(engine, a.astype(np.int32), b, "expected uint8 or floating-point values.*int32")
    _bad(
        engine,
        torch.from_numpy(a.astype(np.int16)).permute(2, 0, 1),
        b,
        "expected uint8 or floating-point values, got torch.int16",
    )
    _bad(engine, a[..., :2], b, "expected 3 \\(RGB\\) or 1 \\(grayscale\\) channels, got 2")
    _bad(engine, np.concatenate([a, a[..., :1]], axis=2), b, "got 4")
    _bad(engine, a[None, None], b, "got shape \\(1, 1, 128, 136, 3\\)")
    _bad(
        engine, [[1, 2], [3, 4]], b, "expected a numpy array, a torch tensor or a PIL image, got list", error=TypeError
    )
    _bad(engine, Image.fromarray(a).convert("RGBA"), b, "mode 'RGBA'")
    _bad(engine, a[:0], b, "empty")


def test_too_small(engine):
    small = np.zeros((120, 200, 3), np.uint8)
    _bad(engine, small, small, r"120x200 \(HxW\) are too small for RAFT: padded to 120x200.*at least 128x128")
    fine = np.full((121, 128, 3), 7, np.uint8)  # pads to 128x128
    assert engine(fine, fine, iters=1).shape == (1, 2, 121, 128)


def test_flow_init_shape_and_values(engine, images):
    a, b = images
    _bad(
        engine,
        a,
        b,
        r"flow_init has shape \(1, 2, 16, 16\), expected \(1, 2, 16, 17\)",
        flow_init=torch.zeros(1, 2, 16, 16),
    )
    _bad(engine, a, b, r"expected \(1, 2, 16, 17\)", flow_init=torch.zeros(2, 16, 17))
    _bad(engine, a, b, "flow_init must be a torch tensor or numpy array", error=TypeError, flow_init=[0.0])
    _bad(engine, a, b, "flow_init must be floating point", flow_init=torch.zeros(1, 2, 16, 17, dtype=torch.long))
    bad = torch.zeros(1, 2, 16, 17)
    bad[0, 1, 2, 3] = float("nan")
    _bad(engine, a, b, "flow_init contains NaN or Inf", flow_init=bad)


def test_iters_must_be_a_positive_integer(engine, images):
    a, b = images
    _bad(engine, a, b, "iters must be >= 1, got 0", iters=0)
    _bad(engine, a, b, "iters must be an integer, got float", error=TypeError, iters=2.0)
    _bad(engine, a, b, "iters must be an integer, got bool", error=TypeError, iters=True)


def test_unknown_options(random_small):
    with pytest.raises(ValueError, match="unsupported dtype 'fp8'"):
        FlowEngine(random_small, dtype="fp8")
    with pytest.raises(ValueError, match="unsupported dtype"):
        FlowEngine(random_small, dtype=torch.int8)
    with pytest.raises(ValueError, match="unknown padding 'middlebury'"):
        FlowEngine(random_small, padding="middlebury")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        FlowEngine(random_small, device="gpu0")
    with pytest.raises(TypeError, match="model must be a raft_engine.RAFT"):
        FlowEngine(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        FlowEngine(random_small, backend="cuda")
    with pytest.raises(ValueError, match="unknown corr 'sparse'"):
        FlowEngine(random_small, corr="sparse")
    with pytest.raises(ValueError, match="corr_budget must be a positive number of bytes"):
        FlowEngine(random_small, corr_budget=0)
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        FlowEngine(random_small, corr_dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda(random_small):
    with pytest.raises(ValueError, match="CUDA is not available"):
        FlowEngine(random_small, device="cuda")
