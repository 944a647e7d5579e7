"""raft-engine evaluate: the datasets' own layouts, the published metrics computed by hand, the
submissions with Sintel's warm start, the command line, and one clear error for each bad input.

Most tests run an `Oracle` instead of RAFT: it answers each pair with a flow chosen by the test (the
ground truth plus a known perturbation), so that every metric has a value worked out by hand. The
built-in RAFT-small checks the real path (padding, unpadding, the command line) against the engine
called directly, on generated scenes.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from raft_engine import FlowEngine, load_model
from raft_engine.cli import main
from raft_engine.cli.evaluate import evaluate_engine as _evaluate_engine
from raft_engine.cli.main import build_parser as _build_parser
from raft_engine.evaluation import evaluate, fl_outliers, format_table, write_submission
from raft_engine.io import read_flo, read_kitti_flow, write_flo, write_kitti_flow
from raft_engine.model.config import VARIANTS
from raft_engine.model.raft import FlowResult
from raft_engine.model.warm_start import forward_interpolate
from raft_engine.runtime.estimator import EstimatorSettings, pairwise_sequence
from raft_engine.runtime.inputs import Padder
from raft_engine.runtime.options import BACKENDS, CORR_MODES, DTYPE_NAMES, PADDING_MODES
from raft_engine.scenes import generate_pair

# ------------------------------------------------------------------------------------------------
# Helpers


def _image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _mask(path: Path, mask: np.ndarray) -> None:
    _image(path, (mask * 255).astype(np.uint8))


def _flo(path: Path, flow: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_flo(path, flow)


def _kitti(path: Path, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_kitti_flow(path, flow, valid)


def _frames(seed: int, height: int = 16, width: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct frames from a generated scene (the Oracle tells pairs apart by their first frame)."""
    pair = generate_pair(seed, height, width)
    return pair.image1, pair.image2


def _constant(height: int, width: int, u: float, v: float) -> np.ndarray:
    flow = np.empty((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = u, v
    return flow


class Oracle:
    """Stands in for FlowEngine: the flow it returns for a pair is the one the test set for its first
    frame (or, for unknown frames, the padded grid's coordinates / 64); it records every call."""

    settings = EstimatorSettings(variant="small", backend="oracle", dtype="fp32", device="cpu", corr="volume")

    def __init__(self) -> None:
        self.flows: dict[bytes, np.ndarray] = {}
        self.calls: list[SimpleNamespace] = []

    def describe(self, height=None, width=None) -> str:
        return "the oracle"

    def sequence(self, frames, iters=None, warm_start=False, batch_size=None, bidirectional=False, **alphas):
        return pairwise_sequence(self, frames, iters, warm_start, batch_size, bidirectional, **alphas)

    def bidirectional(self, image1, image2, iters=None, flow_init=None, alpha1=0.01, alpha2=0.5):
        raise AssertionError("evaluation runs one direction")

    def answer(self, image1: np.ndarray, flow: np.ndarray) -> None:
        self.flows[image1.tobytes()] = np.asarray(flow, np.float32)

    def estimate(self, image1, image2, iters=12, flow_init=None) -> FlowResult:
        _, _, height, width = image1.shape
        key = image1[0].permute(1, 2, 0).round().to(torch.uint8).numpy().tobytes()
        if key in self.flows:
            flow = torch.from_numpy(self.flows[key]).permute(2, 0, 1)[None]
        else:
            ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            flow = torch.stack([xs, ys]).float()[None] / 64
        # A different 1/8 flow per call, not constant (so that carrying it forward changes it).
        generator = torch.Generator().manual_seed(len(self.calls))
        low = torch.rand(1, 2, height // 8, width // 8, generator=generator) * 2 - 1
        self.calls.append(SimpleNamespace(iters=iters, flow_init=flow_init, low=low, image1=image1))
        return FlowResult(flow=flow, flow_low=low)


def _cli(args, capsys) -> tuple[int, str, str]:
    code = main(["evaluate", *(str(a) for a in args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("raft-engine: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Metrics by hand


def test_fl_outliers_need_both_conditions():
    epe = np.array([2.0, 4.0, 4.0, 10.0, 3.0])
    magnitude = np.array([1.0, 200.0, 50.0, 0.0, 1.0])
    # 2 px: under 3 px. 4 px of 200: 2% of the truth. 4 px of 50: 8%. 10 px of a zero flow: infinite.
    # 3 px exactly is not above 3 px.
    np.testing.assert_array_equal(fl_outliers(epe, magnitude), [False, False, True, True, False])


@pytest.fixture(scope="module")
def kitti_by_hand(tmp_path_factory):
    """KITTI 2015, two 16x16 pairs whose errors are known per pixel (see test_kitti_metrics_by_hand)."""
    root = tmp_path_factory.mktemp("kitti_hand")
    oracle = Oracle()
    rows = np.arange(16)[:, None] * np.ones((1, 16), int)

    # Pair 000000: truth (200, 0), valid rows 0..7; rows 0-3 off by (3, 4) (5 px, 2.5% of 200: no
    # outlier), rows 4-5 by (0, 4) (4 px, 2%), rows 6-7 exact; invalid rows 8-15 answered wildly.
    image1, image2 = _frames(11)
    _image(root / "training/image_2/000000_10.png", image1)
    _image(root / "training/image_2/000000_11.png", image2)
    truth = _constant(16, 16, 200, 0)
    _kitti(root / "training/flow_occ/000000_10.png", truth, rows < 8)
    _kitti(root / "training/flow_noc/000000_10.png", truth, rows < 4)
    answer = truth.copy()
    answer[0:4] += (3, 4)
    answer[4:6] += (0, 4)
    answer[8:] += (50, 50)
    oracle.answer(image1, answer)

    # Pair 000001: truth (0, 1) everywhere valid; rows 0-7 off by (0, 2) (2 px: under 3 px, so no
    # outlier though 200% of the truth), rows 8-9 by (3, 4) (5 px, 500%: outliers), rows 10-15 exact.
    image1, image2 = _frames(12)
    _image(root / "training/image_2/000001_10.png", image1)
    _image(root / "training/image_2/000001_11.png", image2)
    truth = _constant(16, 16, 0, 1)
    _kitti(root / "training/flow_occ/000001_10.png", truth)
    _kitti(root / "training/flow_noc/000001_10.png", truth, (rows >= 4) & (rows < 10))
    answer = truth.copy()
    answer[0:8] += (0, 2)
    answer[8:10] += (3, 4)
    oracle.answer(image1, answer)
    return root, oracle


def test_kitti_metrics_by_hand(kitti_by_hand):
    root, oracle = kitti_by_hand
    (record,) = evaluate(oracle, "kitti-2015", root)
    # Valid pixels: 128 of pair 0 (64 at 5 px, 32 at 4 px, 32 at 0) and 256 of pair 1 (128 at 2 px,
    # 32 at 5 px, 96 at 0): 384.
    # EPE per image, then over images (validate_kitti): pair 0 (320 + 128) / 128 = 3.5, pair 1
    # (256 + 160) / 256 = 1.625; mean 2.5625 (per pixel it would be 864 / 384 = 2.25).
    assert (record["dataset"], record["split"], record["pairs"], record["pixels"]) == ("kitti-2015", "training", 2, 384)
    assert record["epe"] == pytest.approx(2.5625, abs=1e-12)
    assert record["scenes"]["000000"]["epe"] == pytest.approx(3.5, abs=1e-12)
    assert record["scenes"]["000001"]["epe"] == pytest.approx(1.625, abs=1e-12)
    # Under 1 px: 32 + 96 = 128; under 3: + 128 = 256; under 5: + 32 (the 4 px ones) = 288; of 384.
    assert (record["px1"], record["px3"], record["px5"]) == pytest.approx((128 / 384, 256 / 384, 288 / 384), abs=1e-12)
    # Outliers: only the 32 pixels of pair 1 at 5 px (> 3 px and > 5% of 1 px); with `or` instead of
    # `and` it would be 96 + 160 = 256 of 384.
    assert record["fl_all"] == pytest.approx(32 / 384, abs=1e-12)
    # Non-occluded: pair 0 rows 0-3 (64 px at 5 px: 5.0), pair 1 rows 4-9 (64 at 2 px, 32 at 5 px:
    # 288 / 96 = 3.0); EPE (5 + 3) / 2 = 4, Fl 32 / 160.
    assert record["epe_noc"] == pytest.approx(4.0, abs=1e-12)
    assert record["fl_noc"] == pytest.approx(0.2, abs=1e-12)
    assert record["noc"]["pixels"] == 160
    assert record["occ"]["epe"] == record["epe"]
    assert (record["epe_matched"], record["epe_unmatched"]) == (None, None)
    # The published KITTI protocol: 24 iterations, "kitti" padding.
    assert (record["iters"], record["padding"], record["published_protocol"]) == (24, "kitti", True)
    assert [call.iters for call in oracle.calls[-2:]] == [24, 24]


@pytest.fixture(scope="module")
def sintel_by_hand(tmp_path_factory):
    """MPI-Sintel, scenes a (2 frames) and b (3 frames) of 16x16, clean and final, with occlusion and
    invalid masks; ground truth (1, 0) everywhere."""
    root = tmp_path_factory.mktemp("sintel_hand")
    oracle = Oracle()
    truth = _constant(16, 16, 1, 0)
    columns = np.ones((16, 1), int) * np.arange(16)[None, :]
    rows = columns.T
    nothing = np.zeros((16, 16), bool)
    # (scene, frame index) -> (occluded, invalid, perturbation of the clean answer)
    pairs = {
        ("a", 0): (columns < 4, nothing, [((columns < 4), (3, 4))]),  # 5 px where occluded
        ("b", 0): (nothing, nothing, [(columns >= 0, (0, 4))]),  # 4 px everywhere
        ("b", 1): (nothing, rows < 2, [(rows < 2, (0, 8))]),  # 8 px where invalid
    }
    seed = 100
    for dstype in ("clean", "final"):
        for scene, count in (("a", 2), ("b", 3)):
            frames = []
            for _ in range(count):
                seed += 1
                frames.append(_frames(seed)[0])
            for index, frame in enumerate(frames):
                _image(root / f"training/{dstype}/{scene}/frame_{index + 1:04d}.png", frame)
            for index in range(count - 1):
                occluded, invalid, perturbations = pairs[(scene, index)]
                name = f"{scene}/frame_{index + 1:04d}"
                _flo(root / f"training/flow/{name}.flo", truth)
                _mask(root / f"training/occlusions/{name}.png", occluded)
                _mask(root / f"training/invalid/{name}.png", invalid)
                answer = truth.copy()
                if dstype == "clean":  # the final pass is answered exactly
                    for where, offset in perturbations:
                        answer[where] += offset
                oracle.answer(frames[index], answer)
    return root, oracle


def test_sintel_metrics_by_hand(sintel_by_hand):
    root, oracle = sintel_by_hand
    clean, final = evaluate(oracle, "sintel", root)
    assert [(r["split"], r["pairs"], r["pixels"]) for r in (clean, final)] == [("clean", 3, 768), ("final", 3, 768)]
    # All 768 pixels count, the invalid ones too (validate_sintel): 64 at 5 px, 256 at 4 px, 32 at
    # 8 px: (320 + 1024 + 256) / 768.
    assert clean["epe"] == pytest.approx(1600 / 768, abs=1e-12)
    # Under 1 and 3 px: 192 + 224 exact pixels; under 5: + the 256 at 4 px.
    assert (clean["px1"], clean["px3"], clean["px5"]) == pytest.approx((416 / 768, 416 / 768, 672 / 768), abs=1e-12)
    # Every error above 3 px is an outlier of a 1 px truth: 64 + 256 + 32.
    assert clean["fl_all"] == pytest.approx(352 / 768, abs=1e-12)
    # Matched: not occluded and not invalid: 192 px at 0, 256 at 4 px, 224 at 0. Unmatched: 64 at 5 px.
    assert clean["epe_matched"] == pytest.approx(1024 / 672, abs=1e-12)
    assert clean["epe_unmatched"] == pytest.approx(5.0, abs=1e-12)
    assert (clean["matched"]["pixels"], clean["unmatched"]["pixels"], clean["invalid_pixels"]) == (672, 64, 32)
    assert clean["scenes"]["a"]["epe"] == pytest.approx(320 / 256, abs=1e-12)
    assert clean["scenes"]["b"]["epe"] == pytest.approx(1280 / 512, abs=1e-12)
    # The final pass reads its own frames, which the oracle answers exactly.
    assert (final["epe"], final["px1"], final["fl_all"], final["epe_unmatched"]) == (0.0, 1.0, 0.0, 0.0)
    assert (clean["iters"], clean["padding"], clean["published_protocol"]) == (32, "sintel", True)
    assert (clean["epe_noc"], clean["fl_noc"]) == (None, None)


def test_limit_split_and_overrides(sintel_by_hand):
    root, oracle = sintel_by_hand
    (record,) = evaluate(oracle, "sintel", root, split="clean", limit=1, iters=5, padding="kitti")
    # The first pair only: scene a, 5 px at its 64 occluded pixels.
    assert (record["pairs"], record["total_pairs"], record["limit"]) == (1, 3, 1)
    assert record["epe"] == pytest.approx(320 / 256, abs=1e-12)
    assert (record["iters"], record["padding"], record["published_protocol"]) == (5, "kitti", False)
    assert oracle.calls[-1].iters == 5
    table = format_table([record])
    assert "sintel" in table and "clean" in table and "1.250" in table and "unmatched" in table


# ------------------------------------------------------------------------------------------------
# The other layouts


def _perturbed(oracle: Oracle, image1: np.ndarray, truth: np.ndarray) -> None:
    """The oracle answers the truth plus (3, 4): 5 px at every pixel."""
    oracle.answer(image1, truth + np.array([3, 4], np.float32))


def _pair_on_disk(oracle: Oracle, seed: int, image1_path: Path, image2_path: Path, truth_path: Path) -> np.ndarray:
    """A generated 16x24 pair's frames and exact flow in a layout's files (KITTI PNG for a .png truth, else
    .flo); the oracle answers the truth as stored plus (3, 4). -> the exact flow."""
    image1, image2 = _frames(seed, 16, 24)
    _image(image1_path, image1)
    _image(image2_path, image2)
    flow = generate_pair(seed, 16, 24).flow
    if truth_path.suffix == ".png":
        _kitti(truth_path, flow)
        _perturbed(oracle, image1, read_kitti_flow(truth_path)[0])  # as stored: 1/64 px steps
    else:
        _flo(truth_path, flow)
        _perturbed(oracle, image1, flow)
    return flow


def test_kitti_2012_layout(tmp_path):
    oracle = Oracle()
    for number in range(2):
        frames = tmp_path / "training/colored_0"
        flow = _pair_on_disk(
            oracle,
            20 + number,
            frames / f"{number:06d}_10.png",
            frames / f"{number:06d}_11.png",
            tmp_path / f"training/flow_occ/{number:06d}_10.png",
        )
        _kitti(tmp_path / f"training/flow_noc/{number:06d}_10.png", flow)
    (record,) = evaluate(oracle, "kitti-2012", tmp_path)
    assert (record["dataset"], record["pairs"], sorted(record["scenes"])) == ("kitti-2012", 2, ["000000", "000001"])
    assert record["epe"] == pytest.approx(5.0, abs=1e-9)
    assert record["epe_noc"] == pytest.approx(5.0, abs=1e-9)
    assert (record["px3"], record["px5"]) == (0.0, 0.0)


def test_chairs_layout_and_split(tmp_path):
    oracle = Oracle()
    for number in range(1, 5):
        data = tmp_path / "data"
        _pair_on_disk(
            oracle,
            30 + number,
            data / f"{number:05d}_img1.ppm",
            data / f"{number:05d}_img2.ppm",
            data / f"{number:05d}_flow.flo",
        )
    (tmp_path / "FlyingChairs_train_val.txt").write_text("1\n2\n2\n1\n")
    (record,) = evaluate(oracle, "chairs", tmp_path)
    assert (record["split"], sorted(record["scenes"]), record["iters"]) == ("validation", ["00002", "00003"], 24)
    assert record["epe"] == pytest.approx(5.0, rel=1e-6)  # .flo truth + 3, + 4 rounds in float32
    (training,) = evaluate(oracle, "chairs", tmp_path, split="training")
    assert sorted(training["scenes"]) == ["00001", "00004"]


def test_middlebury_layout_leaves_out_unknown_flow(tmp_path):
    oracle = Oracle()
    for scene, seed in (("Grove2", 40), ("Venus", 41)):
        frames = [_frames(seed, 16, 24)[0], _frames(seed + 10, 16, 24)[0]]
        for number, frame in zip((10, 11), frames, strict=True):
            _image(tmp_path / f"other-data/{scene}/frame{number}.png", frame)
        flow = generate_pair(seed, 16, 24).flow
        answer = flow + np.array([3, 4], np.float32)
        flow[0] = 1e9  # Middlebury's unknown flow: row 0, 24 pixels
        answer[0] = 0  # answered 1e9 px off: counted, it would dominate
        _flo(tmp_path / f"other-gt-flow/{scene}/flow10.flo", flow)
        oracle.answer(frames[0], answer)
    (record,) = evaluate(oracle, "middlebury", tmp_path)
    assert (record["split"], record["pairs"], record["pixels"]) == ("other", 2, 2 * (384 - 24))
    assert record["epe"] == pytest.approx(5.0, rel=1e-6)
    assert sorted(record["scenes"]) == ["Grove2", "Venus"]


def test_hd1k_layout(tmp_path):
    oracle = Oracle()
    for sequence, count in ((0, 3), (1, 2)):
        for frame in range(count):
            image1 = _frames(50 + 10 * sequence + frame, 16, 24)[0]
            name = f"{sequence:06d}_{frame:04d}.png"
            _image(tmp_path / "hd1k_input/image_2" / name, image1)
            flow = generate_pair(50 + 10 * sequence + frame, 16, 24).flow
            _kitti(tmp_path / "hd1k_flow_gt/flow_occ" / name, flow)
            _perturbed(oracle, image1, read_kitti_flow(tmp_path / "hd1k_flow_gt/flow_occ" / name)[0])
    (record,) = evaluate(oracle, "hd1k", tmp_path)
    # Consecutive frames within each sequence: 2 + 1 pairs.
    assert {name: s["pairs"] for name, s in record["scenes"].items()} == {"000000": 2, "000001": 1}
    assert record["epe"] == pytest.approx(5.0, abs=1e-9)
    assert (record["iters"], record["padding"]) == (24, "kitti")


def test_list_layout(tmp_path, capsys):
    oracle = Oracle()
    lines = ["# image1 image2 flow"]
    for number in range(2):
        clip = tmp_path / "clip"
        _pair_on_disk(oracle, 60 + number, clip / f"{number}a.png", clip / f"{number}b.png", clip / f"{number}.flo")
        lines.append(f"clip/{number}a.png clip/{number}b.png clip/{number}.flo")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n\n")
    # A list has no published protocol: the iterations are given, and the record says so.
    with pytest.raises(ValueError, match="list has no published protocol to take the iterations from: give iters"):
        evaluate(oracle, "list", tmp_path / "pairs.txt")
    (record,) = evaluate(oracle, "list", tmp_path / "pairs.txt", iters=7)
    assert (record["dataset"], record["split"], record["pairs"]) == ("list", "pairs", 2)
    assert record["epe"] == pytest.approx(5.0, rel=1e-6)
    # .flo truth: Sintel's padding and averaging, but not a published protocol.
    assert (record["iters"], record["padding"], record["published_protocol"]) == (7, "sintel", False)
    code, _, err = _cli(["--dataset", "list", "--root", tmp_path / "pairs.txt", "--device", "cpu"], capsys)
    assert "--dataset list has no published protocol to take the iterations from: give --iters" in _one_line_error(
        code, err
    )


# ------------------------------------------------------------------------------------------------
# Submissions


@pytest.fixture(scope="module")
def sintel_test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sintel_test")
    for dstype in ("clean", "final"):
        for scene, count in (("a", 2), ("b", 3)):
            for index in range(count):
                seed = 200 + 10 * (dstype == "final") + 5 * (scene == "b") + index
                _image(root / f"test/{dstype}/{scene}/frame_{index + 1:04d}.png", _frames(seed)[0])
    return root


def test_sintel_submission_warm_start(sintel_test_set, tmp_path):
    oracle = Oracle()
    files = write_submission(oracle, "sintel", sintel_test_set, tmp_path)
    expected = [f"{d}/{s}/frame{n:04d}.flo" for d in ("clean", "final") for s, n in (("a", 1), ("b", 1), ("b", 2))]
    assert [f.relative_to(tmp_path).as_posix() for f in files] == expected
    assert [call.iters for call in oracle.calls] == [32] * 6
    for first in (0, 3):  # each pass: a/1, b/1, b/2
        a1, b1, b2 = oracle.calls[first : first + 3]
        # Each scene starts cold; within one, the previous pair's 1/8 flow carried forward.
        assert a1.flow_init is None and b1.flow_init is None
        torch.testing.assert_close(b2.flow_init, forward_interpolate(b1.low), rtol=0, atol=0)
        assert not torch.equal(b2.flow_init, b1.low)
    # What is written is the flow estimated for the pair (the oracle's padded-grid coordinates / 64).
    ys, xs = np.mgrid[0:16, 0:16]
    np.testing.assert_array_equal(read_flo(files[0]), np.stack([xs, ys], axis=-1) / 64)

    cold = Oracle()
    write_submission(cold, "sintel", sintel_test_set, tmp_path / "cold", warm_start=False)
    assert [call.flow_init for call in cold.calls] == [None] * 6


def test_kitti_submission_pads_and_writes_png(tmp_path):
    root = tmp_path / "kitti"
    for number in range(2):
        image1, image2 = _frames(70 + number, 20, 30)
        _image(root / f"testing/image_2/{number:06d}_10.png", image1)
        _image(root / f"testing/image_2/{number:06d}_11.png", image2)
    oracle = Oracle()
    files = write_submission(oracle, "kitti-2015", root, tmp_path / "out")
    assert [f.name for f in files] == ["000000_10.png", "000001_10.png"]
    # "kitti" padding: 20x30 -> 24x32, all 4 rows at the bottom, 1 column each side; the oracle answers
    # each padded pixel with its coordinates / 64, so the crop shows where the padding went.
    assert tuple(oracle.calls[0].image1.shape[-2:]) == (24, 32)
    left, _, top, _ = Padder(20, 30, "kitti").pads
    assert (left, top) == (1, 0)
    flow, valid = read_kitti_flow(files[0])
    ys, xs = np.mgrid[0:20, 0:30]
    np.testing.assert_array_equal(flow, np.stack([xs + 1, ys], axis=-1) / 64)
    assert valid.all() and [call.iters for call in oracle.calls] == [24, 24]


def test_submission_of_a_dataset_without_test_server(tmp_path):
    with pytest.raises(ValueError, match="submissions are written for sintel, kitti-2015 and kitti-2012"):
        write_submission(Oracle(), "chairs", tmp_path, tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# Exported graphs


class FakeSession(Oracle):
    """What evaluate reads of an OrtFlowSession: its metadata, input size, path; no flow_init."""

    def __init__(self, height: int, width: int, iterations: int) -> None:
        super().__init__()
        self.settings = EstimatorSettings(
            variant="small",
            backend="onnxruntime (CPUExecutionProvider)",
            dtype="fp32",
            device="cpu",
            corr="volume",
            source="raft.onnx",
            iters=iterations,
            runs_own_iters=True,
            size=(height, width),
            batch=1,
            takes_flow_init=False,
        )

    def estimate(self, image1, image2, iters=None, flow_init=None):
        assert iters == self.settings.iters and flow_init is None  # what a graph takes
        return super().estimate(image1, image2, iters=None, flow_init=None)


def test_exported_graph_runs_its_own_iterations(sintel_by_hand):
    root, oracle = sintel_by_hand
    session = FakeSession(16, 16, 12)
    session.flows = oracle.flows
    with pytest.warns(UserWarning, match="runs 12 iterations; the published protocol uses 32"):
        clean, _ = evaluate(session, "sintel", root)
    assert (clean["iters"], clean["onnx"], clean["backend"]) == (12, "raft.onnx", "onnxruntime (CPUExecutionProvider)")
    assert clean["epe"] == pytest.approx(1600 / 768, abs=1e-12)
    with pytest.raises(ValueError, match="exported with 12 iterations, not 32"):
        evaluate(session, "sintel", root, iters=32)


def test_exported_graph_refuses_other_sizes(sintel_by_hand, sintel_test_set, tmp_path):
    root, _ = sintel_by_hand
    with pytest.raises(ValueError) as error:
        evaluate(FakeSession(16, 24, 32), "sintel", root)
    message = str(error.value)
    assert "frame_0001.png" in message and "16x16" in message and "exported for 16x24" in message
    with pytest.raises(ValueError, match="warm start needs flow_init"):
        write_submission(FakeSession(16, 16, 32), "sintel", sintel_test_set, tmp_path)


# ------------------------------------------------------------------------------------------------
# The real model: the command line against the engine called directly


def _scene_mask_from_flow(flow: np.ndarray) -> np.ndarray:
    """Out-of-view occlusion: pixels whose flow leaves the frame."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)


@pytest.fixture(scope="module")
def model():
    return load_model("builtin")


def test_cli_sintel_matches_the_engine(model, tmp_path, capsys):
    # 132x164 pads (sintel) to 136x168: 2 rows and 2 columns each side.
    root = tmp_path / "Sintel"
    pairs = [generate_pair(seed, 132, 164, max_displacement=30) for seed in (5, 6, 7)]
    scenes = {"a": [pairs[0].image1, pairs[0].image2], "b": [pairs[1].image1, pairs[1].image2, pairs[2].image2]}
    truths = {("a", 0): pairs[0].flow, ("b", 0): pairs[1].flow, ("b", 1): pairs[2].flow}
    for scene, frames in scenes.items():
        for index, frame in enumerate(frames):
            _image(root / f"training/clean/{scene}/frame_{index + 1:04d}.png", frame)
    for (scene, index), flow in truths.items():
        _flo(root / f"training/flow/{scene}/frame_{index + 1:04d}.flo", flow)
        _mask(root / f"training/occlusions/{scene}/frame_{index + 1:04d}.png", _scene_mask_from_flow(flow))
    code, out, err = _cli(
        ["--dataset", "sintel", "--root", root, "--split", "clean", "--iters", 2, "--device", "cpu", "--json",
         tmp_path / "out.json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (record,) = json.loads((tmp_path / "out.json").read_text())["records"]

    engine = FlowEngine(model, device="cpu")  # pads by itself ("sintel")
    errors, occluded = [], []
    for (scene, index), truth in truths.items():
        flow = engine(scenes[scene][index], scenes[scene][index + 1], iters=2)[0].permute(1, 2, 0).numpy()
        errors.append(np.linalg.norm(flow.astype(np.float64) - truth, axis=-1).ravel())
        occluded.append(_scene_mask_from_flow(truth).ravel())
    epe, occ = np.concatenate(errors), np.concatenate(occluded)
    assert 0 < occ.sum() < occ.size, "the scenes should have some out-of-view pixels"
    assert record["epe"] == pytest.approx(epe.mean(), rel=1e-6)
    assert record["px1"] == pytest.approx((epe < 1).mean(), abs=1e-9)
    assert record["epe_matched"] == pytest.approx(epe[~occ].mean(), rel=1e-6)
    assert record["epe_unmatched"] == pytest.approx(epe[occ].mean(), rel=1e-6)
    assert record["invalid_pixels"] == 0  # no invalid/ folder: none
    expected = {"dataset": "sintel", "split": "clean", "pairs": 3, "weights": "builtin", "iters": 2}
    expected |= {"padding": "sintel", "backend": "torch", "dtype": "fp32", "device": "cpu", "published_protocol": False}
    assert {key: record[key] for key in expected} == expected
    assert sorted(record["scenes"]) == ["a", "b"] and record["scenes"]["b"]["pairs"] == 2
    # The table: a header and one row, the EPE as printed.
    assert "RAFT-small (builtin), 2 iterations, sintel padding, torch, fp32, cpu" in out
    assert f"{record['epe']:.3f}" in out.splitlines()[-1]


def test_cli_kitti_pads_as_kitti(model, tmp_path, capsys):
    # 130x170: "kitti" padding puts all 6 rows at the bottom, "sintel" would split them 3 and 3.
    root = tmp_path / "KITTI"
    pair = generate_pair(8, 130, 170, max_displacement=30)
    valid = np.random.default_rng(0).random((130, 170)) < 0.7
    _image(root / "training/image_2/000000_10.png", pair.image1)
    _image(root / "training/image_2/000000_11.png", pair.image2)
    _kitti(root / "training/flow_occ/000000_10.png", pair.flow, valid)
    code, out, err = _cli(
        ["--dataset", "kitti", "--root", root, "--iters", 2, "--device", "cpu", "--json", tmp_path / "k.json"], capsys
    )
    assert code == 0, err
    (record,) = json.loads((tmp_path / "k.json").read_text())["records"]
    truth, valid = read_kitti_flow(root / "training/flow_occ/000000_10.png")
    errors = {}
    for padding in ("kitti", "sintel"):
        engine = FlowEngine(model, device="cpu", padding=padding)
        flow = engine(pair.image1, pair.image2, iters=2)[0].permute(1, 2, 0).numpy().astype(np.float64)
        errors[padding] = np.linalg.norm(flow - truth, axis=-1)[valid]
    assert record["epe"] == pytest.approx(errors["kitti"].mean(), rel=1e-6)
    # The other padding gives another flow: the comparison above can tell them apart.
    assert abs(errors["sintel"].mean() - errors["kitti"].mean()) > 1e-4
    outliers = fl_outliers(errors["kitti"], np.linalg.norm(truth, axis=-1)[valid])
    assert record["fl_all"] == pytest.approx(outliers.mean(), abs=1e-9) and 0 < record["fl_all"] < 1
    assert (record["dataset"], record["padding"], record["pixels"]) == ("kitti-2015", "kitti", int(valid.sum()))
    assert "Fl-all" in out


# ------------------------------------------------------------------------------------------------
# Command-line options and bad input


def test_evaluate_uses_the_shared_options():
    parser = _build_parser()._subparsers._group_actions[0].choices["evaluate"]
    library = {"backend": BACKENDS, "corr": CORR_MODES, "padding": PADDING_MODES, "dtype": DTYPE_NAMES}
    for name in ("weights", "iters", "device", "dtype", "padding", "backend", "corr"):
        action = parser._option_string_actions[f"--{name}"]
        assert action.default is None and action.choices == library.get(name) and "default" in action.help, name
    assert "--variant" not in parser._option_string_actions and VARIANTS  # not offered: the checkpoint says
    args = parser.parse_args(["--dataset", "sintel", "--root", "x", "--compile", "--device", "cpu"])
    engine, weights = _evaluate_engine(args)
    assert isinstance(engine, FlowEngine) and engine.compiled is not None and weights == "builtin"
    with pytest.raises(SystemExit):  # --weights and --onnx exclude each other (argparse's usage error)
        parser.parse_args(["--dataset", "sintel", "--root", "x", "--weights", "w.pth", "--onnx", "g.onnx"])


def _truncated_zlib_png(path: Path) -> None:
    """A KITTI PNG whose compressed stream ends early, with every chunk's checksum right."""
    data = path.read_bytes()
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    payload = data[start + 8 : start + 8 + length][: length // 2]
    chunk = struct.pack(">I", len(payload)) + b"IDAT" + payload + struct.pack(">I", zlib.crc32(b"IDAT" + payload))
    path.write_bytes(data[:start] + chunk + data[start + 12 + length :])


@pytest.fixture
def small_sintel(tmp_path):
    """One valid Sintel pair of 16x16 and its files, to spoil one at a time."""
    root = tmp_path / "Sintel"
    image1, image2 = _frames(90)
    _image(root / "training/clean/a/frame_0001.png", image1)
    _image(root / "training/clean/a/frame_0002.png", image2)
    _flo(root / "training/flow/a/frame_0001.flo", generate_pair(90, 16, 16).flow)
    return root


def test_bad_dataset_name_and_roots(small_sintel, tmp_path, capsys):
    code, _, err = _cli(["--dataset", "sintel3", "--root", small_sintel], capsys)
    line = _one_line_error(code, err)
    assert "unknown dataset 'sintel3'" in line and "kitti-2015" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    for dataset, expected in (
        ("sintel", empty / "training/clean"),
        ("kitti-2015", empty / "training/image_2"),
        ("kitti-2012", empty / "training/colored_0"),
        ("chairs", empty / "data"),
        ("middlebury", empty / "other-gt-flow"),
        ("hd1k", empty / "hd1k_input/image_2"),
    ):
        code, _, err = _cli(["--dataset", dataset, "--root", empty, "--device", "cpu"], capsys)
        assert f"expected the folder {expected}" in _one_line_error(code, err), dataset
    (small_sintel / "training/flow/a/frame_0001.flo").unlink()
    code, _, err = _cli(["--dataset", "sintel", "--root", small_sintel, "--device", "cpu"], capsys)
    assert f"expected {small_sintel / 'training/flow/a/frame_0001.flo'}" in _one_line_error(code, err)
    (empty / "data").mkdir()
    code, _, err = _cli(["--dataset", "chairs", "--root", empty, "--device", "cpu"], capsys)
    assert str(empty / "FlyingChairs_train_val.txt") in _one_line_error(code, err)


def _spoil(root: Path, how: str) -> tuple[Path, str]:
    """Spoil one file of `small_sintel` -> (the file, what the error must say)."""
    flo = root / "training/flow/a/frame_0001.flo"
    if how == "flo magic":
        flo.write_bytes(b"PIEX" + flo.read_bytes()[4:])
        return flo, "not a Middlebury .flo file"
    if how == "flo truncated":
        flo.write_bytes(flo.read_bytes()[:-10])
        return flo, "does not match the file size"
    if how == "flo size":
        write_flo(flo, np.zeros((16, 20, 2), np.float32))
        return flo, "is 16x20 (HxW), but its image"
    if how == "image sizes":
        second = root / "training/clean/a/frame_0002.png"
        _image(second, _frames(91, 16, 24)[1])
        return second, "is 16x24 (HxW), but"
    if how == "image corrupt":
        first = root / "training/clean/a/frame_0001.png"
        first.write_bytes(first.read_bytes()[:60])
        return first, "is not an image file Pillow can read"
    mask = root / "training/occlusions/a/frame_0001.png"
    mask.parent.mkdir(parents=True)
    mask.write_bytes(b"not a png")
    return mask, "cannot read mask"


@pytest.mark.parametrize(
    "how", ["flo magic", "flo truncated", "flo size", "image sizes", "image corrupt", "mask corrupt"]
)
def test_bad_sintel_files_are_one_line_naming_the_file(small_sintel, capsys, how):
    path, says = _spoil(small_sintel, how)
    code, _, err = _cli(["--dataset", "sintel", "--root", small_sintel, "--split", "clean", "--device", "cpu"], capsys)
    line = _one_line_error(code, err)
    assert str(path) in line and says in line, line


@pytest.mark.parametrize("how", ["truncated file", "truncated stream", "8-bit"])
def test_bad_kitti_png_is_one_line_naming_the_file(tmp_path, capsys, how):
    root = tmp_path / "KITTI"
    image1, image2 = _frames(92)
    _image(root / "training/image_2/000000_10.png", image1)
    _image(root / "training/image_2/000000_11.png", image2)
    png = root / "training/flow_occ/000000_10.png"
    _kitti(png, generate_pair(92, 16, 16).flow)
    if how == "truncated file":
        png.write_bytes(png.read_bytes()[:-30])
    elif how == "truncated stream":
        _truncated_zlib_png(png)
    else:
        _image(png, image1)  # an 8-bit picture where the 16-bit flow should be
    code, _, err = _cli(["--dataset", "kitti", "--root", root, "--device", "cpu"], capsys)
    assert str(png) in _one_line_error(code, err)


def test_bad_options_are_one_line(small_sintel, tmp_path, capsys):
    for args, says in (
        (["--limit", 0], "--limit must be >= 1"),
        (["--iters", 0], "--iters must be >= 1"),
        (["--split", "albedo"], "sintel has the splits clean, final, not 'albedo'"),
        (["--no-warm-start"], "--no-warm-start applies with --submit only"),
        (["--providers", "cpu"], "--providers applies with --onnx only"),
        (["--onnx", tmp_path / "g.onnx", "--compile"], "--device, --compile do(es) not apply with --onnx"),
    ):
        code, _, err = _cli(["--dataset", "sintel", "--root", small_sintel, "--device", "cpu", *args], capsys)
        assert says in _one_line_error(code, err), args


def test_sintel_submission_with_the_engine(model, tmp_path):
    # The warm start through the real engine: the second pair starts from the first's 1/8 flow carried
    # forward, on the padded grid (132x164 pads to 136x168: a 17x21 grid).
    root = tmp_path / "Sintel"
    pair, other = generate_pair(9, 132, 164, max_displacement=20), generate_pair(10, 132, 164, max_displacement=20)
    frames = [pair.image1, pair.image2, other.image2]
    for index, frame in enumerate(frames):
        _image(root / f"test/clean/s/frame_{index + 1:04d}.png", frame)
        _image(root / f"test/final/s/frame_{index + 1:04d}.png", frame)
    engine = FlowEngine(model, device="cpu")
    files = write_submission(engine, "sintel", root, tmp_path / "out", iters=2)
    assert [f.relative_to(tmp_path / "out").as_posix() for f in files[:2]] == [
        "clean/s/frame0001.flo",
        "clean/s/frame0002.flo",
    ]
    first = engine.estimate(frames[0], frames[1], iters=2)
    second = engine.estimate(frames[1], frames[2], iters=2, flow_init=forward_interpolate(first.flow_low))
    cold = engine.estimate(frames[1], frames[2], iters=2)
    np.testing.assert_allclose(read_flo(files[1]), second.flow[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-5)
    assert np.abs(read_flo(files[1]) - cold.flow[0].permute(1, 2, 0).numpy()).max() > 1e-3  # warm differs


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from raft_engine.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "raft-small-128x160.onnx"
    export_onnx(model, path, iters=2, height=128, width=160, verify=False)
    return path


def test_cli_onnx_matches_the_engine(model, exported, tmp_path, capsys):
    root = tmp_path / "FlyingChairs_release"
    pair = generate_pair(12, 128, 160, max_displacement=20)
    _image(root / "data/00001_img1.ppm", pair.image1)
    _image(root / "data/00001_img2.ppm", pair.image2)
    _flo(root / "data/00001_flow.flo", pair.flow)
    (root / "FlyingChairs_train_val.txt").write_text("2\n")
    base = ["--dataset", "chairs", "--root", root, "--json"]
    code, _, err = _cli([*base, tmp_path / "onnx.json", "--onnx", exported, "--providers", "cpu"], capsys)
    assert code == 0, err
    # The graph's 2 iterations, not the protocol's 24: said once, on stderr.
    assert "raft-engine: warning:" in err and "published protocol uses 24" in err
    (onnx,) = json.loads((tmp_path / "onnx.json").read_text())["records"]
    code, _, err = _cli([*base, tmp_path / "torch.json", "--iters", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    (torch_record,) = json.loads((tmp_path / "torch.json").read_text())["records"]
    assert (onnx["onnx"], onnx["iters"], onnx["backend"]) == (str(exported), 2, "onnxruntime (CPUExecutionProvider)")
    # ONNX Runtime and PyTorch float32 agree to about 1e-5 px on the flow (test_export's bound).
    assert onnx["epe"] == pytest.approx(torch_record["epe"], abs=1e-4)
    # A pair of another size: one line naming the frame and both sizes.
    _image(root / "data/00002_img1.ppm", pair.image1[:120])
    _image(root / "data/00002_img2.ppm", pair.image2[:120])
    _flo(root / "data/00002_flow.flo", pair.flow[:120])
    (root / "FlyingChairs_train_val.txt").write_text("2\n2\n")
    code, _, err = _cli([*base, tmp_path / "x.json", "--onnx", exported, "--providers", "cpu"], capsys)
    errors = "\n".join(line for line in err.splitlines() if not line.startswith("raft-engine: warning:"))
    line = _one_line_error(code, errors)
    assert str(root / "data/00002_img1.ppm") in line and "120x160" in line and "exported for 128x160" in line
