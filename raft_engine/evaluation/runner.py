"""Evaluation on the standard datasets with the published protocol, and the benchmarks' submissions.

`evaluate(engine, dataset, root)` runs every pair of a dataset's evaluation splits (as distributed;
see `raft_engine.evaluation.datasets`) and returns one record per split: EPE, the fractions of pixels with an
error under 1, 3 and 5 px, Fl-all, the matched/unmatched EPE (Sintel, where the occlusion masks
exist) and the non-occluded metrics (KITTI, where flow_noc exists), a per-scene breakdown and the
settings. It follows princeton-vl/RAFT's evaluate.py: validate_sintel (32 iterations, "sintel"
padding, EPE over all pixels of all pairs), validate_kitti (24 iterations, "kitti" padding, EPE per
image then over images, Fl-all over all valid pixels) and validate_chairs (24 iterations).

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
from typing import Any

import numpy as np
import torch

from raft_engine.errors import InputError, InputTypeError
from raft_engine.evaluation.datasets import Sample, Split, load_splits, read_ground_truth
from raft_engine.evaluation.metrics import SplitTally
from raft_engine.io import read_image
from raft_engine.runtime.engine import FlowEngine
from raft_engine.runtime.inputs import Padder, check_padding, positive_int

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


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


class PairRunner:
    """Runs pairs through the engine, padded as the protocol says, and checks what a graph fixes."""

    def __init__(self, engine: Any) -> None:
        if not hasattr(engine, "estimate"):
            raise InputTypeError(f"engine must be a FlowEngine or an OrtFlowSession, got {type(engine).__name__}")
        self.engine: Any = engine
        self.onnx = _is_onnx(engine)
        self.device = torch.device("cpu") if self.onnx else torch.device(getattr(engine, "device", "cpu"))
        if self.onnx and getattr(engine, "batch", 1) not in (1, None):
            raise InputError(f"{engine.path} was exported for batch {engine.batch}; evaluation runs one pair at a time")
        self._warned = False

    def iterations(self, iters: int | None, protocol_iters: int) -> int:
        """The iterations a split runs with: given, or the protocol's; a graph's own, which must match."""
        if not self.onnx:
            return protocol_iters if iters is None else iters
        exported = int(self.engine.metadata["raft_engine.iterations"])
        if iters is not None and iters != exported:
            raise InputError(f"{self.engine.path} was exported with {exported} iterations, not {iters}")
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
                    raise InputError(
                        f"a pair of {height}x{width} ({padding} padding: {padded_h}x{padded_w}), but "
                        f"{self.engine.path} was exported for {expected[0]}x{expected[1]}; export a graph of "
                        f"{padded_h}x{padded_w} for these pairs"
                    )
                if flow_init is not None:
                    raise InputError("an exported graph has no flow_init input: warm start is not available")
                result = self.engine.estimate(*images)
            else:
                result = self.engine.estimate(*images, iters=iters, flow_init=flow_init)
        except ValueError as error:
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
    check_options(iters, padding, limit)
    runner = PairRunner(engine)
    records = []
    for split_data in load_splits(dataset, root, split):
        records.append(_evaluate_split(runner, split_data, iters, padding, limit, progress))
        records[-1].update(weights=weights, root=str(root), **describe(engine))
    return records


def _evaluate_split(
    runner: PairRunner, split: Split, iters: int | None, padding: str | None, limit: int | None, progress: bool
) -> dict[str, Any]:
    protocol = split.protocol
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
        "published_protocol": (run_iters, run_padding) == (protocol.iters, protocol.padding),
        "epe_averaging": "per pair" if protocol.per_image_epe else "per pixel",
        "limit": limit,
        "total_pairs": len(split.samples),
        "seconds": time.perf_counter() - start,
    }
