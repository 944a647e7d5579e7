"""The standard optical-flow datasets, read from the directory layouts they are distributed in.

Each loader lists the pairs of a dataset under `root` as `Sample`s (paths only; nothing is decoded)
and `read_ground_truth` decodes one sample's ground truth and masks. The layouts (relative to root):

- "sintel", MPI-Sintel-complete.zip: training/{clean,final}/SCENE/frame_NNNN.png,
  training/flow/SCENE/frame_NNNN.flo, and where present training/occlusions/SCENE/frame_NNNN.png
  (white: occluded) and training/invalid/SCENE/frame_NNNN.png (white: invalid). One split per pass.
  The test set (submissions): test/{clean,final}/SCENE/frame_NNNN.png.
- "kitti-2015": training/image_2/NNNNNN_10.png and _11.png, training/flow_occ/NNNNNN_10.png (every
  pixel with ground truth) and training/flow_noc/NNNNNN_10.png (the non-occluded ones), 16-bit PNGs
  with a validity channel. Test set: testing/image_2/.
- "kitti-2012": the same with colored_0/ for image_2/.
- "chairs", FlyingChairs_release: data/NNNNN_img1.ppm, data/NNNNN_img2.ppm, data/NNNNN_flow.flo and
  the split file FlyingChairs_train_val.txt (one line per pair: 1 training, 2 validation; RAFT's
  chairs_split.txt is the same file), in root or in root/data.
- "middlebury": other-data/SCENE/frameNN.png and other-gt-flow/SCENE/flowNN.flo (frame NN to NN+1).
- "hd1k": hd1k_input/image_2/SSSSSS_FFFF.png and hd1k_flow_gt/flow_occ/SSSSSS_FFFF.png (KITTI PNGs),
  sequences SSSSSS of consecutive frames FFFF.
- "list": root is a text file of `image1 image2 flow` lines (paths relative to the file's folder, or
  absolute; shell quoting for spaces; `#` starts a comment), ground truth as .flo or KITTI PNG.

Each dataset has the protocol of the published evaluation (princeton-vl/RAFT's evaluate.py): its
iteration count, its padding, and how EPE is averaged; see `PROTOCOLS`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raft_engine.errors import InputError, MissingFileError
from raft_engine.io import read_flo, read_kitti_flow
from raft_engine.io.frames import natural_key

DATASETS = ("sintel", "kitti-2015", "kitti-2012", "chairs", "middlebury", "hd1k", "list")
ALIASES = {"kitti": "kitti-2015"}  # the published evaluate.py's --dataset kitti is KITTI 2015
# Dense ground truth (.flo) counts a pixel as valid where |u| and |v| are below this: the published
# FlowDataset's rule, which leaves out Middlebury's unknown-flow marker (1e9).
DENSE_LIMIT = 1000.0


@dataclass(frozen=True)
class Protocol:
    """How a dataset is evaluated.

    iters, padding: the published defaults (Sintel 32 and "sintel", KITTI 24 and "kitti").
    per_image_epe: EPE is the mean over pairs of each pair's mean over its valid pixels (as the
        published validate_kitti); otherwise the mean over all valid pixels of all pairs (as the
        published validate_sintel and validate_chairs). The fractions under 1, 3, 5 px and Fl-all are
        over all valid pixels of all pairs in both cases (validate_kitti concatenates the outliers).
    published: whether a published evaluation defines it. A list of pairs has none: it takes KITTI's
        padding and averaging for PNG ground truth, Sintel's for .flo, and needs its iterations given.
    """

    iters: int
    padding: str
    per_image_epe: bool
    published: bool = True


SINTEL_PROTOCOL = Protocol(iters=32, padding="sintel", per_image_epe=False)
KITTI_PROTOCOL = Protocol(iters=24, padding="kitti", per_image_epe=True)
PROTOCOLS = {
    "sintel": SINTEL_PROTOCOL,
    "kitti-2015": KITTI_PROTOCOL,
    "kitti-2012": KITTI_PROTOCOL,
    # validate_chairs: 24 iterations, no padding (384x512 is a multiple of 8, so the mode does not matter).
    "chairs": Protocol(iters=24, padding="sintel", per_image_epe=False),
    # Not evaluated by the published code: dense ground truth like Sintel's, sparse like KITTI's.
    "middlebury": SINTEL_PROTOCOL,
    "hd1k": KITTI_PROTOCOL,
    # "list": Sintel's for .flo ground truth, KITTI's for PNG (see load_list).
}


@dataclass(frozen=True)
class Sample:
    """One pair of a split. flow: its ground truth (.flo or KITTI PNG; None in a test set); noc: KITTI's
    non-occluded ground truth; occlusion, invalid: Sintel's masks; frame: the pair's position in its
    scene, from 0."""

    image1: Path
    image2: Path
    scene: str
    name: str
    flow: Path | None = None
    noc: Path | None = None
    occlusion: Path | None = None
    invalid: Path | None = None
    frame: int = 0


@dataclass(frozen=True)
class Split:
    dataset: str
    split: str
    samples: tuple[Sample, ...]
    protocol: Protocol


@dataclass(frozen=True)
class GroundTruth:
    """flow (H, W, 2) float32; valid (H, W) bool; noc: KITTI's non-occluded valid mask and its flow;
    occluded, invalid: Sintel's masks (H, W) bool, None where the dataset has none."""

    flow: np.ndarray
    valid: np.ndarray
    noc_flow: np.ndarray | None = None
    noc_valid: np.ndarray | None = None
    occluded: np.ndarray | None = None
    invalid: np.ndarray | None = None


def dataset_name(name: str) -> str:
    """The canonical name of a dataset, or one error listing the known ones."""
    canonical = ALIASES.get(name, name)
    if canonical not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} (or kitti for kitti-2015)")
    return canonical


# ------------------------------------------------------------------------------------------------
# Reading


def read_flow_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth flow file -> (flow (H, W, 2) float32, valid (H, W) bool): .flo (valid where
    finite and |u|, |v| < 1000) or a KITTI 16-bit PNG (valid from its third channel). A file that does
    not decode is one ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such flow file: {path}")
    try:
        if path.suffix.lower() == ".png":
            return read_kitti_flow(path)
        flow = read_flo(path)
    except (zlib.error, struct.error) as error:  # a PNG whose data stream is cut short, say
        raise InputError(f"{path}: corrupt flow file ({error})") from error
    valid = np.isfinite(flow).all(axis=2) & (np.abs(flow) < DENSE_LIMIT).all(axis=2)
    return np.where(valid[..., None], flow, 0).astype(np.float32), valid


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit mask image (Sintel's occlusions/, invalid/) -> (H, W) bool, True where white (> 127)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such mask file: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 127
    except (OSError, SyntaxError) as error:
        raise InputError(f"cannot read mask {path}: {error}") from error


def _check_size(path: Path, shape: tuple[int, ...], expected: tuple[int, int], image: Path) -> None:
    if tuple(shape[:2]) != expected:
        raise InputError(f"{path} is {shape[0]}x{shape[1]} (HxW), but its image {image} is {expected[0]}x{expected[1]}")


def read_ground_truth(sample: Sample, size: tuple[int, int]) -> GroundTruth:
    """Decode a sample's ground truth and masks, each checked against the image size (H, W)."""
    if sample.flow is None:
        raise InputError(f"{sample.name}: no ground truth (a test set)")
    flow, valid = read_flow_file(sample.flow)
    _check_size(sample.flow, flow.shape, size, sample.image1)
    noc_flow = noc_valid = None
    if sample.noc is not None:
        noc_flow, noc_valid = read_flow_file(sample.noc)
        _check_size(sample.noc, noc_flow.shape, size, sample.image1)
    masks: dict[str, np.ndarray] = {}
    for key, path in (("occluded", sample.occlusion), ("invalid", sample.invalid)):
        if path is not None:
            masks[key] = read_mask(path)
            _check_size(path, masks[key].shape, size, sample.image1)
    return GroundTruth(flow, valid, noc_flow, noc_valid, masks.get("occluded"), masks.get("invalid"))


# ------------------------------------------------------------------------------------------------
# Layouts


def _folder(root: Path, relative: str, what: str) -> Path:
    """root/relative, which must be a folder: else one error saying which path the layout expects."""
    if not root.is_dir():
        raise MissingFileError(f"no such dataset folder: {root}")
    folder = root / relative
    if not folder.is_dir():
        raise MissingFileError(f"{root} is not {what}: expected the folder {folder}")
    return folder


def _file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"missing {what}: expected {path}")
    return path


def _frames(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern), key=natural_key)


def _scenes(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=natural_key)


def _sintel_pass(root: Path, part: str, dstype: str) -> list[Sample]:
    """Consecutive frames of each scene, as the published MpiSintel; each flow and mask is found by its
    frame's name (frame_0001.png -> flow/SCENE/frame_0001.flo) rather than by position."""
    images = _folder(root, f"{part}/{dstype}", "an MPI-Sintel folder (MPI-Sintel-complete.zip unpacked)")
    with_truth = part == "training"
    flows = _folder(root, f"{part}/flow", "an MPI-Sintel folder with ground truth") if with_truth else None
    masks = {
        kind: root / part / kind for kind in ("occlusions", "invalid") if with_truth and (root / part / kind).is_dir()
    }
    samples = []
    for scene in _scenes(images):
        frames = _frames(scene, "*.png")
        if len(frames) < 2:
            raise InputError(f"{scene} holds {len(frames)} frame(s); a Sintel scene has at least 2")
        for index, (first, second) in enumerate(zip(frames[:-1], frames[1:], strict=True)):
            found = {
                kind: _file(folder / scene.name / first.name, f"Sintel {kind} mask") for kind, folder in masks.items()
            }
            flow = _file(flows / scene.name / f"{first.stem}.flo", "Sintel ground truth") if flows else None
            samples.append(
                Sample(
                    first,
                    second,
                    scene.name,
                    f"{scene.name}/{first.stem}",
                    flow=flow,
                    occlusion=found.get("occlusions"),
                    invalid=found.get("invalid"),
                    frame=index,
                )
            )
    if not samples:
        raise InputError(f"{images} holds no scene folders of frames")
    return samples


def _kitti(root: Path, dataset: str, part: str) -> list[Sample]:
    """Pairs NNNNNN_10.png -> NNNNNN_11.png, as the published KITTI (flow_occ for the ground truth)."""
    camera = "image_2" if dataset == "kitti-2015" else "colored_0"
    what = f"a {dataset.upper().replace('-', ' ')} folder"
    images = _folder(root, f"{part}/{camera}", what)
    with_truth = part == "training"
    flows = _folder(root, f"{part}/flow_occ", what) if with_truth else None
    noc = root / part / "flow_noc"
    samples = []
    for first in _frames(images, "*_10.png"):
        frame_id = first.name[: -len("_10.png")]
        second = _file(images / f"{frame_id}_11.png", "second frame")
        sample = Sample(first, second, frame_id, frame_id)
        if flows is not None:
            flow = _file(flows / first.name, "KITTI ground truth")
            noc_flow = _file(noc / first.name, "KITTI non-occluded ground truth") if noc.is_dir() else None
            sample = Sample(first, second, frame_id, frame_id, flow=flow, noc=noc_flow)
        samples.append(sample)
    if not samples:
        raise InputError(f"{images} holds no NNNNNN_10.png frames")
    return samples


def _chairs(root: Path, split: str) -> list[Sample]:
    """The pairs of the published FlyingChairs split (1 training, 2 validation), matched by number."""
    data = _folder(root, "data", "a FlyingChairs_release folder")
    candidates = [
        folder / name for folder in (root, data) for name in ("FlyingChairs_train_val.txt", "chairs_split.txt")
    ]
    split_file = next((path for path in candidates if path.is_file()), None)
    if split_file is None:
        raise MissingFileError(
            f"missing the FlyingChairs split file: expected {candidates[0]} (FlyingChairs_train_val.txt from "
            "the dataset's page; RAFT's chairs_split.txt is the same)"
        )
    flows = sorted(data.glob("*_flow.flo"))
    try:
        marks = [int(line) for line in split_file.read_text().split()]
    except ValueError as error:
        raise InputError(f"{split_file}: expected one 1 or 2 per line ({error})") from error
    if len(marks) != len(flows):
        raise InputError(f"{split_file} has {len(marks)} entries, but {data} holds {len(flows)} *_flow.flo files")
    wanted = {"training": 1, "validation": 2}[split]
    samples = []
    for flow, mark in zip(flows, marks, strict=True):
        if mark == wanted:
            number = flow.name[: -len("_flow.flo")]
            image1 = _file(data / f"{number}_img1.ppm", "FlyingChairs frame")
            image2 = _file(data / f"{number}_img2.ppm", "FlyingChairs frame")
            samples.append(Sample(image1, image2, number, number, flow=flow))
    return samples


def _middlebury(root: Path) -> list[Sample]:
    """Each other-gt-flow/SCENE/flowNN.flo with other-data/SCENE/frameNN.png and frame(NN+1).png."""
    truth = _folder(root, "other-gt-flow", "a Middlebury folder (other-data and other-gt-flow unpacked)")
    images = _folder(root, "other-data", "a Middlebury folder (other-data and other-gt-flow unpacked)")
    samples = []
    for scene in _scenes(truth):
        flows = [flow for flow in _frames(scene, "flow*.flo") if re.fullmatch(r"flow\d+\.flo", flow.name)]
        for index, flow in enumerate(flows):
            number = int(flow.stem[len("flow") :])
            image1 = _file(images / scene.name / f"frame{number:02d}.png", "Middlebury frame")
            image2 = _file(images / scene.name / f"frame{number + 1:02d}.png", "Middlebury frame")
            samples.append(Sample(image1, image2, scene.name, f"{scene.name}/{flow.stem}", flow=flow, frame=index))
    if not samples:
        raise InputError(f"{truth} holds no SCENE/flowNN.flo files")
    return samples


def _hd1k(root: Path) -> list[Sample]:
    """Consecutive frames of each sequence, the first frame's flow_occ for the ground truth (as the
    published HD1K, which pairs them by position; here by name)."""
    what = "an HD1K folder (hd1k_input and hd1k_flow_gt unpacked)"
    images = _folder(root, "hd1k_input/image_2", what)
    flows = _folder(root, "hd1k_flow_gt/flow_occ", what)
    sequences: dict[str, list[Path]] = {}
    for frame in _frames(images, "*_*.png"):
        sequences.setdefault(frame.name.split("_")[0], []).append(frame)
    samples = []
    for sequence, frames in sequences.items():
        for index, (first, second) in enumerate(zip(frames[:-1], frames[1:], strict=True)):
            flow = _file(flows / first.name, "HD1K ground truth")
            samples.append(Sample(first, second, sequence, first.stem, flow=flow, frame=index))
    if not samples:
        raise InputError(f"{images} holds no sequences of SSSSSS_FFFF.png frames")
    return samples


def load_list(path: Path) -> tuple[list[Sample], Protocol]:
    """A text file of `image1 image2 flow` lines -> its samples and protocol: KITTI's when the ground
    truth is PNG, Sintel's when it is .flo (a list mixing both is refused)."""
    if not path.is_file():
        raise MissingFileError(
            f"no such list file: {path} (--dataset list takes a text file of 'image1 image2 flow' lines)"
        )
    samples: list[Sample] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as error:
            raise InputError(f"{path}:{number}: {error}") from error
        if not fields:
            continue
        if len(fields) != 3:
            raise InputError(f"{path}:{number}: expected 'image1 image2 flow', got {len(fields)} field(s)")
        image1, image2, flow = (path.parent / field for field in fields)
        for file in (image1, image2, flow):
            _file(file, f"file named on line {number} of {path}")
        scene = str(Path(fields[0]).parent)
        samples.append(Sample(image1, image2, scene, fields[0], flow=flow, frame=len(samples)))
    if not samples:
        raise InputError(f"{path} lists no pairs")
    kinds = {sample.flow.suffix.lower() == ".png" for sample in samples if sample.flow is not None}
    if len(kinds) > 1:
        raise InputError(f"{path} mixes .flo and KITTI PNG ground truth; give one kind per list")
    protocol = KITTI_PROTOCOL if kinds == {True} else SINTEL_PROTOCOL
    return samples, dataclasses.replace(protocol, published=False)


SPLITS = {
    "sintel": ("clean", "final"),
    "kitti-2015": ("training",),
    "kitti-2012": ("training",),
    "chairs": ("validation", "training"),
    "middlebury": ("other",),
    "hd1k": ("training",),
}
# Evaluated when no split is asked for: chairs' training split is for training.
DEFAULT_SPLITS = {**SPLITS, "chairs": ("validation",)}


def load_splits(dataset: str, root: str | os.PathLike, split: str | None = None) -> list[Split]:
    """The evaluation splits of a dataset under root (a file for "list"): all of DEFAULT_SPLITS, or the
    one named."""
    dataset, root = dataset_name(dataset), Path(root)
    if dataset == "list":
        samples, protocol = load_list(root)
        if split not in (None, root.stem):
            raise InputError(f"--dataset list has one split, named after the file ({root.stem!r}), not {split!r}")
        return [Split(dataset, root.stem, tuple(samples), protocol)]
    if split is not None and split not in SPLITS[dataset]:
        raise InputError(f"{dataset} has the splits {', '.join(SPLITS[dataset])}, not {split!r}")
    splits = []
    for name in (split,) if split else DEFAULT_SPLITS[dataset]:
        if dataset == "sintel":
            samples = _sintel_pass(root, "training", name)
        elif dataset.startswith("kitti"):
            samples = _kitti(root, dataset, "training")
        elif dataset == "chairs":
            samples = _chairs(root, name)
        elif dataset == "middlebury":
            samples = _middlebury(root)
        else:
            samples = _hd1k(root)
        splits.append(Split(dataset, name, tuple(samples), PROTOCOLS[dataset]))
    return splits


def load_test_splits(dataset: str, root: str | os.PathLike) -> list[Split]:
    """The test sets that the benchmarks' servers score: Sintel's test/{clean,final} and KITTI's
    testing/ (no ground truth)."""
    dataset, root = dataset_name(dataset), Path(root)
    if dataset == "sintel":
        return [
            Split(dataset, dstype, tuple(_sintel_pass(root, "test", dstype)), SINTEL_PROTOCOL)
            for dstype in ("clean", "final")
        ]
    if dataset.startswith("kitti"):
        return [Split(dataset, "testing", tuple(_kitti(root, dataset, "testing")), KITTI_PROTOCOL)]
    raise InputError(f"submissions are written for sintel, kitti-2015 and kitti-2012, not {dataset}")
