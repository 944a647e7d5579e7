"""The test-set submissions of the Sintel and KITTI benchmarks, written as the published
create_sintel_submission (with its warm start) and create_kitti_submission do."""

from __future__ import annotations

import os
from pathlib import Path

from raft_engine.errors import InputError
from raft_engine.evaluation.datasets import load_test_splits
from raft_engine.evaluation.runner import PairRunner, check_options, progress_bar, read_pair
from raft_engine.io import write_flo, write_kitti_flow
from raft_engine.model.warm_start import forward_interpolate


def write_submission(
    engine: object,
    dataset: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    iters: int | None = None,
    padding: str | None = None,
    warm_start: bool = True,
    limit: int | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write the test-set flow that a benchmark server scores.

    "sintel": as the published create_sintel_submission: test/{clean,final}, 32 iterations, each pair
    of a scene started from the previous pair's 1/8 flow carried forward (`forward_interpolate`), each
    scene started cold; output/{clean,final}/SCENE/frameNNNN.flo, NNNN from 0001 for the first pair
    (the layout Sintel's bundler reads).

    "kitti-2015", "kitti-2012": as the published create_kitti_submission: testing/, 24 iterations,
    "kitti" padding; output/NNNNNN_10.png, 16-bit KITTI PNG, every pixel valid.

    Args:
        engine: a `FlowEstimator`, as `evaluate` takes.
        dataset: "sintel", "kitti-2015" or "kitti-2012".
        root: the dataset's folder, as distributed.
        output: the folder the files are written under.
        iters: None for the published protocol's.
        padding: None for the published protocol's.
        warm_start: Sintel's warm start, as above; False: every pair cold.
        limit: the first N pairs of each pass only (a check, not a submission).
        progress: show a progress bar (on a terminal only).

    Returns:
        The files written.

    Raises:
        InputError: a dataset without a submission or an option refused, a warm start with an engine that
            takes no flow_init (an exported graph) or returns no flow_low, or KITTI flow the PNG cannot hold.
    """
    check_options(iters, padding, limit)
    runner = PairRunner(engine)
    out = Path(output)
    written = []
    for split in load_test_splits(dataset, root):
        sintel = split.dataset == "sintel"
        if sintel and warm_start and not runner.settings.takes_flow_init:
            raise InputError(
                "the Sintel submission's warm start needs flow_init, which an exported graph does not take: "
                "use a checkpoint, or no warm start (--no-warm-start)"
            )
        run_iters = runner.iterations(iters, split.protocol.iters)
        run_padding = split.protocol.padding if padding is None else padding
        samples = split.samples[:limit] if limit else split.samples
        flow_init, previous_scene = None, None
        for sample in progress_bar(samples, f"{split.dataset} {split.split}", progress):
            if sample.scene != previous_scene:
                flow_init = None  # each scene starts cold
            flow, flow_low = runner.run(sample, read_pair(sample), run_iters, run_padding, flow_init)
            if sintel:
                path = out / split.split / sample.scene / f"frame{sample.frame + 1:04d}.flo"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_flo(path, flow)
                if warm_start:
                    if flow_low is None:
                        raise InputError("the engine returned no flow_low: warm start is not available")
                    flow_init = forward_interpolate(flow_low)
            else:
                path = out / sample.image1.name
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    write_kitti_flow(path, flow)
                except ValueError as error:
                    raise InputError(f"{path}: {error}") from error
            written.append(path)
            previous_scene = sample.scene
    return written
