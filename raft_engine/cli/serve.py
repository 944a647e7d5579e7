"""`raft-engine serve`: the flow server on Ray Serve (see `raft_engine.serving`), on this machine or a
cluster, until SIGINT or SIGTERM stops it cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from typing import Any

from raft_engine.cli import options
from raft_engine.errors import ClusterError, UsageError


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[options.options("weights", "iters", *options.ENGINE_OPTIONS)],
        help="a flow server: POST /v1/flow, the KServe v2 protocol, dynamic batching, on Ray Serve",
        description="Serve flow over HTTP until SIGINT or SIGTERM: POST /v1/flow (a multipart form with image1 "
        "and image2), the KServe v2 protocol at /v2/models/NAME (the Triton Inference Server client works "
        "against it), GET /healthz. Requests of the same padded size run together in batches.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1, this "
                       "machine only; see the flow server's guide before exposing it)")  # fmt: skip
    serve.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    serve.add_argument("--model-name", default="raft", help="the KServe model's name (default raft)")
    serve.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas (default 1)")
    serve.add_argument(
        "--gpus-per-replica", type=float, default=0, metavar="G", help="GPUs per replica, fractions allowed (default 0)"
    )
    serve.add_argument("--cpus-per-replica", type=float, default=1, metavar="C", help="CPUs Ray reserves per replica "
                       "(default 1)")  # fmt: skip
    serve.add_argument("--threads", type=int, default=None, metavar="T", help="torch's CPU threads per replica")
    serve.add_argument("--max-batch-size", type=int, default=8, metavar="B", help="pairs per batch (default 8)")
    serve.add_argument("--batch-wait-ms", type=float, default=10, metavar="T", help="how long a batch waits to fill "
                       "(default 10 ms)")  # fmt: skip
    serve.add_argument("--max-queued", type=int, default=64, metavar="Q", help="requests that may wait beyond those "
                       "the replicas hold; the next gets 503 with Retry-After (default 64)")  # fmt: skip
    serve.add_argument("--max-pixels", type=int, default=None, metavar="P", help="pixels per image, checked from its "
                       "header (default 3840x2160)")  # fmt: skip
    serve.add_argument("--max-body-mb", type=float, default=None, metavar="M", help="request body size (default 256)")
    serve.add_argument("--max-iters", type=int, default=None, metavar="N", help="most iterations a request may ask "
                       "(default 64)")  # fmt: skip
    serve.add_argument("--compile", action="store_true", help="torch.compile in each replica (each size compiles "
                       "on its first batch)")  # fmt: skip
    serve.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="run on a running Ray cluster: auto or HOST:PORT (default: start Ray on this machine)",
    )
    serve.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="Ray Serve's log level, on the terminal and in Ray's logs (default WARNING; INFO logs every request)",
    )
    serve.set_defaults(run=run)


def _check_port(host: str, port: int) -> None:
    """The address must be free before Ray starts: a port in use is one line, not Serve's retries."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ClusterError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def run(args: argparse.Namespace) -> int:
    from raft_engine.serving import _require_serve, build_app

    options.check_iters(args)
    _require_serve()
    max_body = None if args.max_body_mb is None else int(args.max_body_mb * (1 << 20))
    app = build_app(
        options.weights(args), options.engine_options(args, compile=args.compile), iters=options.iters(args),
        max_iters=args.max_iters, model_name=args.model_name, replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica, threads=args.threads,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, max_queued=args.max_queued,
        max_pixels=args.max_pixels, max_body_bytes=max_body,
    )  # fmt: skip
    _check_port(args.host, args.port)
    stop = threading.Event()
    import ray
    from ray import serve

    logging.getLogger("ray.serve").setLevel(args.log_level)
    quiet = {"log_level": args.log_level}
    try:
        ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot start or join Ray ({str(error).splitlines()[0]})") from error
    # After ray.init, whose core installs a SIGTERM handler of its own that aborts the process.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=quiet)
        serve.run(app, name=args.model_name, route_prefix="/", blocking=False, logging_config=quiet)
        print(
            f"serving {args.model_name!r} at http://{args.host}:{args.port}: POST /v1/flow, KServe v2 at "
            f"/v2/models/{args.model_name}, GET /healthz; SIGINT or SIGTERM stops",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        print("stopping", file=sys.stderr, flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
