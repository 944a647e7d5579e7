"""Evaluation on the standard datasets with the published protocol, and the benchmarks' submissions.

`evaluate(engine, dataset, root)` runs every pair of a dataset's evaluation splits (as distributed;
see `raft_engine.evaluation.datasets`) and returns one record per split: EPE, the fractions of pixels with an
error under 1, 3 and 5 px, Fl-all, the matched/unmatched EPE (Sintel, where the occlusion masks
exist) and the non-occluded metrics (KITTI, where flow_noc exists), a per-scene breakdown and the
settings. It follows princeton-vl/RAFT's evaluate.py: validate_sintel (32 iterations, "sintel"
padding, EPE over all pixels of all pairs), validate_kitti (24 iterations, "kitti" padding, EPE per
image then over images, Fl-all over all valid pixels) and validate_chairs (24 iterations).

`write_submission(engine, dataset, root, output)` writes what the Sintel and KITTI servers score,
as create_sintel_submission (with its warm start) and create_kitti_submission.

`engine` is a `FlowEngine`, an `OrtFlowSession` (an exported graph: its iteration count and input
size are fixed) or any object with FlowEngine's `estimate(image1, image2, iters=, flow_init=)`. The
images are padded here, with the dataset's padding, before the engine sees them, so the engine's own
`padding` setting does not apply.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raft_engine.evaluation.datasets import GroundTruth, Sample, Split, load_splits, load_test_splits, read_ground_truth
from raft_engine.io import read_image, write_flo, write_kitti_flow
from raft_engine.model.warm_start import forward_interpolate
from raft_engine.runtime.engine import FlowEngine
from raft_engine.runtime.inputs import Padder, check_padding, positive_int

__all__ = ["Tally", "end_point_error", "evaluate", "fl_outliers", "format_table", "write_submission"]

# KITTI's outlier: an end-point error above 3 px and above 5% of the true flow's length.
OUTLIER_PX = 3.0
OUTLIER_FRACTION = 0.05
THRESHOLDS = (1.0, 3.0, 5.0)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def end_point_error(flow: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(H, W, 2) and (H, W, 2) -> (H, W) Euclidean distance, in float64."""
    return np.sqrt(np.square(flow.astype(np.float64) - truth.astype(np.float64)).sum(axis=-1))


def fl_outliers(epe: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """KITTI's outliers, as the published validate_kitti: error > 3 px and error / |truth| > 0.05 (both;
    a zero-length truth makes any error above 3 px an outlier)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (epe > OUTLIER_PX) & (epe / magnitude > OUTLIER_FRACTION)


@dataclass
class Tally:
    """The sums behind the metrics of a set of pairs: over pixels, and each pair's mean EPE."""

    pairs: int = 0
    pixels: int = 0
    epe_sum: float = 0.0
    under: list[int] = field(default_factory=lambda: [0] * len(THRESHOLDS))
    outliers: int = 0
    pair_epes: list[float] = field(default_factory=list)

    def add(self, epe: np.ndarray, magnitude: np.ndarray) -> None:
        """One pair: the errors and true flow lengths at its valid pixels (1-D). A pair without valid
        pixels counts as a pair but adds no mean (the published code would average in a NaN)."""
        self.pairs += 1
        if epe.size == 0:
            return
        self.pixels += int(epe.size)
        self.epe_sum += float(epe.sum())
        self.under = [count + int((epe < limit).sum()) for count, limit in zip(self.under, THRESHOLDS, strict=True)]
        self.outliers += int(fl_outliers(epe, magnitude).sum())
        self.pair_epes.append(float(epe.mean()))

    def summary(self, per_image_epe: bool) -> dict[str, Any]:
        """pairs, pixels, epe, px1, px3, px5, fl_all (fractions in 0..1; None without valid pixels).
        per_image_epe: EPE as the mean of the pairs' means (validate_kitti), else over all pixels."""
        result: dict[str, Any] = {"pairs": self.pairs, "pixels": self.pixels}
        if not self.pixels:
            return {**result, "epe": None, "px1": None, "px3": None, "px5": None, "fl_all": None}
        epe = float(np.mean(self.pair_epes)) if per_image_epe else self.epe_sum / self.pixels
        fractions = {
            f"px{int(limit)}": count / self.pixels for count, limit in zip(self.under, THRESHOLDS, strict=True)
        }
        return {**result, "epe": epe, **fractions, "fl_all": self.outliers / self.pixels}


class _SplitTally:
    """The tallies of one split: all valid pixels, per scene, and the masked subsets where they exist."""

    def __init__(self) -> None:
        self.all = Tally()
        self.scenes: dict[str, Tally] = {}
        self.noc: Tally | None = None
        self.matched: Tally | None = None
        self.unmatched: Tally | None = None
        self.invalid_pixels = 0

    def add(self, scene: str, flow: np.ndarray, truth: GroundTruth) -> None:
        epe = end_point_error(flow, truth.flow)
        magnitude = np.linalg.norm(truth.flow.astype(np.float64), axis=-1)
        valid = truth.valid
        self.all.add(epe[valid], magnitude[valid])
        self.scenes.setdefault(scene, Tally()).add(epe[valid], magnitude[valid])
        if truth.noc_flow is not None and truth.noc_valid is not None:
            self.noc = self.noc or Tally()
            noc_epe = end_point_error(flow, truth.noc_flow)
            noc_magnitude = np.linalg.norm(truth.noc_flow.astype(np.float64), axis=-1)
            self.noc.add(noc_epe[truth.noc_valid], noc_magnitude[truth.noc_valid])
        if truth.occluded is not None:
            # Matched (visible in both frames) and unmatched (occluded) pixels, as the Sintel benchmark
            # splits them; pixels of Sintel's invalid masks count in neither.
            counted = valid if truth.invalid is None else valid & ~truth.invalid
            self.invalid_pixels += int((valid & ~counted).sum())
            self.matched, self.unmatched = self.matched or Tally(), self.unmatched or Tally()
            for tally, mask in ((self.matched, counted & ~truth.occluded), (self.unmatched, counted & truth.occluded)):
                tally.add(epe[mask], magnitude[mask])

    def record(self, per_image_epe: bool) -> dict[str, Any]:
        record = self.all.summary(per_image_epe)
        extra: dict[str, Any] = {"epe_matched": None, "epe_unmatched": None, "epe_noc": None, "fl_noc": None}
        if self.matched is not None and self.unmatched is not None:
            matched, unmatched = self.matched.summary(per_image_epe), self.unmatched.summary(per_image_epe)
            extra.update(epe_matched=matched["epe"], epe_unmatched=unmatched["epe"], matched=matched)
            extra.update(unmatched=unmatched, invalid_pixels=self.invalid_pixels)
        if self.noc is not None:
            noc = self.noc.summary(per_image_epe)
            extra.update(epe_noc=noc["epe"], fl_noc=noc["fl_all"], occ=dict(record), noc=noc)
        scenes = {name: tally.summary(per_image_epe) for name, tally in self.scenes.items()}
        return {**record, **extra, "scenes": scenes}


# ------------------------------------------------------------------------------------------------
# Running pairs


def _is_onnx(engine: object) -> bool:
    metadata = getattr(engine, "metadata", None)
    return isinstance(metadata, dict) and "raft_engine.iterations" in metadata


def describe(engine: Any) -> dict[str, Any]:
    """The settings an engine runs with, for the records."""
    if isinstance(engine, FlowEngine):
        return {
            "backend": engine.backend,
            "dtype": DTYPE_NAMES.get(engine.dtype, str(engine.dtype)),
            "device": str(engine.device),
            "variant": engine.config.variant,
            "corr": engine.corr,
            "compiled": engine.compiled is not None,
            "onnx": None,
        }
    if _is_onnx(engine):
        metadata: dict[str, str] = engine.metadata
        providers = getattr(engine, "providers", None) or ["?"]
        return {
            "backend": f"onnxruntime ({providers[0]})",
            "dtype": metadata.get("raft_engine.dtype"),
            "device": "cpu" if providers[0] == "CPUExecutionProvider" else "cuda",
            "variant": metadata.get("raft_engine.variant"),
            "corr": "volume",
            "compiled": False,
            "onnx": str(getattr(engine, "path", "")),
        }
    settings = ("backend", "dtype", "device", "variant", "corr", "compiled")
    return {**{name: getattr(engine, name, None) for name in settings}, "onnx": None}


class _Runner:
    """Runs pairs through the engine, padded as the protocol says, and checks what a graph fixes."""

    def __init__(self, engine: Any) -> None:
        if not hasattr(engine, "estimate"):
            raise TypeError(f"engine must be a FlowEngine or an OrtFlowSession, got {type(engine).__name__}")
        self.engine: Any = engine
        self.onnx = _is_onnx(engine)
        self.device = torch.device("cpu") if self.onnx else torch.device(getattr(engine, "device", "cpu"))
        if self.onnx and getattr(engine, "batch", 1) not in (1, None):
            raise ValueError(f"{engine.path} was exported for batch {engine.batch}; evaluation runs one pair at a time")
        self._warned = False

    def iterations(self, iters: int | None, protocol_iters: int) -> int:
        """The iterations a split runs with: given, or the protocol's; a graph's own, which must match."""
        if not self.onnx:
            return protocol_iters if iters is None else iters
        exported = int(self.engine.metadata["raft_engine.iterations"])
        if iters is not None and iters != exported:
            raise ValueError(f"{self.engine.path} was exported with {exported} iterations, not {iters}")
        if iters is None and exported != protocol_iters and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.engine.path} runs {exported} iterations; the published protocol uses {protocol_iters}",
                stacklevel=3,
            )
        return exported

    def run(
        self, sample: Sample, pair: tuple[np.ndarray, np.ndarray], iters: int, padding: str, flow_init=None
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """-> (flow (H, W, 2) float32 at the input size, flow_low on the padded 1/8 grid)."""
        height, width = pair[0].shape[:2]
        padder = Padder(height, width, padding)
        images = [padder.pad(torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()) for image in pair]
        try:
            if self.onnx:
                (padded_h, padded_w), expected = padder.padded_size, (self.engine.height, self.engine.width)
                if (padded_h, padded_w) != expected:
                    raise ValueError(
                        f"a pair of {height}x{width} ({padding} padding: {padded_h}x{padded_w}), but "
                        f"{self.engine.path} was exported for {expected[0]}x{expected[1]}; export a graph of "
                        f"{padded_h}x{padded_w} for these pairs"
                    )
                if flow_init is not None:
                    raise ValueError("an exported graph has no flow_init input: warm start is not available")
                result = self.engine.estimate(*images)
            else:
                result = self.engine.estimate(*images, iters=iters, flow_init=flow_init)
        except ValueError as error:
            raise ValueError(f"{sample.image1}: {error}") from error
        flow = padder.unpad(result.flow)[0].permute(1, 2, 0).float().cpu().numpy()
        return flow, result.flow_low


def _read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    image1, image2 = read_image(sample.image1), read_image(sample.image2)
    if image1.shape != image2.shape:
        raise ValueError(
            f"{sample.image2} is {image2.shape[0]}x{image2.shape[1]} (HxW), but {sample.image1} is "
            f"{image1.shape[0]}x{image1.shape[1]}"
        )
    return image1, image2


def _progress(samples, description: str, progress: bool):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar on a terminal only (as the flow command's).
    return tqdm(samples, desc=description, unit="pair", disable=not progress or None, file=sys.stderr)


def _check_options(iters: int | None, padding: str | None, limit: int | None) -> None:
    if iters is not None:
        positive_int("iters", iters)
    if padding is not None:
        check_padding(padding)
    if limit is not None:
        positive_int("limit", limit)


# ------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    engine: object,
    dataset: str,
    root: str | os.PathLike,
    *,
    split: str | None = None,
    iters: int | None = None,
    padding: str | None = None,
    limit: int | None = None,
    weights: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate `engine` on a dataset as distributed under `root` -> one record per split.

    dataset: "sintel" (splits clean, final), "kitti-2015" or "kitti" (training), "kitti-2012"
        (training), "chairs" (validation; or training), "middlebury" (other), "hd1k" (training), or
        "list" (root is a text file of `image1 image2 flow` lines). split: one of them only.
    iters, padding: None for the dataset's published protocol (`raft_engine.evaluation.datasets.PROTOCOLS`).
    limit: the first N pairs of each split only. weights: a label for the records.

    Each record: dataset, split, pairs, pixels, epe, px1, px3, px5, fl_all (fractions in 0..1),
    epe_matched and epe_unmatched (Sintel with occlusions/, else None; with the "matched" and
    "unmatched" blocks), epe_noc and fl_noc (KITTI with flow_noc/, else None; with the "occ" and "noc"
    blocks), scenes (the same metrics per scene), and the settings: weights, iters, padding, backend,
    dtype, device, variant, corr, compiled, onnx, published_protocol, limit, total_pairs, seconds.
    """
    _check_options(iters, padding, limit)
    runner = _Runner(engine)
    records = []
    for split_data in load_splits(dataset, root, split):
        records.append(_evaluate_split(runner, split_data, iters, padding, limit, progress))
        records[-1].update(weights=weights, root=str(root), **describe(engine))
    return records


def _evaluate_split(
    runner: _Runner, split: Split, iters: int | None, padding: str | None, limit: int | None, progress: bool
) -> dict[str, Any]:
    protocol = split.protocol
    run_iters = runner.iterations(iters, protocol.iters)
    run_padding = protocol.padding if padding is None else padding
    samples = split.samples[:limit] if limit else split.samples
    tally = _SplitTally()
    start = time.perf_counter()
    for sample in _progress(samples, f"{split.dataset} {split.split}", progress):
        pair = _read_pair(sample)
        truth = read_ground_truth(sample, pair[0].shape[:2])  # before the model: a bad file fails at once
        flow, _ = runner.run(sample, pair, run_iters, run_padding)
        tally.add(sample.scene, flow, truth)
    return {
        "dataset": split.dataset,
        "split": split.split,
        **tally.record(protocol.per_image_epe),
        "iters": run_iters,
        "padding": run_padding,
        "published_protocol": (run_iters, run_padding) == (protocol.iters, protocol.padding),
        "epe_averaging": "per pair" if protocol.per_image_epe else "per pixel",
        "limit": limit,
        "total_pairs": len(split.samples),
        "seconds": time.perf_counter() - start,
    }


def _cell(value: Any, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


# (header, record key, shown as a percentage); a column appears when some record has a value for it.
_COLUMNS = (
    ("EPE", "epe", False),
    ("<1px", "px1", True),
    ("<3px", "px3", True),
    ("<5px", "px5", True),
    ("Fl-all", "fl_all", True),
    ("matched", "epe_matched", False),
    ("unmatched", "epe_unmatched", False),
    ("EPE-noc", "epe_noc", False),
    ("Fl-noc", "fl_noc", True),
)


def format_table(records: list[dict[str, Any]]) -> str:
    """The records as a text table: one row per (dataset, split)."""
    columns = [c for c in _COLUMNS if any(r.get(c[1]) is not None for r in records)]
    header = ["dataset", "split", "pairs", *(title for title, _, _ in columns)]
    rows = [
        [r["dataset"], r["split"], str(r["pairs"]), *(_cell(r.get(key), percent) for _, key, percent in columns)]
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Submissions


def write_submission(
    engine: object,
    dataset: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    iters: int | None = None,
    padding: str | None = None,
    warm_start: bool = True,
    limit: int | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write the test-set flow that a benchmark server scores -> the files written.

    "sintel": as the published create_sintel_submission: test/{clean,final}, 32 iterations, each pair
        of a scene started from the previous pair's 1/8 flow carried forward (`forward_interpolate`),
        each scene started cold; output/{clean,final}/SCENE/frameNNNN.flo, NNNN from 0001 for the
        first pair (the layout Sintel's bundler reads). warm_start=False: every pair cold.
    "kitti-2015", "kitti-2012": as the published create_kitti_submission: testing/, 24 iterations,
        "kitti" padding; output/NNNNNN_10.png, 16-bit KITTI PNG, every pixel valid.
    limit: the first N pairs of each pass only (a check, not a submission).
    """
    _check_options(iters, padding, limit)
    runner = _Runner(engine)
    out = Path(output)
    written = []
    for split in load_test_splits(dataset, root):
        sintel = split.dataset == "sintel"
        if sintel and warm_start and runner.onnx:
            raise ValueError(
                "the Sintel submission's warm start needs flow_init, which an exported graph does not take: "
                "use a checkpoint, or no warm start (--no-warm-start)"
            )
        run_iters = runner.iterations(iters, split.protocol.iters)
        run_padding = split.protocol.padding if padding is None else padding
        samples = split.samples[:limit] if limit else split.samples
        flow_init, previous_scene = None, None
        for sample in _progress(samples, f"{split.dataset} {split.split}", progress):
            if sample.scene != previous_scene:
                flow_init = None  # each scene starts cold
            flow, flow_low = runner.run(sample, _read_pair(sample), run_iters, run_padding, flow_init)
            if sintel:
                path = out / split.split / sample.scene / f"frame{sample.frame + 1:04d}.flo"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_flo(path, flow)
                if warm_start:
                    if flow_low is None:
                        raise ValueError("the engine returned no flow_low: warm start is not available")
                    flow_init = forward_interpolate(flow_low)
            else:
                path = out / sample.image1.name
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    write_kitti_flow(path, flow)
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from error
            written.append(path)
            previous_scene = sample.scene
    return written
