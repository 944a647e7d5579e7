"""Training RAFT on generated scenes (`raft_engine.scenes`), as published: sequence loss with
gamma 0.8, AdamW with a one-cycle learning-rate schedule, gradient clipping at 1.0.

Resumable: the run's folder holds `checkpoint.pth` (model, optimizer, schedule, step) and
`log.jsonl`; the training pairs are a function of the step, so a resumed run sees the same data.
bf16 autocast on CUDA; float32 on the CPU.

    raft-engine train RUN_DIR --steps 10000 --batch-size 6 --height 192 --width 256

`--workers N` generates the batches in N processes ahead of the model (the generator runs on the
CPU: 0.38 s a pair at 288x384 for v2 scenes without textures and degradations, so a GPU step waits
on data without them); the batches are the same
with any N. `--time-limit SECONDS` checkpoints and stops after the step that reaches the limit, so a
long run proceeds in bounded calls: run the same command again to continue.

Scenes: `--scenes v1` (the generator the built-in model was first trained on) or `--scenes v2` (closer
to natural footage, see `raft_engine.scenes.SceneStyle`), `--without` a comma-separated list of v2
ingredients or groups to leave out (an ablation). `--init builtin` (or a weights path) starts from
those weights instead of a random initialisation (fine-tuning). Validation during training is always
on v1's held-out seeds at the training size, so runs with different scenes compare.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raft_engine.errors import InputError
from raft_engine.io.files import write_atomically
from raft_engine.model.config import RAFTConfig
from raft_engine.model.raft import RAFT, Iteration, normalize_images
from raft_engine.runtime.devices import device_name
from raft_engine.scenes import TRAINING_SEED_START, SceneStyle, scene_tensors

SEEDS_PER_RUN = 10**9  # training seeds of run `seed`: TRAINING_SEED_START + seed * SEEDS_PER_RUN + k


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "small"
    steps: int = 10_000
    batch_size: int = 6
    height: int = 192
    width: int = 256
    iters: int = 10
    lr: float = 4e-4
    weight_decay: float = 1e-4
    epsilon: float = 1e-8
    clip: float = 1.0
    gamma: float = 0.8
    max_flow: float = 400.0
    # Largest object translation as a fraction of the width (0.2: 51 px at 256 wide, 102 px at 512).
    max_displacement: float = 0.2
    seed: int = 0
    checkpoint_every: int = 50
    validate_every: int = 500
    validation_pairs: int = 16
    threads: int = 0  # torch CPU threads; 0 leaves PyTorch's default
    scenes: str = "v1"  # the scene generator's style: "v1" or "v2" (raft_engine.scenes.SceneStyle)
    without: str = ""  # v2 ingredients or groups left out, comma-separated (e.g. "blur,jpeg" or "textures")
    init: str = ""  # start from these weights ("builtin" or a path) instead of a random initialisation

    def __post_init__(self) -> None:
        self.style()  # refuses an unknown style or ingredient now, not at the first batch
        if self.height % 8 or self.width % 8:
            raise InputError(f"training size must be a multiple of 8, got {self.height}x{self.width}")
        if self.steps < 1 or self.batch_size < 1 or self.iters < 1:
            raise InputError("steps, batch_size and iters must be >= 1")
        minimum = RAFTConfig.from_variant(self.variant).min_image_size
        if min(self.height, self.width) < minimum:  # smaller: the coarsest correlation level has 1 cell, NaN loss
            raise InputError(f"training size must be at least {minimum}x{minimum}, got {self.height}x{self.width}")

    def style(self) -> SceneStyle:
        return SceneStyle.parse(self.scenes, self.without)


def sequence_loss(
    predictions: list[torch.Tensor], flow: torch.Tensor, gamma: float, max_flow: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The published loss: sum_i gamma^(n-1-i) * mean |prediction_i - flow| over valid pixels.

    Pixels with ground truth longer than max_flow are excluded, as published.
    """
    valid = (flow.norm(dim=1, keepdim=True) < max_flow).float()
    count = len(predictions)
    loss = flow.new_zeros(())
    for i, prediction in enumerate(predictions):
        loss = loss + gamma ** (count - 1 - i) * (valid * (prediction - flow).abs()).mean()
    epe = (predictions[-1].detach() - flow).norm(dim=1)[valid[:, 0] > 0]
    metrics = {"loss": float(loss.detach()), "epe": float(epe.mean()), "1px": float((epe < 1).float().mean())}
    return loss, metrics


def training_predictions(
    model: RAFT, image1: torch.Tensor, image2: torch.Tensor, iters: int, autocast=None
) -> list[torch.Tensor]:
    """Upsampled flow after every iteration, from the model's own forward (`RAFT.forward_features`, whose
    loop detaches the coordinates between iterations, as published).

    autocast (a torch.autocast context, for mixed precision) covers the encoders and the update block
    only: the correlation volume is built and looked up in float32, as in the published code.
    """
    predictions: list[torch.Tensor] = []

    def upsample_each(iteration: Iteration) -> None:
        with autocast or contextlib.nullcontext():
            up_mask = model.update_block.up_mask(iteration.net)
        predictions.append(model.upsampler(iteration.coords1 - coords0, up_mask))

    with autocast or contextlib.nullcontext():
        fmap1, fmap2 = model.features(normalize_images(image1), normalize_images(image2))
    coords0, _ = model.initial_coords(fmap1)
    model.forward_features(image1, fmap1, fmap2, iters, observe=upsample_each, autocast=autocast)
    return predictions


def scene_batch(
    seeds: list[int],
    height: int,
    width: int,
    max_displacement: float,
    device: torch.device,
    style: SceneStyle | None = None,
):
    """-> image1, image2 (B, 3, H, W) float 0..255 and flow (B, 2, H, W), on `device`.
    max_displacement: as a fraction of the width. style: None is v1."""
    return tuple(t.to(device) for t in scene_tensors(seeds, height, width, max_displacement * width, style=style))


@torch.no_grad()
def validation_epe(
    model: RAFT, seeds, height: int, width: int, iters: int, device, max_displacement: float = 0.15
) -> float:
    """Mean end-point error (px) over the pairs of `seeds`, one at a time."""
    was_training = model.training
    model.eval()
    errors = []
    for seed in seeds:
        image1, image2, flow = scene_batch([seed], height, width, max_displacement, device)
        prediction = model(image1, image2, iters=iters).flow
        errors.append(float((prediction - flow).norm(dim=1).mean()))
    model.train(was_training)
    return float(np.mean(errors))


class TrainingBatches(torch.utils.data.Dataset):
    """Batch `step` (0-based) of a run, on the CPU: a function of the step alone, so any process can
    make any batch and a resumed or parallel run sees the same data. Images travel as uint8 (they are
    whole numbers 0..255): 2.3x less to pass between processes and to copy to the device than float32."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.style = config.style()

    def __len__(self) -> int:
        return self.config.steps

    def seeds(self, step: int) -> list[int]:
        first = TRAINING_SEED_START + self.config.seed * SEEDS_PER_RUN + step * self.config.batch_size
        return list(range(first, first + self.config.batch_size))

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.config
        image1, image2, flow = scene_batch(
            self.seeds(step), config.height, config.width, config.max_displacement, torch.device("cpu"), self.style
        )
        return image1.to(torch.uint8), image2.to(torch.uint8), flow


def _batches(dataset: TrainingBatches, start: int, workers: int, pin_memory: bool):
    """Batches start, start + 1, ... in order; made in `workers` processes when > 0 (each worker
    runs one torch thread, as the DataLoader sets). Closing the generator lets the workers go."""
    steps = range(start, len(dataset))
    if workers == 0 or not steps:
        yield from (dataset[step] for step in steps)
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # an item is already a whole batch
        sampler=steps,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2,
    )
    yield from loader


def _save(obj, path: Path) -> None:
    write_atomically(path, lambda partial: torch.save(obj, partial))


@contextlib.contextmanager
def _cuda_training_flags(where: torch.device):
    """On CUDA, for the length of the training: TF32 matmuls for the float32 correlation volume
    (autocast covers the convolutions only) and cuDNN's per-shape algorithm search, since every batch
    has one shape. The process's settings are restored afterwards."""
    if where.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    device: str | torch.device | None = None,
    workers: int = 0,
    time_limit: float | None = None,
) -> RAFT:
    """Train (or resume) the run in `run_dir` to config.steps, or until `time_limit` seconds of this
    call have passed: then the step that reached the limit is checkpointed and the call returns the
    model without writing summary.json (`run_finished` tells which). `workers`: processes making
    batches ahead of the model (0: in this process); the batches are the same for any count, and so
    is the result on the CPU (on CUDA, cuDNN's algorithm search is not bit-reproducible anyway).

    Each call is recorded in the checkpoint (device, torch version, steps, seconds), so the summary
    of a run made in several calls, on several machines, names them all."""
    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    if time_limit is not None and not time_limit > 0:
        raise InputError(f"time_limit must be a positive number of seconds, got {time_limit}")
    called = time.monotonic()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint_path, summary_path = run_dir / "checkpoint.pth", run_dir / "summary.json"

    torch.manual_seed(config.seed)
    model = RAFT(RAFTConfig.from_variant(config.variant))
    if config.init:
        from raft_engine.weights import load_model

        model.load_state_dict(load_model(config.init, variant=config.variant).state_dict())
    model = model.to(where).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, eps=config.epsilon
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        config.lr,
        total_steps=config.steps + 100,
        pct_start=0.05,
        cycle_momentum=False,
        anneal_strategy="linear",
    )
    step, elapsed, calls = 0, 0.0, []
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=where, weights_only=True)
        if state["config"] != dataclasses.asdict(config):
            raise InputError(f"{checkpoint_path} was written with another configuration: {state['config']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, elapsed, calls = state["step"], state["elapsed"], state.get("calls", [])
    if step == config.steps and summary_path.is_file():
        return model.eval()  # finished earlier: its summary names the machines that trained it
    summary_path.unlink(missing_ok=True)  # left by an earlier run in this folder whose checkpoint is gone

    log_path = run_dir / "log.jsonl"
    if log_path.is_file():  # steps after the last checkpoint are redone: drop their lines
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in kept))
    call: dict[str, Any] = {
        "device": device_name(where),
        "torch": str(torch.__version__),
        "steps": [step, step],
        "seconds": 0.0,
    }
    calls = [*calls, call]
    batches = _batches(TrainingBatches(config), step, workers, pin_memory=where.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=where.type == "cuda")

    def save() -> None:
        call["steps"][1], call["seconds"] = step, round(time.monotonic() - called, 1)
        _save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "config": dataclasses.asdict(config),
                "calls": calls,
            },
            checkpoint_path,
        )

    with _cuda_training_flags(where), open(log_path, "a") as log, contextlib.closing(batches):
        while step < config.steps:
            start = time.perf_counter()
            image1, image2, flow = (t.to(where, non_blocking=True) for t in next(batches))
            waited = time.perf_counter() - start  # > 0 with workers: the model outpaces the generator
            image1, image2 = image1.float(), image2.float()
            predictions = training_predictions(model, image1, image2, config.iters, autocast)
            loss, metrics = sequence_loss([p.float() for p in predictions], flow, config.gamma, config.max_flow)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip))
            optimizer.step()
            schedule.step()
            step += 1
            took = time.perf_counter() - start
            elapsed += took
            record = {
                "step": step,
                **metrics,
                "grad_norm": grad_norm,
                "lr": schedule.get_last_lr()[0],
                "elapsed_s": round(elapsed, 1),
                "step_s": round(took, 4),
                "data_s": round(waited, 4),
            }
            if step % config.validate_every == 0 or step == config.steps:
                record["val_epe"] = validation_epe(
                    model, range(config.validation_pairs), config.height, config.width, 12, where
                )
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(f"training diverged at step {step}: {record}")
            log.write(json.dumps(record) + "\n")
            log.flush()
            out_of_time = time_limit is not None and time.monotonic() - called >= time_limit
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                save()
            if out_of_time and step < config.steps:
                return model.eval()
    _write_summary(summary_path, config, step, elapsed, calls)
    return model.eval()


def _write_summary(path: Path, config: TrainConfig, step: int, elapsed: float, calls: list[dict]) -> None:
    def unique(key: str) -> str:  # the machines (or torch versions) of the calls, in order, once each
        return ", ".join(dict.fromkeys(c[key] for c in calls))

    summary = {
        "config": dataclasses.asdict(config),
        "steps": step,
        "training_seconds": round(elapsed, 1),
        "device": unique("device"),
        "torch": unique("torch"),
        "calls": calls,
        "training_seeds": f"{TRAINING_SEED_START + config.seed * SEEDS_PER_RUN} + k, k < {step * config.batch_size}",
        "scene_style": dataclasses.asdict(config.style()),
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")


def run_finished(run_dir: str | os.PathLike) -> bool:
    """Whether the run in `run_dir` has reached its last step (its summary.json is written then)."""
    return (Path(run_dir) / "summary.json").is_file()


# The held-out set the built-in model is judged on: seeds the training never draws, at 384x512 where
# objects translate by up to 77 px (generate_pair's default; with rotation and scale some points
# move further), 12 iterations.
HELD_OUT: dict[str, Any] = {"seeds": list(range(8)), "height": 384, "width": 512, "iters": 12}


def held_out_epe(model: RAFT, device="cpu", seeds=None) -> float:
    """Mean end-point error (px) of `model` on the held-out generated pairs."""
    seeds = HELD_OUT["seeds"] if seeds is None else seeds
    return validation_epe(model.to(device), seeds, HELD_OUT["height"], HELD_OUT["width"], HELD_OUT["iters"], device)


def package(
    run_dir: str | os.PathLike,
    destination: str | os.PathLike,
    dtype: torch.dtype = torch.float16,
    notes=None,
    real_images: dict | None = None,
) -> dict:
    """Write a finished run's weights (as `dtype`) and its record (with `notes`) to
    destination/builtin-VARIANT.{pth,json} (VARIANT: the run's, small or large). real_images: results
    of benchmarks/real_flow.py (its JSON) for these weights, recorded under "real_images" when given."""
    run_dir, destination = Path(run_dir), Path(destination)
    state = torch.load(run_dir / "checkpoint.pth", map_location="cpu", weights_only=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    if state["step"] != state["config"]["steps"]:
        raise InputError(f"{run_dir} stopped at step {state['step']} of {state['config']['steps']}; finish it first")
    variant = state["config"]["variant"]
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state["model"].items()}
    destination.mkdir(parents=True, exist_ok=True)
    torch.save(weights, destination / f"builtin-{variant}.pth")
    model = RAFT(RAFTConfig.from_variant(variant))
    model.load_state_dict(weights)  # as the package will load them: stored dtype, into float32
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    record = {
        **summary,
        "stored_dtype": str(dtype).removeprefix("torch."),
        "held_out": {**HELD_OUT, "epe": round(held_out_epe(model.eval()), 4)},
        "validation_epe": [{"step": r["step"], "epe": round(r["val_epe"], 4)} for r in log if "val_epe" in r],
        **({"real_images": real_images} if real_images is not None else {}),
        **(notes or {}),
    }
    (destination / f"builtin-{variant}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
