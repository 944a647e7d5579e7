"""`raft-engine evaluate`: metrics on a standard dataset as distributed, with the published protocol, or
the benchmark servers' test-set submission."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from raft_engine.cli import options
from raft_engine.errors import UsageError


def register(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        parents=[
            options.model_source(),
            options.options(
                "iters",
                *options.ENGINE_OPTIONS,
                iters="refinement iterations (default: the dataset's published protocol, Sintel 32, KITTI 24; "
                "required for --dataset list, which has none)",
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
    evaluate.set_defaults(run=run)


def evaluate_engine(args: argparse.Namespace) -> tuple[Any, str]:
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

    settings = options.engine_options(args, "device", "dtype", "backend", "corr", compile=args.compile)
    return FlowEngine(load_model(options.weights(args)), settings), options.weights(args)


def _check_args(args: argparse.Namespace) -> None:
    from raft_engine.evaluation.datasets import dataset_name

    dataset = dataset_name(args.dataset)  # an unknown name fails before a model loads
    options.check_iters(args)
    if dataset == "list" and args.iters is None and not args.onnx:
        raise UsageError("--dataset list has no published protocol to take the iterations from: give --iters")
    options.positive("limit", args.limit)
    if args.submit and (args.json or args.split):
        raise UsageError("--submit writes the test set's flow: --json and --split apply to evaluation only")
    if args.no_warm_start and not args.submit:
        raise UsageError("--no-warm-start applies with --submit only")
    from raft_engine.io.files import check_output_file, check_output_folder

    if args.json:
        check_output_file(args.json, [".json"], what="--json")
    if args.submit:
        check_output_folder(args.submit, what="--submit")


def run(args: argparse.Namespace) -> None:
    from raft_engine import __version__
    from raft_engine.evaluation import evaluate, format_table, write_submission

    _check_args(args)
    engine, weights = evaluate_engine(args)
    settings = {"iters": args.iters, "padding": args.padding, "limit": args.limit, "progress": True}
    if args.submit:
        files = write_submission(
            engine, args.dataset, args.root, args.submit, warm_start=not args.no_warm_start, **settings
        )
        print(f"wrote {len(files)} flow files to {args.submit}")
        return
    records = evaluate(engine, args.dataset, args.root, split=args.split, weights=weights, **settings)
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
