"""The ONNX export's correlation, dense against on-demand: peak memory and latency in ONNX Runtime (CPU).

    python benchmarks/onnx_memory.py                                 # the documented run (about an hour on 2 cores)
    python benchmarks/onnx_memory.py --sizes 128x160 --repeats 1    # a smoke run

For each size: RAFT-large (random weights: memory and time do not depend on them), 12 iterations,
batch 1, exported with corr="volume" (where the volume fits ONNX Runtime's 2^31-1 element limit) and
corr="ondemand". Each graph runs in its own process, so that the peak resident memory (ru_maxrss:
session creation, the graph's weights and every run) is that graph's alone; latency is the median of
--repeats runs after one warm-up run, with --threads intra-op threads. The two flows of each size are
compared (relative L2 difference). --dynamic adds the on-demand graph exported with dynamic_size=True
(traced at 256x320), run at the same size: what a graph for any size costs against a fixed-size one.
Writes a JSON record per graph (--json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raft_engine import RAFT, RAFTConfig
from raft_engine.export import export_onnx
from raft_engine.export.limits import MAX_TENSOR_ELEMENTS, dense_volume_elements
from raft_engine.scenes import scene_tensors

ITERS = 12


def run_graph(path: str, height: int, width: int, repeats: int, threads: int, flow_out: str) -> dict:
    """In a fresh process: one warm-up run and `repeats` timed runs of the graph -> latency, peak memory."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    image1, image2, _ = scene_tensors([0], height, width)
    feeds = {"image1": image1.numpy(), "image2": image2.numpy()}
    flow = session.run(None, feeds)[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    np.save(flow_out, flow)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"latency_s": statistics.median(times), "runs_s": times, "peak_rss_gib": peak_kib / 2**20}


def measure(corr: str, height: int, width: int, folder: Path, repeats: int, threads: int, dynamic: bool) -> dict:
    torch.manual_seed(0)
    path = folder / f"{corr}-{height}x{width}{'-dynamic' if dynamic else ''}.onnx"
    start = time.perf_counter()
    model = RAFT(RAFTConfig.large()).eval()
    if dynamic:
        export_onnx(model, path, iters=ITERS, dynamic_size=True, verify=False)
    else:
        export_onnx(model, path, iters=ITERS, height=height, width=width, corr=corr, verify=False)
    export_s = time.perf_counter() - start
    flow_out = path.with_suffix(".npy")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from onnx_memory import run_graph; "
        "print(json.dumps(run_graph(sys.argv[2], *map(int, sys.argv[3:7]), sys.argv[7])))"
    )
    args = [str(Path(__file__).parent), str(path), *(str(v) for v in (height, width, repeats, threads)), str(flow_out)]
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "variant": "large",
        "corr": corr,
        "dynamic_size": dynamic,
        "height": height,
        "width": width,
        "iters": ITERS,
        "batch": 1,
        "threads": threads,
        "export_s": round(export_s, 1),
        "graph_mib": round(path.stat().st_size / 2**20, 1),
        **result,
        "flow": str(flow_out),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="1088x1920,2160x3840", help="comma-separated HxW (default 1088x1920,2160x3840)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per graph after a warm-up (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--dynamic", action="store_true", help="also the dynamic-size on-demand graph")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the records here")
    args = parser.parse_args(argv)
    import onnxruntime

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in args.sizes.split(","):
            height, width = (int(v) for v in size.lower().split("x"))
            modes = [("ondemand", False)]
            if dense_volume_elements(1, height, width) <= MAX_TENSOR_ELEMENTS:
                modes.insert(0, ("volume", False))
            if args.dynamic:
                modes.append(("ondemand", True))
            flows = {}
            for corr, dynamic in modes:
                record = measure(corr, height, width, folder, args.repeats, args.threads, dynamic)
                flows[corr, dynamic] = np.load(record.pop("flow"))
                if ("volume", False) in flows and corr == "ondemand":
                    volume = flows["volume", False]
                    difference = np.linalg.norm(flows[corr, dynamic] - volume) / np.linalg.norm(volume)
                    record["relative_difference_vs_volume"] = float(difference)
                records.append(record)
                print(json.dumps(record), flush=True)
    environment = {
        "machine": platform.processor() or platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "command": "python " + " ".join([Path(__file__).name, *(sys.argv[1:] if argv is None else argv)]),
    }
    for record in records:
        record.update(environment)
    print(f"\n{'size':>10} {'corr':>17} {'peak GiB':>9} {'latency s':>10} {'export s':>9} {'vs volume':>10}")
    for r in records:
        difference = r.get("relative_difference_vs_volume")
        corr = r["corr"] + (" dynamic" if r["dynamic_size"] else "")
        print(
            f"{r['height']}x{r['width']:<5} {corr:>17} {r['peak_rss_gib']:9.2f} {r['latency_s']:10.1f} "
            f"{r['export_s']:9.1f} {'' if difference is None else f'{difference:.1e}':>10}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
