"""benchmarks/real_flow.py's measures: exact on known flows, and able to tell a wrong flow."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_flow.py"
spec = importlib.util.spec_from_file_location("real_flow", SCRIPT)
real_flow = importlib.util.module_from_spec(spec)
sys.modules["real_flow"] = real_flow  # dataclasses look their module up there
spec.loader.exec_module(real_flow)


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture, (H, W, 3) uint8: features at 4-16 px, enough for DIS and Farneback."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 6 + 2, width // 6 + 2))).float()
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (fine[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_endpoint_errors():
    truth = np.zeros((8, 10, 2), dtype=np.float32)
    assert real_flow.endpoint_errors(truth, truth) == {"epe": 0.0, "outliers": 0.0}
    wrong = truth + np.array([3.0, 4.0], dtype=np.float32)  # 5 px off everywhere
    assert real_flow.endpoint_errors(wrong, truth) == pytest.approx({"epe": 5.0, "outliers": 1.0})
    valid = np.zeros((8, 10), dtype=bool)
    valid[:, :5] = True
    partly = wrong.copy()
    partly[:, :5] = truth[:, :5] + np.array([1.0, 0.0])  # 1 px off where valid: counted; 5 px elsewhere: not
    assert real_flow.endpoint_errors(partly, truth, valid) == pytest.approx({"epe": 1.0, "outliers": 0.0})
    with pytest.raises(ValueError, match="no valid pixels"):
        real_flow.endpoint_errors(truth, truth, np.zeros((8, 10), dtype=bool))


def test_warped_photo_pairs_are_exact():
    """Frame 2 sampled at p + truth(p) reproduces frame 1 wherever the pixel is visible in both (to within
    bicubic-then-bilinear resampling: median under 1.5 levels), and a flow 2 px off does not; occluded
    pixels (piecewise) are left out of 'valid'."""
    pairs = real_flow.photo_pairs(("chelsea", "coffee"))
    assert [p["case"] for p in pairs] == ["affine", "homography", "piecewise"] * 2
    for pair in pairs:
        image1, image2, truth, valid = pair["image1"], pair["image2"], pair["flow"], pair["valid"]
        assert np.linalg.norm(truth, axis=-1).max() > 10
        assert 0.5 < valid.mean() < 1.0  # some pixels leave the frame or are occluded; most are seen
        warped, _ = real_flow.warp_back(image2.astype(np.float32), truth)
        error = np.abs(warped - image1).mean(-1)
        off, _ = real_flow.warp_back(image2.astype(np.float32), truth + np.float32(2))
        assert np.median(error[valid]) < 1.5, pair["name"]
        assert np.median(np.abs(off - image1).mean(-1)[valid]) > 3 * np.median(error[valid]) + 1, pair["name"]
        if pair["case"] == "piecewise":
            occluded = ~valid & (np.abs(truth).max(-1) > 0) & _inside(truth)
            assert occluded.sum() > 100 and np.median(error[occluded]) > 5 * np.median(error[valid])
        # Frame 1 is the photograph's own pixels wherever no piece is pasted.
    photo = (real_flow.photo_pairs(("chelsea",))[0]["image1"]).astype(int)
    from raft_engine.scenes import load_photo

    np.testing.assert_array_equal(photo, (load_photo("chelsea").permute(1, 2, 0).numpy() * 255).round().astype(int))


def _inside(flow: np.ndarray) -> np.ndarray:
    height, width = flow.shape[:2]
    target = real_flow.pixel_grid(height, width) + flow
    return (
        (target[..., 0] >= 0) & (target[..., 0] <= width - 1) & (target[..., 1] >= 0) & (target[..., 1] <= height - 1)
    )


def test_fb_check_passes_a_consistent_flow_and_masks_an_inconsistent_one():
    height, width = 12, 20
    forward = np.zeros((height, width, 2), dtype=np.float32)
    forward[..., 0] = 3.0
    consistent = real_flow.fb_consistent(forward, -forward)
    # Every pixel whose target x + 3 is inside frame 2 (x <= 16) passes; the last 3 columns leave the frame.
    assert consistent[:, :17].all() and not consistent[:, 17:].any()
    # Backward +3 px: |f + b|^2 = 36 > 0.01 * (9 + 9) + 0.5.
    assert not real_flow.fb_consistent(forward, forward).any()
    # Inconsistent in one region only: that region is masked, the rest passes.
    backward = -forward.copy()
    backward[4:8, 8:14] = 0.0
    mixed = real_flow.fb_consistent(forward, backward)
    assert not mixed[4:8, 5:11].any() and mixed[:4, :17].all()


def test_photometric_error_of_a_shift():
    image1 = _texture(40, 64)
    image2 = np.roll(image1, 2, axis=1)  # content moves 2 px right: flow (2, 0)
    flow = np.zeros((40, 64, 2), dtype=np.float32)
    flow[..., 0] = 2.0
    mask = np.zeros((40, 64), dtype=bool)
    mask[:, :60] = True
    error, count = real_flow.photometric_error(image1, image2, flow, mask)
    # Exact but for float32 rounding in grid_sample's normalised coordinates (measured 1e-5 level/pixel).
    assert count == 40 * 60 and error / count < 1e-3
    zero_error, _ = real_flow.photometric_error(image1, image2, np.zeros_like(flow), mask)
    assert zero_error / count > 2.0


def test_sintel_measure_on_an_exact_and_a_wrong_method():
    frames = [np.roll(_texture(48, 64, 1), 2 * k, axis=1) for k in range(3)]  # 2 px right per frame

    def exact(image1, image2):
        flow = np.zeros((48, 64, 2), dtype=np.float32)
        flow[..., 0] = 2.0 if image2 is not frames[0] and (image1 is frames[0] or image2 is frames[2]) else -2.0
        return flow

    good = real_flow.measure_sintel(exact, frames)
    assert good["pairs"] == 2 and good["photometric_error"] < 1e-3  # float32 rounding only
    assert good["fb_pass"] == pytest.approx(62 / 64)  # all but the 2 columns that leave the frame
    assert good["fb_residual"] < 1e-5
    zero = real_flow.measure_sintel(lambda a, b: np.zeros((48, 64, 2), dtype=np.float32), frames)
    assert zero["fb_pass"] == 1.0 and zero["photometric_error"] > 5.0 and zero["fb_residual"] == 0.0

    def drifting(image1, image2):  # both directions 0.5 px too far right: they miss by 1 px everywhere
        return exact(image1, image2) + np.array([0.5, 0.0], dtype=np.float32)

    assert real_flow.measure_sintel(drifting, frames)["fb_residual"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["dis-medium", "farneback"])
def test_opencv_methods_recover_a_translation(name):
    """Units and sign: both report (x, y) displacement of frame 1's pixels in px."""
    image1 = _texture(96, 128, 2)
    image2 = np.roll(image1, (-2, 3), axis=(0, 1))  # content moves 3 px right, 2 px up
    flow = real_flow.opencv_method(name)(image1, image2)
    assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
    centre = flow[24:72, 32:96].reshape(-1, 2)
    np.testing.assert_allclose(np.median(centre, axis=0), [3.0, -2.0], atol=0.3)


def test_stereo_convention():
    """Middlebury's disparity as left -> right flow (-d, 0): the warped right image matches the left
    best with this sign and scale and no vertical shift (as measured: median 2.9 levels; flipped 34)."""
    pair = real_flow.stereo_pair()
    check = real_flow.check_stereo_convention(pair)
    assert check["as_defined"] == min(check.values())
    assert check["sign_flipped"] > 5 * check["as_defined"]
    assert 0.85 < pair["valid"].mean() < 1.0 and (pair["flow"][pair["valid"], 0] < 0).all()


def test_command_line_writes_the_table_and_json(tmp_path, capsys, random_small):
    torch.save(random_small.state_dict(), tmp_path / "weights.pth")
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for k in range(2):
        Image.fromarray(np.roll(_texture(128, 128, 3), 2 * k, axis=1)).save(frames / f"frame_{k:04d}.png")
    report = real_flow.main(["--model", f"random={tmp_path / 'weights.pth'}", "--baselines", "dis-medium",
                             "--measures", "sintel", "--sintel", str(frames), "--iters", "1",
                             "--json", str(tmp_path / "out.json")])  # fmt: skip
    assert json.loads((tmp_path / "out.json").read_text()) == report
    assert set(report["methods"]) == {"random", "dis-medium"}
    assert report["methods"]["dis-medium"]["sintel"]["pairs"] == 1
    out = capsys.readouterr().out
    assert "sintel photo-err" in out and "random" in out and "dis-medium" in out
    assert math.isfinite(report["methods"]["random"]["sintel"]["photometric_error"])
