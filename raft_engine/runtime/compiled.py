"""The whole RAFT forward under torch.compile, one graph per input shape, optionally as CUDA graphs.

At batch 1 a 12-iteration RAFT-large pass is hundreds of small kernel launches; compiled with
`fullgraph=True` (both encoders, the correlation, every iteration unrolled, the upsampling) and
replayed as a CUDA graph, it is one launch sequence recorded once.

Each distinct (correlation mode, batch, padded size, iterations, warm start) is one graph: the first
call compiles it (logged with its duration), later calls reuse it. Past `max_shapes` graphs, new
shapes run eagerly with a warning instead of compiling on and on. Inductor's on-disk caches
(`TORCHINDUCTOR_CACHE_DIR`, default /tmp/torchinductor_$USER) make a second process start quickly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch

from raft_engine.errors import InputError
from raft_engine.model.raft import RAFTOutput

log = logging.getLogger("raft_engine.runtime.engine")


def _recompile_limit(limit: int) -> contextlib.AbstractContextManager:
    """Let dynamo keep `limit` graphs of the forward (its default is 8); the name changed across versions."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) >= limit:
        return contextlib.nullcontext()
    return config.patch(name, limit)


class CompiledForward:
    """The compiled forwards of one engine, per correlation mode. forwards: {mode: a RAFT (its forward) or
    one of its methods taking (image1, image2 or feature maps, iters=, flow_init=), such as
    `RAFT.forward_sequence`}; each is compiled as it is called with a new shape."""

    def __init__(self, forwards: dict[str, Callable[..., RAFTOutput]], cuda_graphs: bool, max_shapes: int) -> None:
        if max_shapes < 1:
            raise InputError(f"max_compiled_shapes must be >= 1, got {max_shapes}")
        self.forwards = forwards
        self.cuda_graphs = cuda_graphs
        self.max_shapes = max_shapes
        mode = "reduce-overhead" if cuda_graphs else "default"
        self.compiled = {
            name: torch.compile(forward, fullgraph=True, dynamic=False, mode=mode) for name, forward in forwards.items()
        }
        self.shapes: list[tuple] = []
        self.compile_seconds: dict[tuple, float] = {}
        self._warned_full = False

    def __call__(
        self, corr_mode: str, image1: torch.Tensor, image2: torch.Tensor, iters: int, flow_init: torch.Tensor | None
    ) -> RAFTOutput:
        batch, _, height, width = image1.shape
        key = (corr_mode, batch, height, width, iters, flow_init is not None)
        new = key not in self.shapes
        if new and len(self.shapes) >= self.max_shapes:
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "%d compiled shapes already (max_compiled_shapes); %s and any further new shapes run "
                    "eagerly. Warm up the shapes you serve, or raise max_compiled_shapes",
                    len(self.shapes),
                    _describe(key),
                )
            return self.forwards[corr_mode](image1, image2, iters=iters, flow_init=flow_init)
        if new:
            self.shapes.append(key)
            log.info(
                "compiling the RAFT forward for %s (%d of at most %d shapes)",
                _describe(key),
                len(self.shapes),
                self.max_shapes,
            )
            start = time.perf_counter()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with _recompile_limit(self.max_shapes + 2):
            output = self.compiled[corr_mode](image1, image2, iters=iters, flow_init=flow_init)
        if new:
            if image1.is_cuda:
                torch.cuda.synchronize(image1.device)
            self.compile_seconds[key] = time.perf_counter() - start
            log.info("compiled %s in %.1f s", _describe(key), self.compile_seconds[key])
        if self.cuda_graphs:
            # A CUDA graph's outputs are static buffers that the next replay overwrites.
            output = RAFTOutput(flow=output.flow.clone(), flow_low=output.flow_low.clone())
        return output


def _describe(key: tuple) -> str:
    corr_mode, batch, height, width, iters, warm = key
    return (
        f"batch {batch} at {height}x{width} (padded), {iters} iterations, corr {corr_mode}"
        f"{', warm start' if warm else ''}"
    )
