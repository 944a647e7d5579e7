"""The `raft-engine` command line."""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line, without a traceback."""


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def collect_frames(inputs: list[str]) -> tuple[list[Path], bool]:
    """-> (frames in order, whether the output is a single pair). One folder: its images in natural
    name order. Files: in the order given."""
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        frames = sorted((p for p in paths[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if len(frames) < 2:
            raise UserError(f"folder {paths[0]} holds {len(frames)} image(s); at least 2 frames are needed")
        return frames, False
    for path in paths:
        if path.is_dir():
            raise UserError(f"{path} is a folder; give either one folder or a list of image files")
        if not path.is_file():
            raise UserError(f"no such image file: {path}")
    if len(paths) < 2:
        raise UserError("give two frames, a list of frames, or a folder of frames")
    return paths, len(paths) == 2


def _pixel(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (e.g. 120,48), got {text!r}") from None
    return x, y


def _build_parser() -> argparse.ArgumentParser:
    from raft_engine import __version__

    parser = argparse.ArgumentParser(prog="raft-engine", description="RAFT optical flow.")
    parser.add_argument("--version", action="version", version=f"raft-engine {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    flow = commands.add_parser(
        "flow",
        help="estimate the flow of a pair or of consecutive frames",
        description="Estimate optical flow. Two files: one flow image (-o is a file). A folder or a longer "
        "list of frames: one flow per consecutive pair (-o and --flo are folders, files named after the "
        "first frame of each pair).",
    )
    flow.add_argument("frames", nargs="+", metavar="FRAME", help="two images, a list of images, or one folder")
    source = flow.add_mutually_exclusive_group()
    source.add_argument(
        "--weights",
        metavar="W",
        help="checkpoint file (.pth/.pt/.safetensors, published or torchvision layout), preset name, or "
        "builtin (the default: the package's own RAFT-small, offline)",
    )
    source.add_argument("--onnx", metavar="FILE", help="run an exported graph with ONNX Runtime instead")
    flow.add_argument(
        "--providers",
        default=None,
        choices=("auto", "cuda", "tensorrt", "cpu"),
        help="with --onnx: ONNX Runtime execution provider (default: cuda if available)",
    )
    flow.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="flow image (PNG) for a pair, default flow.png; a folder for a sequence, default flow/",
    )
    flow.add_argument(
        "--flo", metavar="PATH", help="also write Middlebury .flo: a file for a pair, a folder for a sequence"
    )
    flow.add_argument(
        "--iters", type=int, default=None, metavar="N", help="refinement iterations (default 12; --onnx: the graph's)"
    )
    flow.add_argument("--device", default=None, metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    flow.add_argument(
        "--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="compute precision (default fp32)"
    )
    flow.add_argument("--padding", default="sintel", choices=("sintel", "kitti"), help="how to pad to a multiple of 8")
    flow.add_argument(
        "--backend",
        default=None,
        choices=("auto", "torch", "triton"),
        help="Triton kernels or the PyTorch reference (default: triton on CUDA, torch on the CPU)",
    )
    flow.add_argument(
        "--corr",
        default=None,
        choices=("auto", "volume", "ondemand"),
        help="dense correlation volume, or on-demand correlation in O(HW) memory "
        "(default: on-demand when the volume would exceed 2 GiB)",
    )
    flow.add_argument(
        "--warm-start", action="store_true", help="sequences: start each pair from the previous pair's 1/8 flow"
    )
    flow.add_argument(
        "--max-magnitude",
        type=float,
        default=None,
        metavar="M",
        help="flow length drawn at full saturation (default: each image's own maximum)",
    )
    flow.add_argument(
        "--variant",
        choices=("large", "small"),
        default=None,
        help="expected RAFT variant (default: inferred from the checkpoint)",
    )

    inspect = commands.add_parser(
        "inspect",
        help="pictures of RAFT's internals for a pair: response maps, correspondences, windows, features",
        description="Trace one pair and write PNG/GIF pictures and an index.html into the output folder.",
    )
    inspect.add_argument("image1", metavar="IMG1")
    inspect.add_argument("image2", metavar="IMG2")
    inspect.add_argument(
        "--weights",
        default="builtin",
        metavar="W",
        help="checkpoint file or preset name (default: the built-in RAFT-small)",
    )
    inspect.add_argument(
        "--pixel",
        action="append",
        type=_pixel,
        required=True,
        metavar="X,Y",
        help="a test pixel in image 1 (repeat for more)",
    )
    inspect.add_argument("--iters", type=int, default=12, metavar="N", help="refinement iterations (default 12)")
    inspect.add_argument("-o", "--output", default="inspect", metavar="DIR", help="output folder (default inspect/)")
    inspect.add_argument("--device", default=None, metavar="D")
    inspect.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    inspect.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    inspect.add_argument("--corr", default="auto", choices=("auto", "volume", "ondemand"))
    inspect.add_argument("--padding", default="sintel", choices=("sintel", "kitti"))

    export = commands.add_parser(
        "export",
        help="export a model to ONNX with a fixed iteration count and input size, verified with ONNX Runtime",
    )
    export.add_argument(
        "--weights",
        default="builtin",
        metavar="W",
        help="checkpoint file or preset name (default: the built-in RAFT-small)",
    )
    export.add_argument("--iters", type=int, default=12, metavar="N", help="unrolled iterations (default 12)")
    export.add_argument("--height", type=int, required=True, metavar="H", help="input height, a multiple of 8")
    export.add_argument("--width", type=int, required=True, metavar="W", help="input width, a multiple of 8")
    export.add_argument("-o", "--output", default="raft.onnx", metavar="FILE", help="default raft.onnx")
    export.add_argument("--batch", type=int, default=1, metavar="B", help="batch size of the graph (default 1)")
    export.add_argument("--dynamic-batch", action="store_true", help="any batch size at run time")
    export.add_argument("--fp16", action="store_true", help="encoders and update block in float16")
    export.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 18)")
    export.add_argument("--flow-low", action="store_true", help="also output the 1/8-resolution flow")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")

    demo = commands.add_parser(
        "demo",
        help="flow of a generated pair with the built-in model, beside the exact flow, and its error",
        description="Generate a held-out pair (never used in training), estimate its flow and write the two frames, "
        "the flow, the ground truth and all four side by side; print the end-point error.",
    )
    demo.add_argument("-o", "--output", default="demo", metavar="DIR", help="output folder (default demo/)")
    demo.add_argument(
        "--seed", type=int, default=3, help="scene seed, below 1000000 (default 3: a held-out pair of typical error)"
    )
    demo.add_argument("--height", type=int, default=384)
    demo.add_argument("--width", type=int, default=512)
    demo.add_argument("--iters", type=int, default=12)
    demo.add_argument("--weights", default="builtin", metavar="W", help="default: the built-in RAFT-small")
    demo.add_argument("--device", default=None, metavar="D")
    commands.add_parser("bench", help="benchmark configurations (options: raft-engine bench --help)", add_help=False)
    presets = commands.add_parser("presets", help="list the named weights and whether they are cached")
    presets.set_defaults(command="presets")
    return parser


def _run_flow(args: argparse.Namespace) -> None:
    import numpy as np
    from tqdm import tqdm

    from raft_engine.engine import FlowEngine
    from raft_engine.io import read_image, write_flo, write_image
    from raft_engine.viz import flow_to_color
    from raft_engine.weights import load_model

    frames, single_pair = collect_frames(args.frames)
    if args.iters is not None and args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if args.warm_start and single_pair:
        raise UserError("--warm-start needs a sequence of more than two frames")
    if args.max_magnitude is not None and not args.max_magnitude > 0:
        raise UserError(f"--max-magnitude must be positive, got {args.max_magnitude}")

    if single_pair:
        image_out = Path(args.output or "flow.png")
        flo_out = Path(args.flo) if args.flo else None
        targets = [(image_out, flo_out)]
    else:
        image_dir = Path(args.output or "flow")
        flo_dir = Path(args.flo) if args.flo else None
        for folder in filter(None, (image_dir, flo_dir)):
            if folder.exists() and not folder.is_dir():
                raise UserError(
                    f"{folder} exists and is not a folder; a sequence writes one file per pair into a folder"
                )
            folder.mkdir(parents=True, exist_ok=True)
        targets = [
            (image_dir / f"{frame.stem}.png", flo_dir / f"{frame.stem}.flo" if flo_dir else None)
            for frame in frames[:-1]
        ]

    if not single_pair:
        stems = [frame.stem for frame in frames[:-1]]
        clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
        if clashes:
            raise UserError(
                f"several frames are named {clashes[0]!r} (in other folders or formats); their flows "
                "would overwrite each other in the output folder"
            )
    if args.onnx:
        from raft_engine.export import OrtFlowSession

        given = [
            f"--{name}" for name in ("device", "dtype", "backend", "corr", "variant") if getattr(args, name) is not None
        ]
        if given:
            raise UserError(f"{', '.join(given)} do(es) not apply with --onnx: the exported graph fixes them")
        if args.warm_start:
            raise UserError("--warm-start is not available with --onnx: the exported graph has no flow_init input")
        session = OrtFlowSession(args.onnx, providers=args.providers or "auto", padding=args.padding)
        exported_iters = int(session.metadata["raft_engine.iterations"])
        if args.iters is not None and args.iters != exported_iters:
            raise UserError(f"{args.onnx} was exported with {exported_iters} iterations, not --iters {args.iters}")
        args.iters = exported_iters

        def estimate(image1, image2, flow_init):
            return session.estimate(image1, image2)

        variant = session.metadata["raft_engine.variant"]
        describe = f"ONNX Runtime {session.providers[0]}"
    else:
        if args.providers is not None:
            raise UserError("--providers applies with --onnx only")
        args.iters = args.iters or 12
        model = load_model(args.weights or "builtin", variant=args.variant)
        engine = FlowEngine(
            model,
            device=args.device,
            dtype=args.dtype,
            padding=args.padding,
            backend=args.backend or "auto",
            corr=args.corr or "auto",
        )

        def estimate(image1, image2, flow_init):
            return engine.estimate(image1, image2, iters=args.iters, flow_init=flow_init)

        variant = model.config.variant

        def describe_engine(height, width):
            return f"{engine.device}, {engine.backend}, corr {engine.corr_mode_for(1, height, width)}"

    start = time.perf_counter()
    previous = read_image(frames[0])
    flow_low = None
    pairs = tqdm(
        list(zip(frames[1:], targets, strict=True)),
        desc="flow",
        unit="pair",
        disable=single_pair or None,
        file=sys.stderr,
    )
    for frame, (image_out, flo_out) in pairs:
        current = read_image(frame)
        result = estimate(previous, current, flow_low if args.warm_start else None)
        flow = result.flow[0]
        write_image(image_out, flow_to_color(flow, args.max_magnitude))
        if flo_out is not None:
            write_flo(flo_out, flow)
        previous, flow_low = current, result.flow_low
    elapsed = time.perf_counter() - start
    height, width = np.asarray(previous).shape[:2]
    where = targets[0][0] if single_pair else targets[0][0].parent
    if not args.onnx:
        describe = describe_engine(height, width)
    print(
        f"wrote {len(targets)} flow field(s) of {height}x{width} to {where} (RAFT-{variant}, {args.iters} iterations, "
        f"{describe}, {elapsed:.2f} s)"
    )


def _run_inspect(args: argparse.Namespace) -> None:
    from raft_engine.engine import FlowEngine
    from raft_engine.io import read_image
    from raft_engine.report import write_report
    from raft_engine.weights import load_model

    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    image1, image2 = read_image(args.image1), read_image(args.image2)
    engine = FlowEngine(
        load_model(args.weights),
        device=args.device,
        dtype=args.dtype,
        padding=args.padding,
        backend=args.backend,
        corr=args.corr,
    )
    trace = engine.trace(image1, image2, iters=args.iters, pixels=args.pixel)
    files = write_report(trace, image1, args.output)
    print(f"wrote {len(files)} files to {args.output}; open {files[-1]}")


def _run_export(args: argparse.Namespace) -> None:
    from raft_engine.export import ExportError, export_onnx
    from raft_engine.export.onnx_export import DEFAULT_OPSET
    from raft_engine.weights import load_model

    try:
        report = export_onnx(
            load_model(args.weights),
            args.output,
            iters=args.iters,
            height=args.height,
            width=args.width,
            batch=args.batch,
            dynamic_batch=args.dynamic_batch,
            dtype="fp16" if args.fp16 else "fp32",
            opset=args.opset or DEFAULT_OPSET,
            flow_low=args.flow_low,
            verify=not args.no_verify,
        )
    except ExportError as error:
        raise UserError(str(error)) from error
    print(report)


def _run_demo(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    from raft_engine.engine import FlowEngine
    from raft_engine.io import write_flo, write_image
    from raft_engine.scenes import TRAINING_SEED_START, generate_pair
    from raft_engine.viz import flow_to_color
    from raft_engine.weights import load_model

    if not 0 <= args.seed < TRAINING_SEED_START:
        raise UserError(f"--seed must be in 0..{TRAINING_SEED_START - 1}: larger seeds are the training data's")
    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if min(args.height, args.width) < 121:
        raise UserError(
            f"--height and --width must be at least 121 (RAFT needs 128 after padding), got {args.height}x{args.width}"
        )
    engine = FlowEngine(load_model(args.weights), device=args.device)
    pair = generate_pair(args.seed, args.height, args.width)
    start = time.perf_counter()
    flow = engine(pair.image1, pair.image2, iters=args.iters)[0].permute(1, 2, 0).cpu().numpy()
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
        f"({engine.config.variant}, {args.iters} iterations, {engine.device}, {elapsed:.2f} s); wrote {out}/demo.png"
    )


def _run_presets() -> None:
    from raft_engine.weights import PRESETS, cache_dir

    folder = cache_dir()
    print(f"{'builtin':22s} RAFT-small in package  this project's own, trained on generated scenes (offline)")
    for preset in PRESETS.values():
        cached = "cached" if (folder / preset.filename).is_file() else "not cached"
        print(f"{preset.name:22s} RAFT-{preset.variant:5s} {cached:10s} {preset.description}")
    print(f"cache: {folder} (RAFT_ENGINE_CACHE)")


# Optional packages some commands need, and how to get them.
_OPTIONAL = {
    "onnx": "pip install onnx onnxscript (the project's [onnx] extra)",
    "onnxscript": "pip install onnx onnxscript (the project's [onnx] extra)",
    "onnxruntime": "pip install onnxruntime-gpu (or the CPU-only onnxruntime)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark has its own options: python bench.py --help
        from raft_engine.benchmark import main as bench

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
        if args.command == "flow":
            _run_flow(args)
        elif args.command == "demo":
            _run_demo(args)
        elif args.command == "export":
            _run_export(args)
        elif args.command == "inspect":
            _run_inspect(args)
        elif args.command == "presets":
            _run_presets()
    except (UserError, ValueError, OSError) as error:
        print(f"raft-engine: error: {error}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:
        if error.name not in _OPTIONAL:
            raise
        print(f"raft-engine: error: {args.command} needs {error.name}: {_OPTIONAL[error.name]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raft-engine: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
