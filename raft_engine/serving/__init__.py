"""The flow server on Ray Serve (`build_app`, `raft-engine serve`): /v1/flow for two images in a multipart
form, the KServe v2 protocol for the Triton Inference Server client, /healthz; requests of the same padded
size batched dynamically; every refusal immediate, with its reason. Ray Serve is an optional extra:
`pip install -e ".[ray]"`."""

from __future__ import annotations

import re
from typing import Any

from raft_engine.errors import InputError, MissingDependency
from raft_engine.runtime.options import EngineOptions

DEFAULT_RETRY_AFTER_S = 1


def _require_serve() -> None:
    for module in ("ray.serve", "fastapi", "multipart"):
        try:
            __import__(module)
        except ModuleNotFoundError as error:
            raise MissingDependency(
                f'the flow server needs Ray Serve ({error.name} is not installed): pip install -e ".[ray]"',
                name=error.name,
            ) from error


def _positive(name: str, value: Any, integer: bool = True, zero: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (value >= 0 if zero else value > 0):
        what = "an integer" if integer else "a number"
        raise InputError(f"{name} must be {what} {'>= 0' if zero else '> 0'}, got {value!r}")


def build_app(
    weights: str = "builtin",
    options: EngineOptions | None = None,
    *,
    iters: int = 12,
    max_iters: int | None = None,
    model_name: str = "raft",
    replicas: int = 1,
    gpus_per_replica: float = 0,
    cpus_per_replica: float = 1,
    threads: int | None = None,
    max_batch_size: int = 8,
    batch_wait_ms: float = 10,
    max_queued: int = 64,
    max_pixels: int | None = None,
    max_body_bytes: int | None = None,
    retry_after_s: int = DEFAULT_RETRY_AFTER_S,
) -> Any:
    """Build the flow server as a Ray Serve application.

    `serve.run(build_app(...))` runs it alone; it can also be composed into an application of one's own.
    Its endpoints: `POST /v1/flow` (two images in a multipart form), the KServe v2 protocol under `/v2`,
    and `GET /healthz` (docs/pages/guides/serving.md describes them).

    Args:
        weights: the checkpoint or preset each replica loads (`load_model`'s).
        options: the engine's settings; without a GPU per replica the device defaults to the CPU.
        iters: a request's iterations unless it asks for others.
        max_iters: the most iterations a request may ask (default 64).
        model_name: the model's name in the KServe protocol.
        replicas: replicas of the engine.
        gpus_per_replica: GPUs per replica, fractions allowed.
        cpus_per_replica: CPUs Ray reserves per replica.
        threads: torch's CPU threads in each replica (None: torch's default).
        max_batch_size: pairs per dynamic batch (pairs of one padded size, iteration count and direction).
        batch_wait_ms: how long a batch waits to fill.
        max_queued: the requests that may wait beyond those the replicas hold (2 x max_batch_size each: one
            batch running, the next filling); the next one gets 503 with Retry-After.
        max_pixels: pixels per image, read from its header (default 3840 x 2160); past it, 413.
        max_body_bytes: the request body's size (default 256 MiB); past it, 413.
        retry_after_s: the Retry-After of a 503, in seconds.

    Returns:
        The bound deployment, for `serve.run`.

    Raises:
        InputError: a setting out of range or a model name that is not letters, digits, '_', '.' and '-'.
        MissingDependency: Ray Serve, FastAPI or python-multipart is not installed.
    """
    _require_serve()
    from ray import serve
    from ray.serve.config import BackpressureConfig

    from raft_engine.serving.app import (
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_ITERS,
        DEFAULT_MAX_PIXELS,
        FlowServer,
        ServerSettings,
    )

    for name, value in (("replicas", replicas), ("max_batch_size", max_batch_size), ("iters", iters)):
        _positive(name, value)
    _positive("max_queued", max_queued)
    if not isinstance(model_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_name):
        raise InputError(f"model name must be letters, digits, '_', '.' and '-', got {model_name!r}")
    _positive("retry_after_s", retry_after_s)
    _positive("gpus_per_replica", gpus_per_replica, integer=False, zero=True)
    _positive("cpus_per_replica", cpus_per_replica, integer=False, zero=True)
    _positive("batch_wait_ms", batch_wait_ms, integer=False, zero=True)
    if threads is not None:
        _positive("threads", threads)
    max_iters = DEFAULT_MAX_ITERS if max_iters is None else max_iters
    _positive("max_iters", max_iters)
    if iters > max_iters:
        raise InputError(f"iters ({iters}) must not be more than max_iters ({max_iters})")
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    max_body_bytes = DEFAULT_MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes
    _positive("max_pixels", max_pixels)
    _positive("max_body_bytes", max_body_bytes)
    options = options or EngineOptions()
    if gpus_per_replica == 0 and options.device is None:
        options = options.replace(device="cpu")  # a replica without a GPU must not take one by default
    settings = ServerSettings(
        weights=weights, options=options.to_dict(), iters=iters, max_iters=max_iters, model_name=model_name,
        max_batch_size=max_batch_size, batch_wait_ms=float(batch_wait_ms), max_pixels=max_pixels,
        max_body_bytes=max_body_bytes, threads=threads,
    )  # fmt: skip
    deployment: Any = serve.deployment(
        FlowServer,
        name="FlowServer",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        max_ongoing_requests=2 * max_batch_size,
        max_queued_requests=max_queued,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
    )
    return deployment.bind(settings.to_dict())


__all__ = ["build_app"]
