"""The flow server under load, over loopback: latency and throughput at several concurrencies with and
without dynamic batching, the errors, and the replica's resident memory across 1,000 requests.

    python benchmarks/serving.py --json benchmarks/results/DATE-serving-cpu.json      # the documented run
    python benchmarks/serving.py --quick                                              # a smoke run
    python benchmarks/serving.py --device cuda --gpus-per-replica 1 --compile --size 440x1024 \\
        --weights raft-things.pth --json benchmarks/results/DATE-serving-GPU.json      # on a GPU machine

(a) For --max-batch-size 1 and 8: a server of one replica (`build_app`, Ray on this machine with --cpus
    CPUs, the replica on --threads torch threads), then for each concurrency of 1, 4 and 16, --requests
    POST /v1/flow requests of one generated pair (--size, --iters, .flo back) sent by that many client
    threads, each on its own keep-alive connection, a request as soon as its previous one is answered.
    Latency (from sending to the whole answer) p50, p90 and p99, requests/s over the wall time, the
    status codes, and the batch sizes the server reported. Each server first answers 2 x max batch size
    requests, not counted (the first batch of a size builds its buffers).
(b) Saturation: the batching server with --saturated-queue requests allowed to wait, at concurrency 32,
    past what it holds (2 x 8 in the replica, plus those waiting): what is refused must be 503 with
    Retry-After, and nothing else may fail.
(c) Memory: the resident set size of the replica's process after a warm-up of 64 requests and after each
    fifth of --memory-requests more (concurrency 4, batches of up to 8, 128x128 pairs at 2 iterations).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _load(url: str, files: dict, fields: dict, requests_count: int, concurrency: int) -> dict:
    """`requests_count` requests by `concurrency` threads -> latencies, codes, batch sizes, wall time."""
    import requests

    lock = threading.Lock()
    remaining = [requests_count]
    latencies: list[float] = []
    codes: collections.Counter = collections.Counter()
    batches: collections.Counter = collections.Counter()
    retry_after: set[str] = set()

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                try:
                    answer = session.post(f"{url}/v1/flow", files=files, data=fields, timeout=600)
                    code, headers = answer.status_code, answer.headers
                except requests.RequestException as error:
                    code, headers = type(error).__name__, {}
                elapsed = time.perf_counter() - started
                with lock:
                    codes[code] += 1
                    if code == 200:
                        latencies.append(elapsed)
                        batches[int(headers["x-batch-size"])] += 1
                    elif code == 503:
                        retry_after.add(headers.get("retry-after", "missing"))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    quantiles = np.percentile(latencies, [50, 90, 99]) * 1000 if latencies else [float("nan")] * 3
    return {
        "concurrency": concurrency, "requests": requests_count, "wall_s": round(wall, 2),
        "requests_per_s": round(codes[200] / wall, 3),
        "latency_ms": {"p50": round(quantiles[0], 1), "p90": round(quantiles[1], 1), "p99": round(quantiles[2], 1)},
        "codes": {str(code): count for code, count in sorted(codes.items(), key=str)},
        "batch_sizes": {str(size): count for size, count in sorted(batches.items())},
        "retry_after": sorted(retry_after),
    }  # fmt: skip


def _replica_rss(app: str) -> int:
    """The resident set size (bytes) of the application's one replica process."""
    import psutil  # vendored by Ray, importable after `import ray`
    import ray

    names = [entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)]
    (name,) = [name for name in names if "FlowServer" in name and app in name]
    pid = ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda self: os.getpid()))
    return psutil.Process(pid).memory_info().rss


def _saturation(args: argparse.Namespace, url: str, files: dict, fields: dict, common: dict) -> dict:
    """(b): the batching server past what it holds; what is refused must be 503 with Retry-After."""
    from ray import serve

    from raft_engine.serving import build_app

    serve.run(build_app(max_batch_size=8, max_queued=args.saturated_queue, **common), name="bench", route_prefix="/")
    _load(url, files, fields, 16, 16)
    # The replica holds 2 x 8 requests (a batch running, the next filling) and Serve queues --saturated-queue
    # more: a concurrency of 32 passes that, so some requests must be refused.
    capacity = 2 * 8 + args.saturated_queue
    result = {"max_batch_size": 8, "max_queued": args.saturated_queue, "capacity": capacity,
              **_load(url, files, fields, max(args.requests, 64), 32)}  # fmt: skip
    print(json.dumps(result), file=sys.stderr, flush=True)
    serve.delete("bench")
    return result


def _memory(args: argparse.Namespace, url: str, small_files: dict, common: dict) -> dict:
    """(c): the replica's resident set after a warm-up and after each fifth of --memory-requests."""
    from ray import serve

    from raft_engine.serving import build_app

    serve.run(build_app(max_batch_size=8, **{**common, "iters": 2}), name="bench", route_prefix="/")
    _load(url, small_files, {}, 64, 4)
    before = _replica_rss("bench")
    # Growth that stops is the allocator settling; growth that goes on is a leak.
    steps, codes, seconds = [], collections.Counter(), 0.0
    for _ in range(5):
        part = _load(url, small_files, {}, args.memory_requests // 5, 4)
        codes.update(part["codes"])
        seconds += part["wall_s"]
        steps.append(round(_replica_rss("bench") / 2**20, 1))
    result = {
        "requests": args.memory_requests, "size": [128, 128], "iters": 2, "concurrency": 4,
        "rss_mib_after_warmup": round(before / 2**20, 1), "rss_mib_after_each_fifth": steps,
        "rss_mib_after": steps[-1], "growth_mib": round(steps[-1] - before / 2**20, 1),
        "growth_mib_last_three_fifths": round(steps[-1] - steps[1], 1), "codes": dict(codes),
        "requests_per_s": round(args.memory_requests // 5 * 5 / seconds, 3),
    }  # fmt: skip
    print(json.dumps(result), file=sys.stderr, flush=True)
    serve.delete("bench")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="builtin")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--gpus-per-replica", type=float, default=0)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the replica (default 2)")
    parser.add_argument("--size", default="256x320", help="HxW of the pair (default 256x320)")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency (default 48)")
    parser.add_argument("--saturated-queue", type=int, default=2)
    parser.add_argument("--memory-requests", type=int, default=1000)
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--quick", action="store_true", help="128x128, 2 iterations, 8 requests, 40 for memory")
    parser.add_argument(
        "--parts", default="load,saturation,memory", help="which of (a) load, (b) saturation, (c) memory to run"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.size, args.iters, args.requests, args.memory_requests = "128x128", 2, 8, 40
    height, width = (int(side) for side in args.size.split("x"))

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a Ray on this machine only, for the benchmark
    import ray
    from ray import serve

    from raft_engine import EngineOptions, __version__
    from raft_engine.runtime.devices import device_name
    from raft_engine.scenes import generate_pair
    from raft_engine.serving import build_app

    scene = generate_pair(3, height, width)
    files = {"image1": ("1.png", _png(scene.image1), "image/png"), "image2": ("2.png", _png(scene.image2), "image/png")}
    fields = {"iters": str(args.iters)}
    small = generate_pair(4, 128, 128)
    small_files = {"image1": ("1.png", _png(small.image1)), "image2": ("2.png", _png(small.image2))}
    options = EngineOptions(device=args.device, compile=args.compile)
    common = dict(
        weights=args.weights, options=options, iters=args.iters, gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=min(1, args.cpus), threads=args.threads, batch_wait_ms=10,
    )  # fmt: skip
    url = f"http://127.0.0.1:{args.port}"
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    record: dict = {"load": [], "saturation": None, "memory": None}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        parts = set(args.parts.split(","))
        for max_batch in (1, 8) if "load" in parts else ():
            serve.run(build_app(max_batch_size=max_batch, **common), name="bench", route_prefix="/")
            _load(url, files, fields, 2 * max_batch, min(2 * max_batch, 16))  # warm-up, not counted
            for concurrency in (1, 4, 16):
                result = {"max_batch_size": max_batch, **_load(url, files, fields, args.requests, concurrency)}
                print(json.dumps(result), file=sys.stderr, flush=True)
                record["load"].append(result)
            serve.delete("bench")
        if "saturation" in parts:
            record["saturation"] = _saturation(args, url, files, fields, common)
        if "memory" in parts:
            record["memory"] = _memory(args, url, small_files, common)
    finally:
        serve.shutdown()
        ray.shutdown()
    record = {
        "raft_engine": __version__, "torch": torch.__version__, "ray": ray.__version__,
        "python": platform.python_version(), "device": device_name(torch.device(args.device)),
        "cpus": args.cpus, "threads": args.threads, "size": [height, width], "iters": args.iters,
        "weights": args.weights, "compile": args.compile, "command": " ".join(["python", *sys.argv]), **record,
    }  # fmt: skip
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
