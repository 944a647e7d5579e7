"""`raft-engine demo`: the built-in model on a held-out generated pair, beside the exact flow."""

from __future__ import annotations

import argparse
from typing import Any

from raft_engine.cli import options
from raft_engine.errors import UsageError


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[options.options("weights", "iters", "device")],
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
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from raft_engine.scenes import TRAINING_SEED_START
    from raft_engine.tools.demo import run_demo, smallest_side
    from raft_engine.weights import load_model

    if not 0 <= args.seed < TRAINING_SEED_START:
        raise UsageError(f"--seed must be in 0..{TRAINING_SEED_START - 1}: larger seeds are the training data's")
    from raft_engine.io.files import check_output_folder

    options.check_iters(args)
    check_output_folder(args.output, what="-o")
    model = load_model(options.weights(args))
    smallest = smallest_side(model.config.min_image_size)
    if min(args.height, args.width) < smallest:
        raise UsageError(
            f"--height and --width must be at least {smallest} (RAFT-{model.config.variant} needs "
            f"{model.config.min_image_size} after padding to a multiple of 8), got {args.height}x{args.width}"
        )
    engine = options.make_engine(args, model)
    iters = options.iters(args)
    result = run_demo(engine, args.output, args.seed, args.height, args.width, iters)
    print(
        f"seed {result.seed}, {result.height}x{result.width}, displacements up to {result.largest:.0f} px: "
        f"EPE {result.epe:.2f} px, {100 * result.within_1px:.0f}% of pixels within 1 px "
        f"({engine.config.variant}, {iters} iterations, {engine.device}, {result.seconds:.2f} s); wrote {result.sheet}"
    )
