"""How close raft-engine's float32 PyTorch paths are to the published RAFT code on a real pair, and the
peak memory of each, measured in a process of its own.

The published code is not part of this project: give the `core` folder of a checkout of
princeton-vl/RAFT (`--raft-core`). Both networks get the same weights: the published RAFT built with
`torch.manual_seed(SEED)` (its default initialisation), its state dict loaded into raft-engine with
`load_model`. The frames are padded as the published evaluation does ("sintel": replicate, split
evenly) and the flows compared at the input size: relative L2 error and the largest difference (px).

    python benchmarks/published_parity.py --raft-core ~/RAFT/core --frames f16.png f17.png \\
        --json benchmarks/results/DATE-published-parity.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

SEED = 7
PATHS = ("torch-volume", "torch-ondemand")


def _published_model(core: Path, variant: str):
    """The published RAFT of `variant`, imported from its `core` folder (its modules import each other
    by top-level name, so the folder goes first on the module path of this process only)."""
    import torch

    sys.path.insert(0, str(core))
    published = importlib.import_module("raft")
    args = argparse.Namespace(small=variant == "small", mixed_precision=False, alternate_corr=False, dropout=0.0)
    torch.manual_seed(SEED)
    return published.RAFT(args).eval()


def _run_one(core: Path, frames: list[Path], variant: str, path: str, iters: int) -> dict:
    """In this process: the published flow and raft-engine's on `path` -> errors and this process's peak RSS."""
    import numpy as np
    import torch

    from raft_engine import FlowEngine, load_model
    from raft_engine.io import read_image
    from raft_engine.runtime.inputs import Padder

    torch.set_num_threads(2)
    image1, image2 = (read_image(frame) for frame in frames)
    height, width = image1.shape[:2]
    padder = Padder(height, width, "sintel")
    batch = [padder.pad(torch.from_numpy(image).permute(2, 0, 1)[None].float()) for image in (image1, image2)]
    with torch.inference_mode():
        if path == "published":
            model = _published_model(core, variant)
            _, flow = model(batch[0], batch[1], iters=iters, test_mode=True)
            flow = padder.unpad(flow)
        else:
            state = {f"module.{k}": v for k, v in _published_model(core, variant).state_dict().items()}
            engine = FlowEngine(load_model(state), device="cpu", backend="torch", corr=path.removeprefix("torch-"))
            flow = engine.estimate(image1, image2, iters=iters).flow
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"flow": flow[0].numpy().astype(np.float64).tolist(), "peak_rss_mb": round(peak_mb, 1)}


def _in_process(core: Path, frames: list[Path], variant: str, path: str, iters: int) -> dict:
    command = [sys.executable, __file__, "--raft-core", str(core), "--frames", *map(str, frames), "--iters",
               str(iters), "--one", variant, path]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raft-core", type=Path, required=True, help="the core folder of princeton-vl/RAFT")
    parser.add_argument("--frames", type=Path, nargs=2, required=True, metavar="FRAME")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--raft-revision", default=None, help="the published checkout's commit, for the record")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_run_one(args.raft_core, args.frames, *args.one, args.iters)))
        return
    import numpy as np
    import torch

    from raft_engine import __version__

    records = []
    for variant in ("small", "large"):
        published = _in_process(args.raft_core, args.frames, variant, "published", args.iters)
        expected = np.asarray(published["flow"])
        for path in PATHS:
            ours = _in_process(args.raft_core, args.frames, variant, path, args.iters)
            actual = np.asarray(ours["flow"])
            records.append(
                {
                    "variant": variant,
                    "path": path,
                    "iters": args.iters,
                    "size": list(expected.shape[1:]),
                    "relative_error": float(np.linalg.norm(actual - expected) / np.linalg.norm(expected)),
                    "max_abs_px": float(np.abs(actual - expected).max()),
                    "peak_rss_mb": ours["peak_rss_mb"],
                    "published_peak_rss_mb": published["peak_rss_mb"],
                }
            )
            print(json.dumps(records[-1]))
    if args.json:
        meta = {
            "raft_engine": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": f"CPU ({platform.machine()}), 2 threads",
            "frames": [str(f) for f in args.frames],
            "published_revision": args.raft_revision,
            "command": " ".join(sys.argv),
        }
        args.json.write_text(json.dumps({**meta, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
