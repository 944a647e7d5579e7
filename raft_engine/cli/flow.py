"""`raft-engine flow`: the flow of a pair, of consecutive frames, or of a video."""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raft_engine.cli import options
from raft_engine.cli.progress import Steps
from raft_engine.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from raft_engine.io.flow_outputs import SequenceOutputs
    from raft_engine.io.frames import FrameSource
    from raft_engine.model.raft import BidirectionalResult
    from raft_engine.runtime.estimator import FlowEstimator

# Pairs per batch of `flow` on a sequence when --batch-size is not given: FlowEngine.sequence's default
# on CUDA; 1 on the CPU, where batching pairs was slower (RAFT-large at 436x1024 on 2 cores: 0.46 pairs/s
# in batches of 1, 0.35 in a batch of 3; see benchmarks/sequence.py).
DEFAULT_BATCH_SIZE = 4
# Frame rate of a flow video made from image files, when --fps is not given.
DEFAULT_FPS = 30


def register(commands: Any) -> None:
    flow = commands.add_parser(
        "flow",
        parents=[
            options.model_source(),
            options.options(
                "iters",
                *options.ENGINE_OPTIONS,
                "variant",
                iters=f"refinement iterations (default {options.DEFAULT_ITERS}; --onnx: the graph's)",
            ),
        ],
        help="estimate the flow of a pair, of consecutive frames, or of a video",
        description="Estimate optical flow. Two files: one flow image (-o is a file). A video, a folder or a "
        "longer list of frames: one flow per consecutive pair, each frame encoded once, written as a video "
        "(-o ending in .mp4, .mkv, ...) or a folder of flow images (-o a folder), and as .flo and KITTI PNG "
        "files (--flo-dir, --png-dir), files named after the first frame of each pair (its number in a video).",
    )
    flow.add_argument(
        "frames", nargs="+", metavar="FRAME", help="two images, a list of images, one folder, or one video file"
    )
    flow.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="flow image (PNG) for a pair, default flow.png; for a sequence a video file (.mp4: H.264) or a "
        "folder of images, default flow.mp4 for a video input, flow/ otherwise",
    )
    flow.add_argument(
        "--flo", metavar="PATH", help="also write Middlebury .flo: a file for a pair, a folder for a sequence"
    )
    flow.add_argument(
        "--warm-start",
        action="store_true",
        help="sequences: start each pair from the previous pair's 1/8 flow, carried forward to its first frame",
    )
    flow.add_argument(
        "--max-magnitude",
        type=float,
        default=None,
        metavar="M",
        help="flow length drawn at full saturation (default: each image's own maximum)",
    )
    _add_sequence_options(flow)
    _add_direction_options(flow)
    flow.set_defaults(run=run)


# A pair's outputs of the backward flow and the masks: (option, what it takes, what it is).
_PAIR_DIRECTION_OPTIONS = {
    "backward": "a picture of the flow image2 -> image1 (PNG, ...)",
    "flo_back": "the flow image2 -> image1 as Middlebury .flo",
    "occlusion": "a 1-bit PNG mask, white where a pixel of image1 fails the forward-backward check or leaves image2",
    "occlusion_back": "the same mask for the pixels of image2",
}


def _add_direction_options(flow: argparse.ArgumentParser) -> None:
    """flow's options for both directions and the forward-backward check's masks."""
    group = flow.add_argument_group("both directions and occlusion")
    for name, help_text in _PAIR_DIRECTION_OPTIONS.items():
        group.add_argument(f"--{name.replace('_', '-')}", metavar="PATH", help=f"a pair: also {help_text}")
    group.add_argument(
        "--bidirectional",
        action="store_true",
        help="sequences: both directions of each pair, the backward files beside the forward ones as "
        "STEM.backward.EXT (a video shows the forward flow only)",
    )
    group.add_argument(
        "--occlusion-dir",
        metavar="DIR",
        help="with --bidirectional: each pair's masks, 1-bit PNG, STEM.png (image 1) and STEM.backward.png (image 2)",
    )


def _direction_options(args: argparse.Namespace) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in _PAIR_DIRECTION_OPTIONS if getattr(args, name) is not None]


def _check_direction_args(args: argparse.Namespace, single_pair: bool) -> None:
    given = _direction_options(args)
    if given and not single_pair:
        raise UsageError(
            f"{', '.join(given)} apply to a pair; for a sequence give --bidirectional and --occlusion-dir DIR"
        )
    if args.occlusion_dir is not None and not args.bidirectional:
        raise UsageError("--occlusion-dir needs --bidirectional: the masks come from the forward-backward check")
    if args.warm_start and args.bidirectional:
        raise UsageError(
            "--warm-start and --bidirectional do not go together: a warm start carries the forward flow only"
        )


def _add_sequence_options(flow: argparse.ArgumentParser) -> None:
    """flow's options for sequences and video; any of them makes two files a sequence of one pair."""
    group = flow.add_argument_group("sequences and video")
    group.add_argument("--flo-dir", metavar="DIR", help="write one Middlebury .flo file per pair into DIR")
    group.add_argument("--png-dir", metavar="DIR", help="write one KITTI 16-bit PNG flow file per pair into DIR")
    group.add_argument("--start", type=int, metavar="N", help="first frame to read, counted from 0 (default 0)")
    group.add_argument("--end", type=int, metavar="N", help="stop before frame N (default: after the last frame)")
    group.add_argument("--every", type=int, metavar="K", help="read every K-th frame: pairs K frames apart (default 1)")
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"consecutive pairs run together (default {DEFAULT_BATCH_SIZE} on CUDA, 1 on the CPU; with --warm-start, "
        "the feature encoder only)",
    )
    group.add_argument(
        "--fps",
        type=float,
        metavar="F",
        help="frame rate of a video written by -o (default: the input video's divided by --every; 30 for images)",
    )


def _check_args(args: argparse.Namespace, single_pair: bool) -> None:
    options.check_iters(args)
    if args.warm_start and single_pair:
        raise UsageError("--warm-start needs a sequence of more than two frames")
    if args.max_magnitude is not None and not args.max_magnitude > 0:
        raise UsageError(f"--max-magnitude must be positive, got {args.max_magnitude}")
    for name in ("every", "batch_size"):
        options.positive(name, getattr(args, name))
    if args.start is not None and args.start < 0:
        raise UsageError(f"--start must be >= 0, got {args.start}")
    if args.end is not None and args.end <= (args.start or 0):
        raise UsageError(f"--end must be greater than --start ({args.start or 0}), got {args.end}")
    if args.fps is not None and not 0 < args.fps < 10_000:
        raise UsageError(f"--fps must be a positive frame rate, got {args.fps}")
    if args.flo is not None and args.flo_dir is not None:
        raise UsageError("give --flo or --flo-dir, not both: for a sequence they are the same folder")
    _check_direction_args(args, single_pair)


def _flow_input(args: argparse.Namespace) -> tuple[list[Path], Path | None, bool]:
    """-> (image frames, or [] for a video; the video file or None; whether the output is a single pair).
    Options that only sequences have (a video -o, --flo-dir, --png-dir, --start, --end, --every, --fps)
    make two files a sequence of one pair."""
    from raft_engine.io.frames import collect_frames, is_video_path

    paths = [Path(p) for p in args.frames]
    videos = [path for path in paths if is_video_path(path) and not path.is_dir()]
    if videos and len(paths) > 1:
        raise UsageError(f"{videos[0]} is a video: give one video file alone, or image files")
    if videos:
        if not videos[0].is_file():
            raise UsageError(f"no such video file: {videos[0]}")
        return [], videos[0], False
    frames, single_pair = collect_frames(args.frames)
    sequence_only = (args.flo_dir, args.png_dir, args.start, args.end, args.every, args.fps, args.occlusion_dir)
    if any(value is not None for value in sequence_only) or is_video_path(args.output):
        single_pair = False
    return frames, None, single_pair


def _sequence_outputs(args: argparse.Namespace, video_input: bool) -> SequenceOutputs:
    """A sequence's outputs; their folders are created."""
    from raft_engine.io.flow_outputs import SequenceOutputs
    from raft_engine.io.frames import is_video_path

    output = args.output or ("flow.mp4" if video_input else "flow")
    flo = args.flo_dir or args.flo
    return SequenceOutputs(
        video=Path(output) if is_video_path(output) else None,
        image_dir=None if is_video_path(output) else Path(output),
        flo_dir=Path(flo) if flo else None,
        kitti_dir=Path(args.png_dir) if args.png_dir else None,
        occlusion_dir=Path(args.occlusion_dir) if args.occlusion_dir else None,
        bidirectional=args.bidirectional,
        max_magnitude=args.max_magnitude,
    ).prepare()


def _onnx_estimator(args: argparse.Namespace) -> FlowEstimator:
    from raft_engine.export import OrtFlowSession

    # --padding is not among them: the session pads the images as the engine does.
    given = [
        f"--{name}" for name in ("device", "dtype", "backend", "corr", "variant") if getattr(args, name) is not None
    ]
    if given:
        raise UsageError(f"{', '.join(given)} do(es) not apply with --onnx: the exported graph fixes them")
    if args.warm_start:
        raise UsageError("--warm-start is not available with --onnx: the exported graph has no flow_init input")
    if args.batch_size is not None:
        raise UsageError("--batch-size does not apply with --onnx: the exported graph runs one pair at a time")
    padding = {} if args.padding is None else {"padding": args.padding}
    session = OrtFlowSession(args.onnx, providers=args.providers or "auto", **padding)
    exported_iters = session.settings.iters
    if args.iters is not None and args.iters != exported_iters:
        raise UsageError(f"{args.onnx} was exported with {exported_iters} iterations, not --iters {args.iters}")
    return session


def _engine_estimator(args: argparse.Namespace) -> FlowEstimator:
    from raft_engine.weights import load_model

    if args.providers is not None:
        raise UsageError("--providers applies with --onnx only")
    return options.make_engine(args, load_model(options.weights(args), variant=args.variant))


def _iterations(args: argparse.Namespace, estimator: FlowEstimator) -> int:
    """The iterations each pair runs: the graph's own for an exported graph, else --iters or the default."""
    fixed = estimator.settings.iters
    return fixed if fixed is not None else options.iters(args)


def _batch_size(args: argparse.Namespace, estimator: FlowEstimator) -> int | None:
    """Pairs per batch of an engine's sequence: --batch-size, else DEFAULT_BATCH_SIZE on CUDA and 1 on the
    CPU; None for an exported graph (pair by pair)."""
    if estimator.settings.runs_own_iters:
        return None
    return args.batch_size or (DEFAULT_BATCH_SIZE if estimator.settings.device.startswith("cuda") else 1)


def _write_pair(frames: list[Path], args: argparse.Namespace, estimator: FlowEstimator, step: Steps) -> tuple[int, int]:
    """Estimate and write the flow of one pair -> the frames' (height, width)."""
    from raft_engine.io import flow_to_color, read_image, write_flo, write_image

    image1, image2 = read_image(frames[0]), read_image(frames[1])
    iters = None if estimator.settings.runs_own_iters else options.iters(args)
    step("estimate")
    both = None
    if args.bidirectional or _direction_options(args):
        both = estimator.bidirectional(image1, image2, iters=iters)
        flow = both.forward.flow[0]
    else:
        flow = estimator.estimate(image1, image2, iters=iters).flow[0]
    step("write")
    write_image(Path(args.output or "flow.png"), flow_to_color(flow, args.max_magnitude))
    if args.flo:
        write_flo(args.flo, flow)
    if both is not None:
        _write_pair_directions(args, both)
    height, width = image1.shape[:2]
    return height, width


def _write_pair_directions(args: argparse.Namespace, both: BidirectionalResult) -> None:
    from raft_engine.io import flow_to_color, write_flo, write_image, write_mask

    backward = both.backward.flow[0]
    if args.backward:
        write_image(Path(args.backward), flow_to_color(backward, args.max_magnitude))
    if args.flo_back:
        write_flo(args.flo_back, backward)
    if args.occlusion:
        write_mask(args.occlusion, both.occlusion[0])
    if args.occlusion_back:
        write_mask(args.occlusion_back, both.occlusion_backward[0])


def _write_sequence(
    frames: Iterator[np.ndarray],
    source: FrameSource,
    outputs: SequenceOutputs,
    estimator: FlowEstimator,
    args: argparse.Namespace,
    fps: Fraction,
) -> int:
    """Estimate the flow of each consecutive pair and write it where `outputs` say -> pairs written.
    Whatever happens, the video is closed so that its frames play; each flow file is written whole."""
    from tqdm import tqdm

    total = None if source.count is None else source.count - 1
    # disable=None: tqdm shows the bar on a terminal only.
    with outputs.open(fps), tqdm(total=total, desc="flow", unit="pair", disable=None, file=sys.stderr) as bar:
        iters = None if estimator.settings.runs_own_iters else options.iters(args)
        batch_size = _batch_size(args, estimator)
        if args.bidirectional:
            both_ways = estimator.sequence(frames, iters=iters, batch_size=batch_size, bidirectional=True)
            for k, both in enumerate(both_ways):
                outputs.write(
                    source.stem(k), both.forward.flow[0], both.backward.flow[0], both.occlusion[0],
                    both.occlusion_backward[0],
                )  # fmt: skip
                bar.update(1)
        else:
            pairs = estimator.sequence(frames, iters=iters, warm_start=args.warm_start, batch_size=batch_size)
            for k, result in enumerate(pairs):
                outputs.write(source.stem(k), result.flow[0])
                bar.update(1)
    return outputs.written


def _frame_source(args: argparse.Namespace, paths: list[Path], video_path: Path | None) -> FrameSource:
    from raft_engine.io.frames import Selection, image_frames, video_frames

    selection = Selection(args.start or 0, args.end, args.every or 1)
    return video_frames(video_path, selection) if video_path else image_frames(paths, selection)


def _check_pair_outputs(args: argparse.Namespace) -> None:
    """A pair's outputs, before any work: -o an image file (its suffix one Pillow writes), --flo a .flo file."""
    from raft_engine.io.files import check_output_file
    from raft_engine.io.images import image_format_for

    output = args.output or "flow.png"
    image_format_for(output)
    check_output_file(output, what="-o")
    if args.flo:
        check_output_file(args.flo, [".flo"], what="--flo")
    if args.backward:
        image_format_for(args.backward)
        check_output_file(args.backward, what="--backward")
    if args.flo_back:
        check_output_file(args.flo_back, [".flo"], what="--flo-back")
    for name in ("occlusion", "occlusion_back"):
        if getattr(args, name):
            check_output_file(getattr(args, name), [".png"], what=f"--{name.replace('_', '-')}")


def run(args: argparse.Namespace) -> None:
    paths, video_path, single_pair = _flow_input(args)
    _check_args(args, single_pair)
    if single_pair:
        _check_pair_outputs(args)
        with Steps("flow") as step:
            step("load the model")
            estimator = _onnx_estimator(args) if args.onnx else _engine_estimator(args)
            start = time.perf_counter()
            height, width = _write_pair(paths, args, estimator, step)
        where, pairs = args.output or "flow.png", 1
    else:
        source = _frame_source(args, paths, video_path)
        outputs = _sequence_outputs(args, video_path is not None)
        frames = source.read()
        head = list(itertools.islice(frames, 2))  # decoded before the model loads: a short input fails fast
        if len(head) < 2:
            chosen = " with --start/--end/--every" if (args.start, args.end, args.every) != (None,) * 3 else ""
            raise UsageError(f"{source.label}: {len(head)} frame(s) to read{chosen}; at least 2 frames are needed")
        estimator = _onnx_estimator(args) if args.onnx else _engine_estimator(args)
        every = args.every or 1
        fps = Fraction(args.fps) if args.fps else (source.fps / every if source.fps else Fraction(DEFAULT_FPS))
        start = time.perf_counter()
        pairs = _write_sequence(itertools.chain(head, frames), source, outputs, estimator, args, fps)
        (height, width), where = head[0].shape[:2], outputs.describe()
    elapsed = time.perf_counter() - start
    print(
        f"wrote {pairs} flow field(s) of {height}x{width} to {where} (RAFT-{estimator.settings.variant}, "
        f"{_iterations(args, estimator)} iterations, {estimator.describe(height, width)}, {elapsed:.2f} s, "
        f"{pairs / elapsed:.2f} pairs/s)"
    )
