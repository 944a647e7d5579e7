"""`raft-engine train` (and `python -m raft_engine.train`): train RAFT on generated scenes, resumable,
in bounded calls, and package the finished run as the built-in model (see `raft_engine.training`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

from raft_engine.cli import options
from raft_engine.errors import InputError, UsageError

# Option help of the training configuration's fields (raft_engine.training.loop.TrainConfig).
_FIELD_HELP = {
    "variant": "RAFT variant to train: small or large",
    "steps": "optimiser steps in all (a resumed run continues to this count)",
    "batch_size": "pairs per step",
    "height": "training image height, a multiple of 8",
    "width": "training image width, a multiple of 8",
    "iters": "refinement iterations per pair",
    "lr": "peak learning rate of the one-cycle schedule",
    "weight_decay": "AdamW weight decay",
    "epsilon": "AdamW epsilon",
    "clip": "gradient norm clip",
    "gamma": "sequence loss weight decay over iterations",
    "max_flow": "pixels with longer ground truth are left out of the loss",
    "max_displacement": "largest object translation as a fraction of the width",
    "seed": "run seed: which training scenes are drawn",
    "checkpoint_every": "steps between checkpoints",
    "validate_every": "steps between validations on held-out pairs",
    "validation_pairs": "held-out pairs per validation",
    "threads": "torch CPU threads (0: PyTorch's default)",
    "scenes": "scene generator: v1 or v2",
    "without": "v2 ingredients or groups to leave out, comma-separated",
    "init": "start from these weights (builtin or a path) instead of a random initialisation",
}


def register(commands: Any) -> None:
    from raft_engine.training.loop import TrainConfig

    train = commands.add_parser(
        "train",
        help="train RAFT on generated scenes (resumable; --time-limit for bounded calls)",
        description="Train RAFT on generated scenes, as published: sequence loss, AdamW with a one-cycle schedule, "
        "gradient clipping. Resumable: the same command continues a run from RUN_DIR/checkpoint.pth.",
    )
    train.add_argument(
        "run_dir", metavar="RUN_DIR", help="folder for the checkpoint and the log; an existing run resumes"
    )
    options.add_shared(train, ("device",), {})
    train.add_argument(
        "--workers", type=int, default=0, help="processes generating batches ahead of the model (default 0: none)"
    )
    train.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="checkpoint and stop after the step that reaches this many seconds; the same command continues",
    )
    train.add_argument(
        "--package", metavar="DIR", help="when the run is complete, write DIR/builtin-VARIANT.{pth,json}"
    )
    train.add_argument(
        "--real-images", metavar="JSON", help="with --package: benchmarks/real_flow.py's --json output, recorded"
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        train.add_argument(
            flag,
            type=type(field.default),
            default=field.default,
            help=f"{_FIELD_HELP[field.name]} (default {field.default!r})",
        )
    train.set_defaults(run=run)


def _config(args: argparse.Namespace) -> Any:
    from raft_engine.training.loop import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**values)
    except InputError as error:
        raise UsageError(str(error)) from error
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UsageError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    if args.real_images and not args.package:
        raise UsageError("--real-images is recorded by --package; give both")
    return config


def run(args: argparse.Namespace) -> None:
    import torch

    from raft_engine.io.files import check_folder_can_be_made, check_output_folder
    from raft_engine.training.loop import package, run_finished, train

    config = _config(args)
    check_output_folder(args.run_dir, what="RUN_DIR")
    if args.package:
        check_folder_can_be_made(args.package, what="--package")
    real_images = json.loads(Path(args.real_images).read_text()) if args.real_images else None
    train(config, args.run_dir, args.device, workers=args.workers, time_limit=args.time_limit)
    if not run_finished(args.run_dir):
        step = torch.load(Path(args.run_dir) / "checkpoint.pth", map_location="cpu", weights_only=True)["step"]
        print(f"stopped at step {step} of {config.steps} (time limit); run the same command again to continue")
        return
    if args.package:
        command = "raft-engine train " + shlex.join(args.argv)
        record = package(args.run_dir, args.package, notes={"command": command}, real_images=real_images)
        print(f"wrote {args.package}/builtin-{config.variant}.pth; held-out EPE {record['held_out']['epe']} px")
