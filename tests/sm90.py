"""Compile every Triton kernel in every GPU autotune configuration for an H100 (sm_90), without a GPU.

Triton compiles for a named target with its bundled ptxas, so a configuration that cannot run well
on the H100 (register spills) or does not compile at all is caught on any machine. Run as a script
with TRITON_INTERPRET unset (the interpreter replaces the compiler); prints one JSON line per
compilation: kernel, configuration, dtype, radius, registers, spill bytes, or the error.

torch.compile's mutation analysis of the lookup kernels is checked here too: it compiles the kernel
to Triton IR for the same target and must find that only `out` is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

TARGET_ARCH = 90
DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


@dataclass(frozen=True)
class Job:
    kernel: str  # "lookup", "ondemand" or "upsample"
    config: dict
    num_warps: int
    dtype: str
    radius: int
    dim: int


def _kernel(name: str):
    from raft_engine.kernels import convex_upsample, corr_lookup, corr_ondemand

    return {
        "lookup": corr_lookup._corr_lookup_kernel,
        "ondemand": corr_ondemand._corr_ondemand_kernel,
        "upsample": convex_upsample._convex_upsample_kernel,
    }[name]


def jobs() -> list[Job]:
    found = []
    for name in ("lookup", "ondemand", "upsample"):
        for config in _kernel(name).configs:
            for dtype in DTYPES:
                radii = (3, 4) if name != "upsample" else (0,)
                dims = (128, 256) if name == "ondemand" else (0,)
                for radius in radii:
                    for dim in dims:
                        found.append(Job(name, dict(config.kwargs), config.num_warps, dtype, radius, dim))
    return found


def _signature(job: Job) -> tuple[dict, dict]:
    """Triton signature and constexprs of one job, by argument name."""
    pointer = DTYPES[job.dtype]
    constexprs = dict(job.config)
    if job.kernel == "upsample":
        pointers = {"flow": "*fp32", "up_mask": pointer, "out": "*fp32"}
    else:
        constexprs.update(NUM_LEVELS=4, RADIUS=job.radius, WINDOW_PAD=_pow2((2 * job.radius + 1) ** 2))
        levels = {f"level{i}": pointer for i in range(4)}
        pointers = {**levels, "coords": "*fp32", "out": "*fp32"}
        if job.kernel == "ondemand":
            pointers = {"fmap1": pointer, **pointers}
            constexprs.update(dim=job.dim, PATCH_PAD=_pow2((2 * job.radius + 2) ** 2))
    return pointers, constexprs


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _compile(job: Job):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(job.kernel).fn
    pointers, constexprs = _signature(job)
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = "i32"  # sizes and strides
    keyed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=keyed)
    target = GPUTarget("cuda", TARGET_ARCH, 32)
    return triton.compile(source, target=target, options={"num_warps": job.num_warps})


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) of the compiled kernel, from cuobjdump's resource usage."""
    from triton.backends.nvidia.compiler import get_ptxas

    tools = os.path.dirname(get_ptxas(TARGET_ARCH).path)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run(
            [os.path.join(tools, "cuobjdump"), "-res-usage", file.name], capture_output=True, text=True, check=True
        ).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    return registers, stack


def run(job: Job) -> dict:
    record = {**job.__dict__}
    try:
        compiled = _compile(job)
        record["registers"], record["stack_bytes"] = _resources(compiled.asm["cubin"])
    except Exception as error:  # noqa: BLE001 - reported per configuration, judged by the test
        record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return record


class _TargetDriver:
    """What torch's mutation analysis asks of Triton's driver: the target to compile for."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", TARGET_ARCH, 32)


def mutated_arguments() -> dict[str, list[str]]:
    """torch.compile's view of what each lookup kernel writes (it copies what it believes written)."""
    import torch
    import triton
    from torch._higher_order_ops import triton_kernel_wrap

    triton.runtime.driver.set_active(_TargetDriver())
    batch, height, width = 1, 16, 20
    coords = torch.rand(batch, 2, height, width)
    out = torch.empty(batch, 4 * 81, height, width)
    common = dict(
        coords=coords, out=out, height=height, width=width, num_cells=batch * height * width, size_bucket=9,
        stride_cb=coords.stride(0), stride_cc=coords.stride(1), stride_ch=coords.stride(2), stride_cw=coords.stride(3),
        NUM_LEVELS=4, RADIUS=4, WINDOW_PAD=128,
    )  # fmt: skip
    lookup_levels = {f"level{i}": torch.rand(batch * height * width, height >> i, width >> i) for i in range(4)}
    ondemand_levels = {f"level{i}": torch.rand(batch, height >> i, width >> i, 128) for i in range(4)}
    arguments = {
        "lookup": {**common, **lookup_levels, "BLOCK_CELLS": 16},
        "ondemand": {
            **common,
            **ondemand_levels,
            "fmap1": torch.rand(batch, height, width, 128),
            "scale": 0.1,
            "dim": 128,
            "PATCH_PAD": 128,
            "BLOCK_CELLS": 2,
            "BLOCK_DIM": 32,
        },
    }
    found = {}
    for name, kwargs in arguments.items():
        accesses = triton_kernel_wrap.identify_accessed_tensors(_kernel(name), kwargs, {})
        found[name] = sorted(dep.name for dep in accesses.read_writes.writes)
    return found


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("run with TRITON_INTERPRET unset: the interpreter replaces Triton's compiler")
    if sys.argv[1:] == ["mutations"]:
        print(json.dumps(mutated_arguments()))
        return
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for record in pool.map(run, jobs()):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
