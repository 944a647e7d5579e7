"""Evaluation on the standard datasets with the published protocol, and the benchmarks' submissions.

`evaluate(engine, dataset, root)` runs every pair of a dataset's evaluation splits (as distributed;
see `raft_engine.evaluation.datasets`) and returns one record per split: EPE, the fractions of pixels with an
error under 1, 3 and 5 px, Fl-all, the matched/unmatched EPE (Sintel, where the occlusion masks
exist) and the non-occluded metrics (KITTI, where flow_noc exists), a per-scene breakdown and the
settings. It follows princeton-vl/RAFT's evaluate.py: validate_sintel (32 iterations, "sintel"
padding, EPE over all pixels of all pairs), validate_kitti (24 iterations, "kitti" padding, EPE per
image then over images, Fl-all over all valid pixels) and validate_chairs (24 iterations).

`engine` is a `FlowEstimator`: a `FlowEngine`, an `OrtFlowSession` (an exported graph: its iteration
count and input size are fixed) or a `TritonFlowClient`. The images are padded here, with the dataset's
padding, before the engine sees them, so the engine's own `padding` setting does not apply.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch

from raft_engine.errors import InputError
from raft_engine.evaluation.datasets import Sample, Split, load_splits, read_ground_truth
from raft_engine.evaluation.metrics import SplitTally
from raft_engine.io import read_image
from raft_engine.runtime.estimator import check_estimator, check_fixed_iters
from raft_engine.runtime.inputs import Padder, check_padding, positive_int

# ------------------------------------------------------------------------------------------------
# Running pairs


class PairRunner:
    """Runs pairs through an estimator, padded as the protocol says, and checks what it fixes (an exported
    graph's iterations, input size and batch, and whether it takes flow_init)."""

    def __init__(self, engine: object) -> None:
        self.engine = check_estimator(engine)
        self.settings = self.engine.settings
        self.name = self.settings.source or self.engine.describe()
        # An engine takes the images on its device; sessions and servers take host memory.
        self.device = torch.device(self.settings.device if self.settings.source is None else "cpu")
        if self.settings.batch not in (1, None):
            raise InputError(
                f"{self.name} was exported for batch {self.settings.batch}; evaluation runs one pair at a time"
            )
        self._warned = False

    def iterations(self, iters: int | None, protocol_iters: int) -> int | None:
        """The iterations a split runs with: given, or the protocol's; a graph's own, which must match (None:
        a served graph's count, which its server does not report)."""
        if not self.settings.runs_own_iters:
            return protocol_iters if iters is None else iters
        fixed = check_fixed_iters(self.settings, iters, self.name)
        if fixed is None:
            return None
        if iters is None and fixed != protocol_iters and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.name} runs {fixed} iterations; the published protocol uses {protocol_iters}", stacklevel=3
            )
        return fixed

    def run(
        self, sample: Sample, pair: tuple[np.ndarray, np.ndarray], iters: int | None, padding: str, flow_init=None
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """-> (flow (H, W, 2) float32 at the input size, flow_low on the padded 1/8 grid)."""
        height, width = pair[0].shape[:2]
        padder = Padder(height, width, padding)
        images = [padder.pad(torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()) for image in pair]
        try:
            size = self.settings.size
            if size is not None and padder.padded_size != size:
                padded_h, padded_w = padder.padded_size
                raise InputError(
                    f"a pair of {height}x{width} ({padding} padding: {padded_h}x{padded_w}), but "
                    f"{self.name} was exported for {size[0]}x{size[1]}; export a graph of "
                    f"{padded_h}x{padded_w} for these pairs"
                )
            if flow_init is not None and not self.settings.takes_flow_init:
                raise InputError(f"{self.name} has no flow_init input: warm start is not available")
            result = self.engine.estimate(images[0], images[1], iters=iters, flow_init=flow_init)
        except InputError as error:
            raise InputError(f"{sample.image1}: {error}") from error
        flow = padder.unpad(result.flow)[0].permute(1, 2, 0).float().cpu().numpy()
        return flow, result.flow_low


def read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    image1, image2 = read_image(sample.image1), read_image(sample.image2)
    if image1.shape != image2.shape:
        raise InputError(
            f"{sample.image2} is {image2.shape[0]}x{image2.shape[1]} (HxW), but {sample.image1} is "
            f"{image1.shape[0]}x{image1.shape[1]}"
        )
    return image1, image2


def progress_bar(samples, description: str, progress: bool):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar on a terminal only (as the flow command's).
    return tqdm(samples, desc=description, unit="pair", disable=not progress or None, file=sys.stderr)


def check_options(iters: int | None, padding: str | None, limit: int | None) -> None:
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
    """Evaluate `engine` on a dataset as distributed under `root`, one record per split.

    Args:
        engine: a `FlowEstimator`: a `FlowEngine`, an `OrtFlowSession` or a `TritonFlowClient` (see the
            module's docstring).
        dataset: "sintel" (splits clean, final), "kitti-2015" or "kitti" (training), "kitti-2012"
            (training), "chairs" (validation; or training), "middlebury" (other), "hd1k" (training), or
            "list" (root is a text file of `image1 image2 flow` lines).
        root: the dataset's folder, as distributed (for "list", the text file).
        split: one of the dataset's splits only; None: its default ones, as above.
        iters: None for the dataset's published protocol (`raft_engine.evaluation.datasets.PROTOCOLS`).
        padding: None for the dataset's published protocol.
        limit: the first N pairs of each split only.
        weights: a label for the records.
        progress: show a progress bar (on a terminal only).

    Returns:
        One record per split, a dict: dataset, split, pairs, pixels, epe, px1, px3, px5, fl_all
        (fractions in 0..1), epe_matched and epe_unmatched (Sintel with occlusions/, else None; with the
        "matched" and "unmatched" blocks), epe_noc and fl_noc (KITTI with flow_noc/, else None; with the
        "occ" and "noc" blocks), scenes (the same metrics per scene), and the settings: weights, iters,
        padding, backend, dtype, device, variant, corr, compiled, onnx, published_protocol, limit,
        total_pairs, seconds.

    Raises:
        InputError: an option, dataset or split that is not one of those above, an engine exported for
            another batch or input size, or a dataset without a published protocol and no `iters`.
    """
    check_options(iters, padding, limit)
    runner = PairRunner(engine)
    records = []
    for split_data in load_splits(dataset, root, split):
        records.append(_evaluate_split(runner, split_data, iters, padding, limit, progress))
        records[-1].update(weights=weights, root=str(root), **runner.settings.record())
    return records


def _evaluate_split(
    runner: PairRunner, split: Split, iters: int | None, padding: str | None, limit: int | None, progress: bool
) -> dict[str, Any]:
    protocol = split.protocol
    if not protocol.published and iters is None and not runner.settings.runs_own_iters:
        raise InputError(f"{split.dataset} has no published protocol to take the iterations from: give iters")
    run_iters = runner.iterations(iters, protocol.iters)
    run_padding = protocol.padding if padding is None else padding
    samples = split.samples[:limit] if limit else split.samples
    tally = SplitTally()
    start = time.perf_counter()
    for sample in progress_bar(samples, f"{split.dataset} {split.split}", progress):
        pair = read_pair(sample)
        truth = read_ground_truth(sample, pair[0].shape[:2])  # before the model: a bad file fails at once
        flow, _ = runner.run(sample, pair, run_iters, run_padding)
        tally.add(sample.scene, flow, truth)
    return {
        "dataset": split.dataset,
        "split": split.split,
        **tally.record(protocol.per_image_epe),
        "iters": run_iters,
        "padding": run_padding,
        "published_protocol": protocol.published and (run_iters, run_padding) == (protocol.iters, protocol.padding),
        "epe_averaging": "per pair" if protocol.per_image_epe else "per pixel",
        "limit": limit,
        "total_pairs": len(split.samples),
        "seconds": time.perf_counter() - start,
    }
