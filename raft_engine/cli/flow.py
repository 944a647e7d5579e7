"""The `raft-engine` command line."""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raft_engine.errors import RaftEngineError, UsageError

if TYPE_CHECKING:
    from fractions import Fraction

    import numpy as np

    from raft_engine.model.config import RAFTConfig
    from raft_engine.model.raft import RAFT
    from raft_engine.runtime.engine import FlowEngine

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def collect_frames(inputs: list[str]) -> tuple[list[Path], bool]:
    """-> (frames in order, whether the output is a single pair). One folder: its images in natural
    name order. Files: in the order given."""
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        frames = sorted((p for p in paths[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if len(frames) < 2:
            raise UsageError(f"folder {paths[0]} holds {len(frames)} image(s); at least 2 frames are needed")
        return frames, False
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a folder; give either one folder or a list of image files")
        if not path.is_file():
            raise UsageError(f"no such image file: {path}")
    if len(paths) < 2:
        raise UsageError("give two frames, a list of frames, or a folder of frames")
    return paths, len(paths) == 2


def _pixel(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (e.g. 120,48), got {text!r}") from None
    return x, y


# Iterations when --iters is not given: the default of FlowEngine.estimate and of export_onnx.
DEFAULT_ITERS = 12
# Pairs per batch of `flow` on a sequence when --batch-size is not given: FlowEngine.sequence's default
# on CUDA; 1 on the CPU, where batching pairs was slower (RAFT-large at 436x1024 on 2 cores: 0.46 pairs/s
# in batches of 1, 0.35 in a batch of 3; see benchmarks/sequence.py).
DEFAULT_BATCH_SIZE = 4
# Frame rate of a flow video made from image files, when --fps is not given.
DEFAULT_FPS = 30
# FlowEngine's options that the command line passes through when given (see _make_engine).
ENGINE_OPTIONS = ("device", "dtype", "padding", "backend", "corr")


def _shared_options() -> dict[str, dict]:
    """The options several commands share, declared once: every command offers the same choices (the
    library's own constants) and the same default, None. None marks an option as not given, which
    `flow --onnx` needs to refuse the options a graph fixes; it stands for the default that the help
    states and that the library applies (see _make_engine)."""
    from raft_engine.model.config import VARIANTS
    from raft_engine.runtime.engine import BACKENDS, CORR_MODES
    from raft_engine.runtime.inputs import DTYPE_NAMES, PADDING_MODES

    return {
        "weights": dict(
            metavar="W",
            help="checkpoint file (.pth/.pt/.safetensors, published or torchvision layout), preset name, or "
            "builtin (the default: the package's own RAFT-small, offline)",
        ),
        "iters": dict(type=int, metavar="N", help=f"refinement iterations (default {DEFAULT_ITERS})"),
        "device": dict(metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda if available)"),
        "dtype": dict(choices=DTYPE_NAMES, help="compute precision (default fp32)"),
        "padding": dict(choices=PADDING_MODES, help="how to pad to a multiple of 8 (default sintel)"),
        "backend": dict(
            choices=BACKENDS, help="Triton kernels or the PyTorch reference (default: triton on CUDA, torch on the CPU)"
        ),
        "corr": dict(
            choices=CORR_MODES,
            help="dense correlation volume, or on-demand correlation in O(HW) memory "
            "(default: on-demand when the volume would exceed 2 GiB)",
        ),
        "variant": dict(choices=VARIANTS, help="expected RAFT variant (default: inferred from the checkpoint)"),
    }


def _add_shared(container, names: tuple[str, ...], helps: dict[str, str]) -> None:
    """Add the named shared options to a parser or an argument group; `helps` may reword an option's help
    for one command, never its choices or default."""
    options = _shared_options()
    for name in names:
        option = {**options[name], **({"help": helps[name]} if name in helps else {})}
        container.add_argument(f"--{name}", default=None, **option)


def _options(*names: str, **helps: str) -> argparse.ArgumentParser:
    """A parent parser (argparse's `parents=`) holding the named shared options."""
    parent = argparse.ArgumentParser(add_help=False)
    _add_shared(parent, names, helps)
    return parent


def _model_source() -> argparse.ArgumentParser:
    """flow's parent parser for where the model comes from: a checkpoint (--weights) or an exported graph
    (--onnx), never both."""
    from raft_engine.export.ort_session import PROVIDER_CHOICES

    parent = argparse.ArgumentParser(add_help=False)
    source = parent.add_mutually_exclusive_group()
    _add_shared(source, ("weights",), {})
    source.add_argument("--onnx", metavar="FILE", help="run an exported graph with ONNX Runtime instead")
    parent.add_argument(
        "--providers",
        default=None,
        choices=PROVIDER_CHOICES,
        help="with --onnx: ONNX Runtime execution provider (default: cuda if available)",
    )
    return parent


def _build_parser() -> argparse.ArgumentParser:
    from raft_engine import __version__

    parser = argparse.ArgumentParser(prog="raft-engine", description="RAFT optical flow.")
    parser.add_argument("--version", action="version", version=f"raft-engine {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    flow = commands.add_parser(
        "flow",
        parents=[
            _model_source(),
            _options(
                "iters",
                *ENGINE_OPTIONS,
                "variant",
                iters=f"refinement iterations (default {DEFAULT_ITERS}; --onnx: the graph's)",
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

    inspect = commands.add_parser(
        "inspect",
        parents=[_options("weights", "iters", *ENGINE_OPTIONS)],
        help="pictures of RAFT's internals for a pair: response maps, correspondences, windows, features",
        description="Trace one pair and write PNG/GIF pictures and an index.html into the output folder.",
    )
    inspect.add_argument("image1", metavar="IMG1")
    inspect.add_argument("image2", metavar="IMG2")
    inspect.add_argument(
        "--pixel",
        action="append",
        type=_pixel,
        required=True,
        metavar="X,Y",
        help="a test pixel in image 1 (repeat for more)",
    )
    inspect.add_argument("-o", "--output", default="inspect", metavar="DIR", help="output folder (default inspect/)")

    export = commands.add_parser(
        "export",
        parents=[
            _options(
                "weights",
                "iters",
                "corr",
                iters=f"unrolled iterations (default {DEFAULT_ITERS})",
                corr="dense correlation volume, or on-demand correlation in standard ONNX operators, O(HW) memory "
                "(default: on-demand when the volume would exceed 2 GiB, or the size is dynamic)",
            )
        ],
        help="export a model to ONNX with a fixed iteration count, verified with ONNX Runtime; optionally as a "
        "Triton Inference Server model repository",
    )
    export.add_argument("--height", type=int, metavar="H", help="input height, a multiple of 8")
    export.add_argument("--width", type=int, metavar="W", help="input width, a multiple of 8")
    export.add_argument(
        "--dynamic-size",
        action="store_true",
        help="any height and width (multiples of 8, 128 to 8192); --height/--width: the size to trace and verify at "
        "(default 256x320)",
    )
    export.add_argument("-o", "--output", default=None, metavar="FILE", help="default raft.onnx")
    export.add_argument("--batch", type=int, default=None, metavar="B", help="batch size of the graph (default 1)")
    export.add_argument("--dynamic-batch", action="store_true", help="any batch size at run time")
    export.add_argument("--fp16", action="store_true", help="encoders and update block in float16")
    export.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 18)")
    export.add_argument("--flow-low", action="store_true", help="also output the 1/8-resolution flow")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")
    triton = export.add_argument_group("Triton Inference Server model repository")
    triton.add_argument(
        "--triton-repository",
        metavar="DIR",
        help="write DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx (instead of -o); DIR must be new or empty",
    )
    triton.add_argument("--model-name", default=None, metavar="NAME", help="the model's name and folder (default raft)")
    triton.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="largest batch the server forms from requests, with dynamic batching (default 8; 0: no batching)",
    )
    triton.add_argument("--instances", type=int, default=None, metavar="N", help="model instances per GPU (default 1)")
    triton.add_argument("--tensorrt-fp16", action="store_true", help="serve through TensorRT in fp16")
    triton.add_argument("--force", action="store_true", help="write into a non-empty DIR (other models are kept)")

    demo = commands.add_parser(
        "demo",
        parents=[_options("weights", "iters", "device")],
        help="flow of a generated pair with the built-in model, beside the exact flow, and its error",
        description="Generate a held-out pair (never used in training), estimate its flow and write the two frames, "
        "the flow, the ground truth and all four side by side; print the end-point error.",
    )
    demo.add_argument("-o", "--output", default="demo", metavar="DIR", help="output folder (default demo/)")
    demo.add_argument(
        "--seed", type=int, default=3, help="scene seed, below 1000000 (default 3: a held-out pair of typical error)"
    )
    demo.add_argument("--height", type=int, default=384, metavar="H", help="image height (default 384)")
    demo.add_argument("--width", type=int, default=512, metavar="W", help="image width (default 512)")
    # main() hands `bench` to the benchmark's own parser before this one runs: listed here for --help only.
    commands.add_parser("bench", help="benchmark configurations (options: raft-engine bench --help)", add_help=False)
    commands.add_parser("presets", help="list the named weights and whether they are cached")
    selftest = commands.add_parser(
        "selftest",
        parents=[_options("device")],
        help="check that this machine runs every backend correctly, and how fast (the first command on a new GPU)",
        description="Print the environment, run every backend that applies (torch, Triton, compiled, CUDA graphs, "
        "ONNX Runtime) on a generated pair at two sizes, RAFT-large and RAFT-small, float32 and half precision, and "
        "compare each with the float32 torch reference. Exits 1 when a check fails; skipped checks do not fail.",
    )
    selftest.add_argument("--quick", action="store_true", help="small sizes, 4 iterations, fewer compiles")
    selftest.add_argument("--json", metavar="PATH", help="also write the environment and one record per check")
    _add_evaluate_parser(commands)
    return parser


def _add_evaluate_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        parents=[
            _model_source(),
            _options(
                "iters",
                *ENGINE_OPTIONS,
                iters="refinement iterations (default: the dataset's published protocol, Sintel 32, KITTI 24)",
                padding="how to pad to a multiple of 8 (default: the dataset's protocol, sintel; kitti for KITTI)",
            ),
        ],
        help="metrics on a standard dataset as distributed (Sintel, KITTI, Chairs, ...), with the published protocol",
        description="Evaluate on a dataset in its own layout under --root: EPE, the fractions under 1, 3 and 5 px, "
        "Fl-all, and where the masks exist Sintel's matched/unmatched and KITTI's non-occluded metrics, with the "
        "iterations and padding of the published evaluation. --submit writes the test-set submission instead.",
    )
    evaluate.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="sintel, kitti-2015 (or kitti), kitti-2012, chairs, middlebury, hd1k, or list",
    )
    evaluate.add_argument(
        "--root", required=True, metavar="DIR", help="the unpacked dataset; for list, a text file of 'img1 img2 flow'"
    )
    evaluate.add_argument("--split", metavar="S", help="one split only (default: all: Sintel clean and final, ...)")
    evaluate.add_argument("--compile", action="store_true", help="run the forward under torch.compile")
    evaluate.add_argument("--limit", type=int, metavar="N", help="the first N pairs of each split only")
    evaluate.add_argument("--json", metavar="PATH", help="also write one record per (dataset, split)")
    evaluate.add_argument(
        "--submit", metavar="DIR", help="write the test-set submission (Sintel .flo, KITTI PNG) into DIR instead"
    )
    evaluate.add_argument(
        "--no-warm-start",
        action="store_true",
        help="--submit sintel: every pair cold (default: the published warm start)",
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


def _weights(args: argparse.Namespace) -> str:
    return "builtin" if args.weights is None else args.weights


def _iters(args: argparse.Namespace) -> int:
    return DEFAULT_ITERS if args.iters is None else args.iters


def _check_iters(args: argparse.Namespace) -> None:
    if args.iters is not None and args.iters < 1:
        raise UsageError(f"--iters must be >= 1, got {args.iters}")


def _make_engine(args: argparse.Namespace, model: RAFT) -> FlowEngine:
    """A FlowEngine with the engine options the command gave; an option left at None is not passed, so
    FlowEngine's own default applies and the command line cannot drift from the library."""
    from raft_engine.runtime.engine import FlowEngine

    given = {name: getattr(args, name) for name in ENGINE_OPTIONS if getattr(args, name, None) is not None}
    return FlowEngine(model, **given)


def _check_flow_args(args: argparse.Namespace, single_pair: bool) -> None:
    _check_iters(args)
    if args.warm_start and single_pair:
        raise UsageError("--warm-start needs a sequence of more than two frames")
    if args.max_magnitude is not None and not args.max_magnitude > 0:
        raise UsageError(f"--max-magnitude must be positive, got {args.max_magnitude}")
    for name in ("every", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.start is not None and args.start < 0:
        raise UsageError(f"--start must be >= 0, got {args.start}")
    if args.end is not None and args.end <= (args.start or 0):
        raise UsageError(f"--end must be greater than --start ({args.start or 0}), got {args.end}")
    if args.fps is not None and not 0 < args.fps < 10_000:
        raise UsageError(f"--fps must be a positive frame rate, got {args.fps}")
    if args.flo is not None and args.flo_dir is not None:
        raise UsageError("give --flo or --flo-dir, not both: for a sequence they are the same folder")


def _is_video_path(path: str | None) -> bool:
    from raft_engine.io import VIDEO_SUFFIXES

    return path is not None and Path(path).suffix.lower() in VIDEO_SUFFIXES


def _flow_input(args: argparse.Namespace) -> tuple[list[Path], Path | None, bool]:
    """-> (image frames, or [] for a video; the video file or None; whether the output is a single pair).
    Options that only sequences have (a video -o, --flo-dir, --png-dir, --start, --end, --every, --fps)
    make two files a sequence of one pair."""
    paths = [Path(p) for p in args.frames]
    videos = [path for path in paths if _is_video_path(str(path)) and not path.is_dir()]
    if videos and len(paths) > 1:
        raise UsageError(f"{videos[0]} is a video: give one video file alone, or image files")
    if videos:
        if not videos[0].is_file():
            raise UsageError(f"no such video file: {videos[0]}")
        return [], videos[0], False
    frames, single_pair = collect_frames(args.frames)
    sequence_only = (args.flo_dir, args.png_dir, args.start, args.end, args.every, args.fps)
    if any(value is not None for value in sequence_only) or _is_video_path(args.output):
        single_pair = False
    return frames, None, single_pair


@dataclass
class _Frames:
    """A sequence's frames as `flow` reads them: those that --start/--end/--every select, decoded as the
    engine asks for them, each checked against the first one's size."""

    label: str  # the input, for messages
    stem: Callable[[int], str]  # pair k's output files are named after its first frame
    count: int | None  # frames selected, where known before decoding
    fps: Fraction | None  # the input's frame rate, where known
    read: Callable[[], Iterator[np.ndarray]]


def _selection(args: argparse.Namespace) -> tuple[int, int | None, int]:
    return args.start or 0, args.end, args.every or 1


def _image_frames(paths: list[Path], args: argparse.Namespace) -> _Frames:
    from raft_engine.io import read_image

    start, end, every = _selection(args)
    selected = paths[start:end:every]
    stems = [frame.stem for frame in selected[:-1]]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise UsageError(
            f"several frames are named {clashes[0]!r} (in other folders or formats); their flows "
            "would overwrite each other in the output folder"
        )

    def read() -> Iterator[np.ndarray]:
        first: tuple[Path, tuple[int, ...]] | None = None
        for path in selected:
            image = read_image(path)
            if first is None:
                first = path, image.shape
            elif image.shape != first[1]:
                (h, w), (first_h, first_w) = image.shape[:2], first[1][:2]
                raise UsageError(f"{path} is {h}x{w} (HxW), but {first[0]} is {first_h}x{first_w}: every frame "
                                "must have the size of the first")  # fmt: skip
            yield image

    label = f"{len(paths)} frames" if start == 0 and end is None and every == 1 else "the selected frames"
    return _Frames(label, lambda k: stems[k], len(selected), None, read)


def _video_frames(path: Path, args: argparse.Namespace) -> _Frames:
    import itertools

    from raft_engine.io import read_video

    video = read_video(path)
    start, end, every = _selection(args)
    count = None
    if video.frame_count is not None:
        count = len(range(start, video.frame_count if end is None else min(end, video.frame_count), every))

    def read() -> Iterator[np.ndarray]:
        first_shape = None
        for index, frame in zip(itertools.count(start, every), itertools.islice(video, start, end, every)):
            if first_shape is None:
                first_shape = frame.shape
            elif frame.shape != first_shape:
                raise UsageError(f"{path}: frame {index} is {frame.shape[0]}x{frame.shape[1]} (HxW), but frame "
                                f"{start} is {first_shape[0]}x{first_shape[1]}")  # fmt: skip
            yield frame

    return _Frames(str(path), lambda k: f"{start + k * every:06d}", count, video.fps, read)


@dataclass
class _Outputs:
    """Where `flow` writes a sequence: a video of the colour-coded flow, a folder of flow images, and
    folders of .flo and KITTI PNG files; None where not asked for."""

    video: Path | None
    image_dir: Path | None
    flo_dir: Path | None
    kitti_dir: Path | None

    def describe(self) -> str:
        return ", ".join(str(p) for p in (self.video, self.image_dir, self.flo_dir, self.kitti_dir) if p is not None)


def _sequence_outputs(args: argparse.Namespace, video_input: bool) -> _Outputs:
    """A sequence's outputs; their folders are created."""
    output = args.output or ("flow.mp4" if video_input else "flow")
    flo = args.flo_dir or args.flo
    outputs = _Outputs(
        video=Path(output) if _is_video_path(output) else None,
        image_dir=None if _is_video_path(output) else Path(output),
        flo_dir=Path(flo) if flo else None,
        kitti_dir=Path(args.png_dir) if args.png_dir else None,
    )
    video_dir = outputs.video.parent if outputs.video is not None else None
    for folder in filter(None, (outputs.image_dir, outputs.flo_dir, outputs.kitti_dir, video_dir)):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} exists and is not a folder; a sequence writes one file per pair into a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create the output folder {folder}: {error}") from error
    if outputs.video is not None and outputs.video.is_dir():
        raise UsageError(f"{outputs.video} is a folder; -o names the video file to write")
    return outputs


@dataclass
class _Estimator:
    """What `flow` runs each pair through: the engine or an ONNX Runtime session."""

    estimate: Callable  # (image1, image2, flow_init or None) -> FlowResult
    sequence: Callable  # (iterator of frames) -> iterator of FlowResult, one per consecutive pair
    iters: int
    variant: str
    describe: Callable[[int, int], str]  # (height, width) -> where and how it ran, for the summary line


def _onnx_estimator(args: argparse.Namespace) -> _Estimator:
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
    exported_iters = int(session.metadata["raft_engine.iterations"])
    if args.iters is not None and args.iters != exported_iters:
        raise UsageError(f"{args.onnx} was exported with {exported_iters} iterations, not --iters {args.iters}")

    def pairwise(frames: Iterator[np.ndarray]) -> Iterator:
        previous = next(frames)
        for frame in frames:
            yield session.estimate(previous, frame)
            previous = frame

    return _Estimator(
        estimate=lambda image1, image2, flow_init: session.estimate(image1, image2),
        sequence=pairwise,
        iters=exported_iters,
        variant=session.metadata["raft_engine.variant"],
        describe=lambda height, width: f"ONNX Runtime {session.providers[0]}",
    )


def _engine_estimator(args: argparse.Namespace) -> _Estimator:
    from raft_engine.weights import load_model

    if args.providers is not None:
        raise UsageError("--providers applies with --onnx only")
    iters = _iters(args)
    model = load_model(_weights(args), variant=args.variant)
    engine = _make_engine(args, model)
    batch_size = args.batch_size or (DEFAULT_BATCH_SIZE if engine.device.type == "cuda" else 1)
    return _Estimator(
        estimate=lambda image1, image2, flow_init: engine.estimate(image1, image2, iters=iters, flow_init=flow_init),
        sequence=lambda frames: engine.sequence(frames, iters=iters, warm_start=args.warm_start, batch_size=batch_size),
        iters=iters,
        variant=model.config.variant,
        describe=lambda height, width: (
            f"{engine.device}, {engine.backend}, corr {engine.corr_mode_for(1, height, width)}"
        ),
    )


def _write_pair(frames: list[Path], args: argparse.Namespace, estimator: _Estimator) -> tuple[int, int]:
    """Estimate and write the flow of one pair -> the frames' (height, width)."""
    from raft_engine.io import flow_to_color, read_image, write_flo, write_image

    image1, image2 = read_image(frames[0]), read_image(frames[1])
    flow = estimator.estimate(image1, image2, None).flow[0]
    write_image(Path(args.output or "flow.png"), flow_to_color(flow, args.max_magnitude))
    if args.flo:
        write_flo(args.flo, flow)
    height, width = image1.shape[:2]
    return height, width


def _write_kitti(path: Path, flow: np.ndarray) -> int:
    """A KITTI 16-bit PNG flow file; pixels beyond its range (-512 to 511.98 px) are marked invalid ->
    how many."""
    import numpy as np

    from raft_engine.io import KITTI_SCALE, write_kitti_flow

    valid = np.all((flow >= -512) & (flow <= 32767 / KITTI_SCALE), axis=2)
    write_kitti_flow(path, flow, valid)
    return int(valid.size - valid.sum())


def _write_sequence(
    frames: Iterator[np.ndarray], source: _Frames, outputs: _Outputs, estimator: _Estimator, args: argparse.Namespace
) -> int:
    """Estimate the flow of each consecutive pair and write it where `outputs` say -> pairs written.
    Whatever happens, the video is closed so that its frames play; each flow file is written whole."""
    import contextlib
    from fractions import Fraction

    from tqdm import tqdm

    from raft_engine.io import VideoWriter, as_flow_array, flow_to_color, write_flo, write_image

    every = args.every or 1
    fps = Fraction(args.fps) if args.fps else (source.fps / every if source.fps else Fraction(DEFAULT_FPS))
    written, beyond_kitti = 0, 0
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(VideoWriter(outputs.video, fps)) if outputs.video else None
        bar = stack.enter_context(
            tqdm(
                total=None if source.count is None else source.count - 1,
                desc="flow",
                unit="pair",
                disable=None,  # None: tqdm shows the bar on a terminal only
                file=sys.stderr,
            )
        )
        for k, result in enumerate(estimator.sequence(frames)):
            flow, stem = as_flow_array(result.flow[0]), source.stem(k)
            if video is not None or outputs.image_dir is not None:
                colours = flow_to_color(flow, args.max_magnitude)
                if video is not None:
                    video.write(colours)
                if outputs.image_dir is not None:
                    write_image(outputs.image_dir / f"{stem}.png", colours)
            if outputs.flo_dir is not None:
                write_flo(outputs.flo_dir / f"{stem}.flo", flow)
            if outputs.kitti_dir is not None:
                beyond_kitti += _write_kitti(outputs.kitti_dir / f"{stem}.png", flow)
            written += 1
            bar.update(1)
    if beyond_kitti:
        warnings.warn(
            f"{beyond_kitti} pixels had flow beyond the KITTI PNG range; they are marked invalid there", stacklevel=2
        )
    return written


def _run_flow(args: argparse.Namespace) -> None:
    import itertools

    paths, video_path, single_pair = _flow_input(args)
    _check_flow_args(args, single_pair)
    if single_pair:
        estimator = _onnx_estimator(args) if args.onnx else _engine_estimator(args)
        start = time.perf_counter()
        height, width = _write_pair(paths, args, estimator)
        where, pairs = args.output or "flow.png", 1
    else:
        source = _video_frames(video_path, args) if video_path else _image_frames(paths, args)
        outputs = _sequence_outputs(args, video_path is not None)
        frames = source.read()
        head = list(itertools.islice(frames, 2))  # decoded before the model loads: a short input fails fast
        if len(head) < 2:
            chosen = " with --start/--end/--every" if (args.start, args.end, args.every) != (None,) * 3 else ""
            raise UsageError(f"{source.label}: {len(head)} frame(s) to read{chosen}; at least 2 frames are needed")
        estimator = _onnx_estimator(args) if args.onnx else _engine_estimator(args)
        start = time.perf_counter()
        pairs = _write_sequence(itertools.chain(head, frames), source, outputs, estimator, args)
        (height, width), where = head[0].shape[:2], outputs.describe()
    elapsed = time.perf_counter() - start
    print(
        f"wrote {pairs} flow field(s) of {height}x{width} to {where} (RAFT-{estimator.variant}, "
        f"{estimator.iters} iterations, {estimator.describe(height, width)}, {elapsed:.2f} s, "
        f"{pairs / elapsed:.2f} pairs/s)"
    )


def _run_inspect(args: argparse.Namespace) -> None:
    from raft_engine.io import read_image
    from raft_engine.tools.inspection_html import write_report
    from raft_engine.weights import load_model

    _check_iters(args)
    image1, image2 = read_image(args.image1), read_image(args.image2)
    engine = _make_engine(args, load_model(_weights(args)))
    trace = engine.trace(image1, image2, iters=_iters(args), pixels=args.pixel)
    files = write_report(trace, image1, args.output)
    print(f"wrote {len(files)} files to {args.output}; open {files[-1]}")


_TRITON_ONLY = ("model_name", "max_batch_size", "instances", "tensorrt_fp16", "force")


def _run_export(args: argparse.Namespace) -> None:
    from raft_engine.export import ExportError, export_onnx, export_triton
    from raft_engine.export.onnx_export import DEFAULT_OPSET
    from raft_engine.weights import load_model

    options = dict(
        iters=_iters(args),
        height=args.height,
        width=args.width,
        dtype="fp16" if args.fp16 else "fp32",
        opset=args.opset or DEFAULT_OPSET,
        flow_low=args.flow_low,
        verify=not args.no_verify,
        corr=args.corr or "auto",
        dynamic_size=args.dynamic_size,
    )
    if args.triton_repository is None:
        given = [f"--{name.replace('_', '-')}" for name in _TRITON_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise UsageError(f"{', '.join(given)} need(s) --triton-repository DIR")
    else:
        given = [flag for flag, value in (("-o", args.output), ("--batch", args.batch)) if value is not None]
        given += ["--dynamic-batch"] if args.dynamic_batch else []
        if given:
            raise UsageError(
                f"{', '.join(given)} do(es) not apply with --triton-repository: the model goes to "
                "DIR/NAME/1/model.onnx and --max-batch-size sets the batch"
            )
    try:
        if args.triton_repository is not None:
            # The repository is checked before the model is loaded and traced: a refusal costs nothing.
            from raft_engine.export.triton_server import check_repository

            check_repository(args.triton_repository, args.force)
            result = export_triton(
                load_model(_weights(args)),
                args.triton_repository,
                model_name=args.model_name or "raft",
                max_batch_size=8 if args.max_batch_size is None else args.max_batch_size,
                instances=1 if args.instances is None else args.instances,
                tensorrt_fp16=args.tensorrt_fp16,
                force=args.force,
                **options,
            )
            print(result)
            return
        report = export_onnx(
            load_model(_weights(args)),
            args.output or "raft.onnx",
            batch=1 if args.batch is None else args.batch,
            dynamic_batch=args.dynamic_batch,
            **options,
        )
    except ExportError as error:
        raise UsageError(str(error)) from error
    print(report)


def _smallest_side(config: RAFTConfig) -> int:
    """The smallest image side a model of this configuration accepts: sides are padded up to the next
    multiple of 8 and must then reach `min_image_size`, itself a multiple of 8, so a side up to 7 pixels
    short of it still passes."""
    return config.min_image_size - 7


def _run_demo(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    from raft_engine.io import flow_to_color, write_flo, write_image
    from raft_engine.scenes import TRAINING_SEED_START, generate_pair
    from raft_engine.weights import load_model

    if not 0 <= args.seed < TRAINING_SEED_START:
        raise UsageError(f"--seed must be in 0..{TRAINING_SEED_START - 1}: larger seeds are the training data's")
    _check_iters(args)
    iters = _iters(args)
    model = load_model(_weights(args))
    smallest = _smallest_side(model.config)
    if min(args.height, args.width) < smallest:
        raise UsageError(
            f"--height and --width must be at least {smallest} (RAFT-{model.config.variant} needs "
            f"{model.config.min_image_size} after padding to a multiple of 8), got {args.height}x{args.width}"
        )
    engine = _make_engine(args, model)
    pair = generate_pair(args.seed, args.height, args.width)
    start = time.perf_counter()
    flow = engine(pair.image1, pair.image2, iters=iters)[0].permute(1, 2, 0).cpu().numpy()
    elapsed = time.perf_counter() - start
    error = np.linalg.norm(flow - pair.flow, axis=2)
    largest = float(np.linalg.norm(pair.flow, axis=2).max())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shown = {
        "frame1.png": pair.image1,
        "frame2.png": pair.image2,
        "flow.png": flow_to_color(flow, max_magnitude=largest),
        "truth.png": flow_to_color(pair.flow, largest),
    }
    for name, image in shown.items():
        write_image(out / name, image)
    write_flo(out / "flow.flo", flow)
    write_flo(out / "truth.flo", pair.flow)
    sheet = Image.new("RGB", (2 * args.width + 10, 2 * args.height + 50), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (name, caption) in enumerate(
        (
            ("frame1.png", "frame 1"),
            ("frame2.png", "frame 2"),
            ("flow.png", f"estimated flow (EPE {error.mean():.2f} px)"),
            ("truth.png", "ground truth"),
        )
    ):
        x, y = (i % 2) * (args.width + 10), (i // 2) * (args.height + 25)
        sheet.paste(Image.fromarray(shown[name]), (x, y + 20))
        draw.text((x + 4, y + 4), caption, fill=(0, 0, 0))
    sheet.save(out / "demo.png")
    print(
        f"seed {args.seed}, {args.height}x{args.width}, displacements up to {largest:.0f} px: "
        f"EPE {error.mean():.2f} px, {100 * (error < 1).mean():.0f}% of pixels within 1 px "
        f"({engine.config.variant}, {iters} iterations, {engine.device}, {elapsed:.2f} s); wrote {out}/demo.png"
    )


def _run_selftest(args: argparse.Namespace) -> int:
    from raft_engine.tools.selftest import main as selftest

    return selftest(args)


def _run_presets(args: argparse.Namespace) -> None:
    from raft_engine.weights import PRESETS, cache_dir

    folder = cache_dir()
    print(f"{'builtin':22s} RAFT-small in package  this project's own, trained on generated scenes (offline)")
    for preset in PRESETS.values():
        cached = "cached" if (folder / preset.filename).is_file() else "not cached"
        print(f"{preset.name:22s} RAFT-{preset.variant:5s} {cached:10s} {preset.description}")
    print(f"cache: {folder} (RAFT_ENGINE_CACHE)")


def _evaluate_engine(args: argparse.Namespace) -> tuple[object, str]:
    """evaluate's engine -> (engine, what it runs, for the records): an ONNX Runtime session for --onnx,
    else a FlowEngine with the options given. --padding is not passed: evaluate pads each pair itself."""
    if args.onnx:
        from raft_engine.export import OrtFlowSession

        given = [f"--{name}" for name in ("device", "dtype", "backend", "corr") if getattr(args, name) is not None]
        if given or args.compile:
            fixed = ", ".join(given + (["--compile"] if args.compile else []))
            raise UsageError(f"{fixed} do(es) not apply with --onnx: the exported graph fixes them")
        return OrtFlowSession(args.onnx, providers=args.providers or "auto"), args.onnx
    if args.providers is not None:
        raise UsageError("--providers applies with --onnx only")
    from raft_engine.runtime.engine import FlowEngine
    from raft_engine.weights import load_model

    options = {
        name: getattr(args, name) for name in ENGINE_OPTIONS if name != "padding" and getattr(args, name) is not None
    }
    return FlowEngine(load_model(_weights(args)), compile=args.compile, **options), _weights(args)


def _check_evaluate_args(args: argparse.Namespace) -> None:
    from raft_engine.evaluation.datasets import dataset_name

    dataset_name(args.dataset)  # an unknown name fails before a model loads
    _check_iters(args)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.submit and (args.json or args.split):
        raise UsageError("--submit writes the test set's flow: --json and --split apply to evaluation only")
    if args.no_warm_start and not args.submit:
        raise UsageError("--no-warm-start applies with --submit only")


def _run_evaluate(args: argparse.Namespace) -> None:
    import json

    from raft_engine import __version__
    from raft_engine.evaluation import evaluate, format_table, write_submission

    _check_evaluate_args(args)
    engine, weights = _evaluate_engine(args)
    options = {"iters": args.iters, "padding": args.padding, "limit": args.limit, "progress": True}
    if args.submit:
        files = write_submission(
            engine, args.dataset, args.root, args.submit, warm_start=not args.no_warm_start, **options
        )
        print(f"wrote {len(files)} flow files to {args.submit}")
        return
    records = evaluate(engine, args.dataset, args.root, split=args.split, weights=weights, **options)
    first = records[0]
    print(
        f"RAFT-{first['variant']} ({weights}), {first['iters']} iterations, {first['padding']} padding, "
        f"{first['backend']}, {first['dtype']}, {first['device']}"
    )
    print(format_table(records))
    if args.json:
        from raft_engine.io.files import make_folder, write_atomically

        make_folder(Path(args.json).parent)
        write_atomically(args.json, json.dumps({"raft_engine": __version__, "records": records}, indent=1) + "\n")


# Optional packages some commands need, and how to get them.
_OPTIONAL = {
    "onnx": "pip install onnx onnxscript (the project's [onnx] extra)",
    "onnxscript": "pip install onnx onnxscript (the project's [onnx] extra)",
    "onnxruntime": "pip install onnxruntime-gpu (or the CPU-only onnxruntime)",
    "av": 'pip install av (PyAV, the project\'s [video] extra: pip install -e ".[video]")',
    "tritonclient": "pip install 'tritonclient[http]' (the project's [triton] extra)",
    "matplotlib": "pip install matplotlib (the project's [plot] extra)",
}


# What runs each command; `bench` is not here: main() hands it to raft_engine.tools.benchmark before parsing.
_COMMANDS = {
    "flow": _run_flow,
    "inspect": _run_inspect,
    "export": _run_export,
    "demo": _run_demo,
    "presets": _run_presets,
    "selftest": _run_selftest,
    "evaluate": _run_evaluate,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark has its own options: python bench.py --help
        from raft_engine.tools.benchmark import main as bench

        return bench(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"raft-engine: warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    try:
        code = _COMMANDS[args.command](args)
    except ModuleNotFoundError as error:
        # An optional package that this command needs: one line that says how to install it. Any other
        # missing module is a broken installation (a bug), and keeps its traceback.
        if error.name in _OPTIONAL:
            print(f"raft-engine: error: {args.command} needs {error.name}: {_OPTIONAL[error.name]}", file=sys.stderr)
            return 1
        if not isinstance(error, RaftEngineError):
            raise
        print(f"raft-engine: error: {error}", file=sys.stderr)
        return 1
    except RaftEngineError as error:  # a mistake in what was asked, or a missing resource: one line
        print(f"raft-engine: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raft-engine: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
