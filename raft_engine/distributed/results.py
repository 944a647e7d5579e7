"""What a batch job keeps of each pair and clip: the flow files it was asked for, the motion statistics of
every pair, the manifest of finished shards (a shard's entry is written only after its files are in
place), and the two Parquet tables of the results."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raft_engine.errors import InputError
from raft_engine.io.files import write_atomically
from raft_engine.model.raft import BidirectionalResult

# What --write may ask for per pair, and the suffix of each file: the flow as Middlebury .flo, a colour
# picture, a KITTI 16-bit PNG, all arrays in one .npz, and with --bidirectional the masks as 1-bit PNG.
WRITE_KINDS = {"flo": ".flo", "png": ".png", "kitti": ".kitti.png", "npz": ".npz", "masks": ".occlusion.png"}
MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
PAIRS_TABLE = "pairs.parquet"
CLIPS_TABLE = "clips.parquet"


def check_writes(kinds: Iterable[str], bidirectional: bool) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(WRITE_KINDS))
    if unknown:
        raise InputError(f"unknown output kind(s) {', '.join(unknown)}; --write takes {', '.join(WRITE_KINDS)}")
    if "masks" in kinds and not bidirectional:
        raise InputError("--write masks needs --bidirectional: the masks come from the forward-backward check")
    return tuple(kind for kind in WRITE_KINDS if kind in kinds)


def pair_files(output: Path, clip: str, first: int, kinds: tuple[str, ...], bidirectional: bool) -> list[Path]:
    """The files of one pair: OUT/<clip>/<first frame, 6 digits><suffix>, and the backward ones beside them."""
    stem = output / clip / f"{first:06d}"
    files = [stem.with_name(stem.name + WRITE_KINDS[kind]) for kind in kinds if kind != "masks"]
    if bidirectional:
        files += [stem.with_name(stem.name + ".backward" + WRITE_KINDS[kind]) for kind in kinds if kind != "npz"]
    return files


def write_pair(output: Path, clip: str, first: int, kinds: tuple[str, ...], result: Any) -> None:
    """One pair's files (`result` a FlowResult, or a BidirectionalResult with bidirectional), each atomic."""
    from raft_engine.io import flow_to_color, write_flo, write_image, write_mask
    from raft_engine.io.flow_outputs import write_kitti_clipped

    folder = output / clip
    folder.mkdir(parents=True, exist_ok=True)
    both = isinstance(result, BidirectionalResult)
    directions = [("", result.forward.flow[0])] if both else [("", result.flow[0])]
    if both:
        directions.append((".backward", result.backward.flow[0]))
    for label, flow in directions:
        stem = f"{first:06d}{label}"
        array = flow.permute(1, 2, 0).float().cpu().numpy()
        if "flo" in kinds:
            write_flo(folder / f"{stem}.flo", array)
        if "png" in kinds:
            write_image(folder / f"{stem}.png", flow_to_color(array))
        if "kitti" in kinds:
            write_kitti_clipped(folder / f"{stem}.kitti.png", array)
    if both and "masks" in kinds:
        write_mask(folder / f"{first:06d}.occlusion.png", result.occlusion[0])
        write_mask(folder / f"{first:06d}.backward.occlusion.png", result.occlusion_backward[0])
    if "npz" in kinds:
        arrays = {"flow": directions[0][1].permute(1, 2, 0).float().cpu().numpy()}
        if both:
            arrays["flow_backward"] = directions[1][1].permute(1, 2, 0).float().cpu().numpy()
            arrays["occlusion"] = result.occlusion[0].cpu().numpy()
            arrays["occlusion_backward"] = result.occlusion_backward[0].cpu().numpy()
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomically(folder / f"{first:06d}.npz", buffer.getvalue())


def pair_statistics(result: Any) -> dict[str, float]:
    """Mean, median, 90th and 99th percentile and largest flow magnitude (px) of the pair's forward flow;
    with both directions, the fraction of image 1's pixels that fail the check."""
    both = isinstance(result, BidirectionalResult)
    flow = (result.forward if both else result).flow[0].double()
    magnitude = flow.norm(dim=0).flatten()
    quantiles = torch.quantile(magnitude, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    stats = {
        "mean": float(magnitude.mean()),
        "median": quantiles[0],
        "p90": quantiles[1],
        "p99": quantiles[2],
        "max": float(magnitude.max()),
    }
    if both:
        stats["occluded"] = float(result.occlusion[0].float().mean())
    return stats


class Manifest:
    """OUT/manifest.jsonl: the job's configuration on the first line, then one line per finished shard,
    appended and flushed to disk after the shard's files are in place."""

    def __init__(self, output: Path) -> None:
        self.path = output / MANIFEST

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """-> (the configuration, the finished shards' entries); (None, []) for a new job. A last line cut short
        (the job stopped while writing it) is dropped."""
        if not self.path.is_file():
            return None, []
        lines = self.path.read_text().splitlines()
        entries = []
        for number, line in enumerate(lines):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines) - 1:
                    break
                raise InputError(
                    f"{self.path}:{number + 1} is not a manifest line ({error}); remove the file"
                ) from error
        if not entries or "config" not in entries[0]:
            raise InputError(f"{self.path} does not start with a job's configuration; remove the file")
        return entries[0]["config"], [entry for entry in entries[1:] if "shard" in entry]

    def start(self, config: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """Write the configuration and the entries kept (atomically: a rewrite never leaves half a manifest)."""
        lines = [json.dumps({"config": config})] + [json.dumps(entry) for entry in entries]
        write_atomically(self.path, "".join(line + "\n" for line in lines))

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_tables(output: Path, entries: list[dict[str, Any]], frames: dict[str, int], bidirectional: bool) -> None:
    """OUT/pairs.parquet and OUT/clips.parquet from the finished shards' entries (docs/pages/guides/batch.md
    lists the columns), each written whole under a temporary name and renamed."""
    import pyarrow as pa

    rows = sorted(
        ({"clip": entry["shard"]["clip"], **pair} for entry in entries for pair in entry["pairs"]),
        key=lambda row: (row["clip"], row["frame1"]),
    )
    columns = ["clip", "frame1", "frame2", "mean", "median", "p90", "p99", "max"]
    columns += ["occluded"] if bidirectional else []
    pairs = pa.table({name: [row[name] for row in rows] for name in columns})
    clips: dict[str, list[float]] = {}
    for row in rows:
        clips.setdefault(row["clip"], []).append(row["mean"])
    names = sorted(clips)
    table = pa.table(
        {
            "clip": names,
            "frames": [frames.get(name) for name in names],
            "pairs": [len(clips[name]) for name in names],
            "motion": [float(np.mean(clips[name])) for name in names],
            "motion_std": [float(np.std(clips[name])) for name in names],
        }
    )
    for name, contents in ((PAIRS_TABLE, pairs), (CLIPS_TABLE, table)):
        write_atomically(output / name, _parquet_writer(contents))


def _parquet_writer(table: Any) -> Any:
    import pyarrow.parquet as pq

    def write(partial: Path) -> None:
        pq.write_table(table, str(partial))

    return write
