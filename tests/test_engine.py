"""FlowEngine: input forms, padding, warm start, precision modes, and the errors of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rel_error
from PIL import Image

from raft_engine import FlowEngine, FlowResult
from raft_engine.inputs import Padder


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
        torch.testing.assert_close(batched.flow[i], single.flow[0], rtol=1e-4, atol=1e-4)


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


def test_kitti_padding_changes_the_result(random_small, pair):
    sintel = FlowEngine(random_small, device="cpu", padding="sintel").estimate(*pair, iters=2)
    kitti = FlowEngine(random_small, device="cpu", padding="kitti").estimate(*pair, iters=2)
    assert kitti.flow.shape == sintel.flow.shape
    assert not torch.allclose(kitti.flow, sintel.flow)


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


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_stays_close_to_fp32(official_small, reference, dtype):
    image1, image2 = reference["image1"], reference["image2"]
    reference_flow = FlowEngine(official_small, device="cpu").estimate(image1, image2, iters=6).flow
    half = FlowEngine(official_small, device="cpu", dtype=dtype)
    assert half.model.fnet.conv1.weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    result = half.estimate(image1, image2, iters=6)
    assert result.flow.dtype == torch.float32 and result.flow_low.dtype == torch.float32
    # Synthetic weights, 6 iterations: bf16 (8-bit mantissa) measured 1.3e-2, fp16 2.0e-3.
    assert rel_error(result.flow, reference_flow) < {"bf16": 3e-2, "fp16": 5e-3}[dtype]


def test_corr_auto_follows_the_memory_budget(official_small, reference, caplog):
    image1, image2 = reference["image1"], reference["image2"]  # 128x160: a 16x20 grid
    dense_bytes = 4 * (320 * 320 + 320 * 80 + 320 * 20 + 320 * 4)
    roomy = FlowEngine(official_small, device="cpu", corr_budget=dense_bytes)
    tight = FlowEngine(official_small, device="cpu", corr_budget=dense_bytes - 1)
    assert roomy.corr_mode_for(1, 128, 160) == "volume"
    with caplog.at_level("INFO", logger="raft_engine.engine"):
        assert tight.corr_mode_for(1, 128, 160) == "ondemand"
    assert "chose 'ondemand' for 1 pair(s) of 128x160" in caplog.text
    assert tight.corr_mode_for(2, 128, 160) == "ondemand" and roomy.corr_mode_for(2, 128, 160) == "ondemand"
    torch.testing.assert_close(tight(image1, image2, iters=4), roomy(image1, image2, iters=4), rtol=1e-5, atol=1e-4)
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
