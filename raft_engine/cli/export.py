"""`raft-engine export`: an ONNX graph with a fixed iteration count, verified with ONNX Runtime, or a
Triton Inference Server model repository."""

from __future__ import annotations

import argparse
from typing import Any

from raft_engine.cli import options
from raft_engine.cli.progress import Steps
from raft_engine.errors import UsageError

_TRITON_ONLY = ("model_name", "max_batch_size", "instances", "tensorrt_fp16", "force")


def register(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        parents=[
            options.options(
                "weights",
                "iters",
                "corr",
                iters=f"unrolled iterations (default {options.DEFAULT_ITERS})",
                corr="dense correlation volume, or on-demand correlation in standard ONNX operators, O(HW) memory "
                "(default: on-demand when the volume would exceed 2 GiB, or the size is dynamic)",
            )
        ],
        help="export a model to ONNX with a fixed iteration count, verified with ONNX Runtime; optionally as a "
        "Triton Inference Server model repository",
        description="Export a model to ONNX with a fixed iteration count and verify the graph with ONNX Runtime "
        "against PyTorch; or write it as a Triton Inference Server model repository.",
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
    export.add_argument(
        "--bidirectional",
        action="store_true",
        help="one graph for both directions: outputs flow, flow_backward, occlusion, occlusion_backward (the "
        "forward-backward check's masks)",
    )
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
    export.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.triton_repository is None:
        given = [f"--{name.replace('_', '-')}" for name in _TRITON_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise UsageError(f"{', '.join(given)} need(s) --triton-repository DIR")
        return
    given = [flag for flag, value in (("-o", args.output), ("--batch", args.batch)) if value is not None]
    given += ["--dynamic-batch"] if args.dynamic_batch else []
    if given:
        raise UsageError(
            f"{', '.join(given)} do(es) not apply with --triton-repository: the model goes to "
            "DIR/NAME/1/model.onnx and --max-batch-size sets the batch"
        )


def _check_size(args: argparse.Namespace) -> None:
    """A fixed-size graph needs its size: named by the command's options, before any work."""
    if args.dynamic_size:
        if (args.height is None) != (args.width is None):
            raise UsageError("give both --height and --width (the size to trace and verify at), or neither (256x320)")
        return
    if args.height is None or args.width is None:
        raise UsageError(
            "give --height and --width (multiples of 8): an exported graph has a fixed input size; "
            "or --dynamic-size for one graph that takes every size"
        )


def run(args: argparse.Namespace) -> None:
    from raft_engine.export import export_onnx, export_triton
    from raft_engine.export.onnx_export import DEFAULT_OPSET
    from raft_engine.weights import load_model

    _check_args(args)
    _check_size(args)
    if args.triton_repository is None:
        from raft_engine.io.files import check_output_file

        check_output_file(args.output or "raft.onnx", [".onnx"], what="-o")
    else:
        # The repository is checked before the model is loaded and traced: a refusal costs nothing.
        from raft_engine.export.triton_server import check_repository

        check_repository(args.triton_repository, args.force)
    with Steps("export") as step:
        export_options = dict(
            iters=options.iters(args),
            height=args.height,
            width=args.width,
            dtype="fp16" if args.fp16 else "fp32",
            opset=args.opset or DEFAULT_OPSET,
            flow_low=args.flow_low,
            verify=not args.no_verify,
            corr=args.corr or "auto",
            dynamic_size=args.dynamic_size,
            bidirectional=args.bidirectional,
            progress=step,
        )
        step("load the model")
        model = load_model(options.weights(args))
        if args.triton_repository is not None:
            result: object = export_triton(
                model,
                args.triton_repository,
                model_name=args.model_name or "raft",
                max_batch_size=8 if args.max_batch_size is None else args.max_batch_size,
                instances=1 if args.instances is None else args.instances,
                tensorrt_fp16=args.tensorrt_fp16,
                force=args.force,
                **export_options,
            )
        else:
            result = export_onnx(
                model,
                args.output or "raft.onnx",
                batch=1 if args.batch is None else args.batch,
                dynamic_batch=args.dynamic_batch,
                **export_options,
            )
    print(result)
