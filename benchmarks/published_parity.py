"""How close raft-engine's float32 PyTorch paths are to the published RAFT code on a real pair, and the
peak memory of each, measured in a process of its own.

The published code is not part of this project: give the `core` folder of a checkout of
princeton-vl/RAFT (`--raft-core`). Both networks get the same weights, synthesised by the rule of the
test fixtures (tests/data/README.md, seed 7, for each key of the published model's own state dict),
loaded into the published RAFT and, with `load_model`, into raft-engine. The frames are padded as the
published evaluation does ("sintel": replicate, split evenly) and the flows compared at the input size:
relative L2 error and the largest difference (px).

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
import zlib
from pathlib import Path

SEED = 7  # the fixtures' seed of the published layouts
PATHS = ("torch-volume", "torch-ondemand")


def synthetic(state: dict) -> dict:
    """The fixtures' synthetic weights for the keys and shapes of `state` (tests/data/README.md)."""
    import torch

    out = {}
    for key, value in state.items():
        shape = tuple(value.shape)
        g = torch.Generator().manual_seed(SEED * 1_000_003 + zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:
            out[key] = torch.randn(shape, generator=g) * (1 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif key.endswith("weight"):
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out


def _published_model(core: Path, variant: str):
    """The published RAFT of `variant` with the synthetic weights, imported from its `core` folder (its
    modules import each other by top-level name, so the folder goes first on the module path of this
    process only)."""
    sys.path.insert(0, str(core))
    published = importlib.import_module("raft")
    args = argparse.Namespace(small=variant == "small", mixed_precision=False, alternate_corr=False, dropout=0.0)
    model = published.RAFT(args).eval()
    model.load_state_dict(synthetic(model.state_dict()))
    return model


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
