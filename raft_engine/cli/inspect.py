"""`raft-engine inspect`: pictures of RAFT's internals for one pair."""

from __future__ import annotations

import argparse
from typing import Any

from raft_engine.cli import options
from raft_engine.cli.progress import Steps


def register(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        parents=[options.options("weights", "iters", *options.ENGINE_OPTIONS)],
        help="pictures of RAFT's internals for a pair: response maps, correspondences, windows, features",
        description="Trace one pair and write PNG/GIF pictures and an index.html into the output folder.",
    )
    inspect.add_argument("image1", metavar="IMG1")
    inspect.add_argument("image2", metavar="IMG2")
    inspect.add_argument(
        "--pixel",
        action="append",
        type=options.pixel,
        required=True,
        metavar="X,Y",
        help="a test pixel in image 1 (repeat for more)",
    )
    inspect.add_argument("-o", "--output", default="inspect", metavar="DIR", help="output folder (default inspect/)")
    inspect.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from raft_engine.io import read_image
    from raft_engine.io.files import check_output_folder
    from raft_engine.tools.inspection_html import write_report
    from raft_engine.weights import load_model

    options.check_iters(args)
    check_output_folder(args.output, what="-o")
    image1, image2 = read_image(args.image1), read_image(args.image2)
    with Steps("inspect") as step:
        step("load the model")
        engine = options.make_engine(args, load_model(options.weights(args)))
        step("trace")
        trace = engine.trace(image1, image2, iters=options.iters(args), pixels=args.pixel)
        step("draw")
        files = write_report(trace, image1, args.output)
    print(f"wrote {len(files)} files to {args.output}; open {files[-1]}")
