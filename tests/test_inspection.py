"""Inspection: the trace is consistent with the model itself, and its pictures are written."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import rel_error
from PIL import Image

from raft_engine import FlowEngine
from raft_engine.cli import main
from raft_engine.interpreter import interpreting
from raft_engine.tools.inspection_html import write_report

# A cell on every level's integer grid (8 = 2^3) and one with odd coordinates.
PIXELS = [(64 + 3, 64 + 5), (8 * 13 + 1, 8 * 3 + 7)]  # cells (8, 8) and (13, 3) of the 128x160 pair


def bilinear(values: np.ndarray, x: float, y: float) -> float:
    """Bilinear sample with zero outside, in pixel coordinates (the lookup's definition)."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    total = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= yi < values.shape[0] and 0 <= xi < values.shape[1]:
                total += weight * values[yi, xi]
    return total


@pytest.fixture(scope="module")
def traced(official_small, reference):
    engine = FlowEngine(official_small, device="cpu")
    return engine, engine.trace(reference["image1"], reference["image2"], iters=5, pixels=PIXELS)


def test_whole_image_tensors(traced):
    _, trace = traced
    assert trace.fmap1.shape == trace.fmap2.shape == (1, 128, 16, 20)
    assert trace.context.shape == (1, 64, 16, 20) and trace.hidden.shape == (1, 96, 16, 20)
    assert trace.hidden.abs().max() <= 1  # after tanh
    assert trace.context.min() >= 0  # after ReLU
    assert len(trace.motion_features) == len(trace.delta_flow) == len(trace.flow_low) == 5
    assert trace.motion_features[0].shape == (1, 82, 16, 20)
    torch.testing.assert_close(trace.flow_low[1] - trace.flow_low[0], trace.delta_flow[1])


def test_final_flow_equals_estimate(traced, reference):
    engine, trace = traced
    result = engine.estimate(reference["image1"], reference["image2"], iters=5)
    torch.testing.assert_close(trace.flow, result.flow, rtol=0, atol=0)
    torch.testing.assert_close(trace.flow_low[-1], result.flow_low, rtol=0, atol=0)


def test_pixels_map_to_their_cells_and_correspondences_add_up(traced):
    _, trace = traced
    assert [p.cell for p in trace.pixels] == [(8, 8), (13, 3)]
    for pixel in trace.pixels:
        x, y = pixel.cell
        assert pixel.correspondence.shape == (6, 2)
        np.testing.assert_array_equal(pixel.correspondence[0], [x, y])  # zero initial flow
        # flow_low is coords1 - coords0 in float32: the same subtraction, exactly.
        np.testing.assert_array_equal(
            pixel.correspondence[-1] - pixel.correspondence[0], trace.flow_low[-1][0, :, y, x].numpy()
        )
        assert [r.shape for r in pixel.response] == [(16, 20), (8, 10), (4, 5), (2, 2)]


def test_first_window_is_the_response_around_the_cell(traced):
    """Iteration 0, zero initial flow: the window is the response map sampled around the cell (a crop
    where the centre is on the level's grid), in image orientation."""
    _, trace = traced
    radius = trace.radius
    for pixel in trace.pixels:
        x, y = pixel.cell
        for level, response in enumerate(pixel.response):
            cx, cy = x / 2**level, y / 2**level
            expected = np.array(
                [
                    [bilinear(response, cx + dx, cy + dy) for dx in range(-radius, radius + 1)]
                    for dy in range(-radius, radius + 1)
                ]
            )
            # float32 sampling against float64: measured at most 3.8e-6 on responses up to 26.
            np.testing.assert_allclose(pixel.window[0][level], expected, rtol=1e-5, atol=1e-5)
    # Cell (8, 8) is on every level's grid: level 0's window is a plain crop, zero-padded.
    level0 = trace.pixels[0].response[0]
    padded = np.pad(level0, radius)
    np.testing.assert_allclose(
        trace.pixels[0].window[0][0], padded[8 : 8 + 2 * radius + 1, 8 : 8 + 2 * radius + 1], rtol=1e-5, atol=1e-5
    )


def test_windows_follow_the_correspondences(traced):
    _, trace = traced
    pixel = trace.pixels[1]
    for k in (2, 4):
        cx, cy = pixel.correspondence[k]
        expected = np.array(
            [[bilinear(pixel.response[1], cx / 2 + dx, cy / 2 + dy) for dx in range(-3, 4)] for dy in range(-3, 4)]
        )
        np.testing.assert_allclose(pixel.window[k][1], expected, rtol=1e-5, atol=1e-5)  # measured 1.9e-6


@pytest.mark.parametrize("backend, corr", [("torch", "ondemand"), ("triton", "volume"), ("triton", "ondemand")])
def test_every_backend_traces_the_same(traced, official_small, reference, backend, corr):
    if backend == "triton" and not interpreting():
        pytest.skip("Triton on the CPU needs the interpreter")
    _, expected = traced
    engine = FlowEngine(official_small, device="cpu", backend=backend, corr=corr)
    trace = engine.trace(reference["image1"], reference["image2"], iters=5, pixels=PIXELS)
    # All float32, summed in other orders. Measured: flow relative error at most 4.4e-7, largest difference
    # 3.1e-5 px on flows up to 26 px; responses and windows (values up to 42) differ by at most 9.5e-6.
    assert rel_error(trace.flow, expected.flow) < 1e-5
    torch.testing.assert_close(trace.flow, expected.flow, rtol=1e-5, atol=1e-4)
    for ours, theirs in zip(trace.pixels, expected.pixels, strict=True):
        for a, b in zip(ours.response, theirs.response, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.window[3][2], theirs.window[3][2], rtol=1e-5, atol=1e-5)


def test_warm_start_trace(traced, reference):
    """With flow_init, each pixel's first correspondence is its cell plus flow_init there (float32, exactly),
    and the traced flow is `estimate`'s with the same flow_init."""
    engine, _ = traced
    image1, image2 = reference["image1"], reference["image2"]
    generator = torch.Generator().manual_seed(3)
    flow_init = 6 * torch.rand(1, 2, 16, 20, generator=generator) - 3  # up to 3 cells, not on the grid
    trace = engine.trace(image1, image2, iters=2, pixels=PIXELS, flow_init=flow_init)
    for pixel in trace.pixels:
        x, y = pixel.cell
        start = torch.tensor([x, y], dtype=torch.float32) + flow_init[0, :, y, x]
        np.testing.assert_array_equal(pixel.correspondence[0], start.numpy())
    result = engine.estimate(image1, image2, iters=2, flow_init=flow_init)
    torch.testing.assert_close(trace.flow, result.flow, rtol=0, atol=0)
    torch.testing.assert_close(trace.flow_low[-1], result.flow_low, rtol=0, atol=0)


def test_bad_requests(traced, reference):
    engine, _ = traced
    image1, image2 = reference["image1"], reference["image2"]
    with pytest.raises(ValueError, match=r"test pixel \(x=160, y=3\) is outside the 160x128 \(WxH\) image"):
        engine.trace(image1, image2, iters=1, pixels=[(160, 3)])
    with pytest.raises(ValueError, match=r"\(x=-1, y=0\) is outside"):
        engine.trace(image1, image2, iters=1, pixels=[(-1, 0)])
    with pytest.raises(TypeError, match="an \\(x, y\\) pair of numbers"):
        engine.trace(image1, image2, iters=1, pixels=[(1, 2, 3)])
    with pytest.raises(ValueError, match="trace takes one pair of images, got a batch of 2"):
        engine.trace(np.stack([image1, image1]), np.stack([image2, image2]), iters=1)


def test_pictures_are_written_and_decodable(traced, reference, tmp_path):
    _, trace = traced
    files = write_report(trace, reference["image1"], tmp_path)
    names = {f.name for f in files}
    assert {"flow.png", "image1.png", "fmap1.png", "context.png", "hidden.png", "motion.gif", "index.html"} <= names
    for i in (1, 2):
        assert f"pixel{i}_windows.png" in names
        for level in range(4):
            with Image.open(tmp_path / f"pixel{i}_level{level}.gif") as gif:
                assert gif.n_frames == 6  # the start and the 5 updates
    for path in files:
        assert path.stat().st_size > 0
        if path.suffix in (".png", ".gif"):
            with Image.open(path) as image:
                image.load()
    page = (tmp_path / "index.html").read_text()
    assert set(re.findall(r'src="([^"]+)"', page)) == names - {"index.html"}


def test_inspect_command(tmp_path, reference, capsys):
    from synthetic import synthetic_state_dict

    Image.fromarray(reference["image1"]).save(tmp_path / "a.png")
    Image.fromarray(reference["image2"]).save(tmp_path / "b.png")
    torch.save(synthetic_state_dict("official_small"), tmp_path / "w.pth")
    code = main(
        [
            "inspect",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--weights",
            str(tmp_path / "w.pth"),
            "--pixel",
            "10,20",
            "--pixel",
            "100.5,7",
            "--iters",
            "2",
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "open" in capsys.readouterr().out
    assert (tmp_path / "out" / "pixel2_level3.gif").is_file()
    code = main(
        [
            "inspect",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--weights",
            str(tmp_path / "w.pth"),
            "--pixel",
            "999,1",
            "-o",
            str(tmp_path / "bad"),
            "--device",
            "cpu",
        ]
    )
    assert code == 1 and "outside the 160x128" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", "a.png", "b.png", "--weights", "w.pth", "--pixel", "ten,20"])
    assert "expected X,Y" in capsys.readouterr().err
