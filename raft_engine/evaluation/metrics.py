"""The metrics of optical flow benchmarks: end-point error, the fractions under 1, 3 and 5 px, KITTI's
Fl outliers, Sintel's matched/unmatched and KITTI's non-occluded variants, tallied per split and per
scene, and the table that shows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raft_engine.evaluation.datasets import GroundTruth

# KITTI's outlier: an end-point error above 3 px and above 5% of the true flow's length.
OUTLIER_PX = 3.0
OUTLIER_FRACTION = 0.05
THRESHOLDS = (1.0, 3.0, 5.0)


def end_point_error(flow: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The end-point error: the Euclidean distance between two flows at each pixel.

    Args:
        flow: (H, W, 2), the estimated flow.
        truth: (H, W, 2), the true flow.

    Returns:
        (H, W) float64.
    """
    return np.sqrt(np.square(flow.astype(np.float64) - truth.astype(np.float64)).sum(axis=-1))


def fl_outliers(epe: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """KITTI's outliers, as the published validate_kitti: error > 3 px and error / |truth| > 0.05.

    Both must hold; a zero-length truth makes any error above 3 px an outlier.

    Args:
        epe: the end-point errors.
        magnitude: the true flow's lengths at the same pixels, of the same shape.

    Returns:
        A bool array of that shape, True at the outliers.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return (epe > OUTLIER_PX) & (epe / magnitude > OUTLIER_FRACTION)


@dataclass
class Tally:
    """The sums behind the metrics of a set of pairs: over pixels, and each pair's mean EPE.

    Attributes:
        pairs: the pairs added, with or without valid pixels.
        pixels: the valid pixels added.
        epe_sum: the sum of their end-point errors.
        under: the numbers of those pixels with an error under 1, 3 and 5 px.
        outliers: the number of those pixels that are KITTI outliers (`fl_outliers`).
        pair_epes: the mean EPE of each pair with valid pixels.
    """

    pairs: int = 0
    pixels: int = 0
    epe_sum: float = 0.0
    under: list[int] = field(default_factory=lambda: [0] * len(THRESHOLDS))
    outliers: int = 0
    pair_epes: list[float] = field(default_factory=list)

    def add(self, epe: np.ndarray, magnitude: np.ndarray) -> None:
        """Add one pair: the errors and true flow lengths at its valid pixels.

        A pair without valid pixels counts as a pair but adds no mean (the published code would average
        in a NaN).

        Args:
            epe: the end-point errors at the pair's valid pixels (1-D).
            magnitude: the true flow's lengths at the same pixels (1-D).
        """
        self.pairs += 1
        if epe.size == 0:
            return
        self.pixels += int(epe.size)
        self.epe_sum += float(epe.sum())
        self.under = [count + int((epe < limit).sum()) for count, limit in zip(self.under, THRESHOLDS, strict=True)]
        self.outliers += int(fl_outliers(epe, magnitude).sum())
        self.pair_epes.append(float(epe.mean()))

    def summary(self, per_image_epe: bool) -> dict[str, Any]:
        """The metrics of the pairs added.

        Args:
            per_image_epe: EPE as the mean of the pairs' means (validate_kitti), else over all pixels.

        Returns:
            A dict of pairs, pixels, epe, px1, px3, px5, fl_all (fractions in 0..1; None without valid
            pixels).
        """
        result: dict[str, Any] = {"pairs": self.pairs, "pixels": self.pixels}
        if not self.pixels:
            return {**result, "epe": None, "px1": None, "px3": None, "px5": None, "fl_all": None}
        epe = float(np.mean(self.pair_epes)) if per_image_epe else self.epe_sum / self.pixels
        fractions = {
            f"px{int(limit)}": count / self.pixels for count, limit in zip(self.under, THRESHOLDS, strict=True)
        }
        return {**result, "epe": epe, **fractions, "fl_all": self.outliers / self.pixels}


class SplitTally:
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
    """The records as a text table: one row per (dataset, split).

    A metric's column appears when some record has a value for it.

    Args:
        records: records as `evaluate` returns them.

    Returns:
        The table's lines, joined by newlines.
    """
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
