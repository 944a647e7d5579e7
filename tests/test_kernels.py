"""Triton kernels against their PyTorch references, with the float64 reference as the judge.

Without a GPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET).
A kernel passes when its error against float64 is at most about the float32 reference's own:
err(kernel) <= 2 * err(reference) + atol.
"""

from __future__ import annotations

import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

from raft_engine.interpreter import interpreting
from raft_engine.kernels import convex_upsample as upsample_module
from raft_engine.kernels import corr_lookup as lookup_module
from raft_engine.kernels import corr_ondemand as ondemand_module
from raft_engine.kernels.convex_upsample import convex_upsample, convex_upsample_ref
from raft_engine.kernels.corr_lookup import corr_lookup, corr_lookup_ref
from raft_engine.kernels.corr_ondemand import corr_ondemand, corr_ondemand_ref, pooled_pyramid
from raft_engine.model.correlation import all_pairs_correlation, correlation_pyramid

LEVELS = 4

# The CPU through Triton's interpreter where it is on; CUDA where there is a GPU (`pytest -m gpu`).
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not interpreting(), reason="Triton's interpreter is off")),
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    ),
]


def max_error(actual: torch.Tensor, judge: torch.Tensor) -> float:
    return float((actual.double() - judge).abs().max())


def assert_as_exact_as_reference(kernel: torch.Tensor, reference: torch.Tensor, judge: torch.Tensor) -> None:
    assert kernel.shape == judge.shape and kernel.dtype == torch.float32
    assert torch.isfinite(kernel).all()
    scale = float(judge.abs().max())
    kernel_error, reference_error = max_error(kernel, judge), max_error(reference, judge)
    assert kernel_error <= 2 * reference_error + 1e-6 * scale, (kernel_error, reference_error, scale)


def make_coords(batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Correspondences near the identity, some far outside the image, some exactly on pixel borders
    of every level (multiples of 8) and on the image edges."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    coords = torch.stack([xs, ys]).expand(batch, 2, height, width).clone()
    coords += 4 * torch.randn(coords.shape, generator=generator)
    flat = coords.permute(0, 2, 3, 1).reshape(-1, 2)
    count = flat.shape[0]
    pick = torch.randperm(count, generator=generator)
    far = pick[: count // 10]
    flat[far] = (torch.rand(len(far), 2, generator=generator) - 0.5) * 4000
    border = pick[count // 10 : count // 5]
    choices = torch.tensor([0.0, -1.0, -8.0, 8.0, 16.0, width - 1.0, width, height - 1.0, height, -4.5])
    flat[border] = choices[torch.randint(len(choices), (len(border), 2), generator=generator)]
    return flat.view(batch, height, width, 2).permute(0, 3, 1, 2).contiguous()


def features(batch: int, dim: int, height: int, width: int, generator: torch.Generator):
    shape = (batch, dim, height, width)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


GRIDS = [(2, 17, 23, 4), (1, 55, 128, 4), (3, 17, 23, 3), (1, 16, 20, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, height, width, radius", GRIDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.float16, torch.bfloat16])
def test_corr_lookup(batch, height, width, radius, storage, device):
    generator = torch.Generator().manual_seed(height * width + radius)
    fmap1, fmap2 = (f.to(device) for f in features(batch, 32, height, width, generator))
    pyramid = [level.to(storage) for level in correlation_pyramid(all_pairs_correlation(fmap1, fmap2), LEVELS)]
    coords = make_coords(batch, height, width, generator).to(device)
    judge = corr_lookup_ref([level.double() for level in pyramid], coords.double(), radius)
    assert_as_exact_as_reference(corr_lookup(pyramid, coords, radius), corr_lookup_ref(pyramid, coords, radius), judge)


@pytest.mark.parametrize("device", DEVICES)
def test_corr_lookup_non_contiguous_coords(device):
    generator = torch.Generator().manual_seed(1)
    fmap1, fmap2 = (f.to(device) for f in features(2, 16, 17, 23, generator))
    pyramid = correlation_pyramid(all_pairs_correlation(fmap1, fmap2), LEVELS)
    coords = make_coords(2, 17, 23, generator).to(device)
    strided = coords.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    assert not strided.is_contiguous()
    judge = corr_lookup_ref([level.double() for level in pyramid], coords.double(), 4)
    assert_as_exact_as_reference(corr_lookup(pyramid, strided, 4), corr_lookup_ref(pyramid, strided, 4), judge)


@pytest.mark.parametrize("device", DEVICES)
def test_corr_ondemand_non_contiguous_coords(device):
    generator = torch.Generator().manual_seed(2)
    fmap1, fmap2 = (f.to(device) for f in features(2, 32, 17, 23, generator))
    features1 = fmap1.permute(0, 2, 3, 1).contiguous()
    pyramid = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2, LEVELS)]
    coords = make_coords(2, 17, 23, generator).to(device)
    strided = coords.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    sliced = torch.stack([coords, -coords], dim=-1).flatten(-2)[..., ::2]  # stride 2 along x
    # Judged by float64 like the contiguous cases. Values reach 3.6: the kernel's error is 4.9e-7, the
    # float32 reference's 5.5e-6 (grid_sample rounds the sample positions), so 1.5e-5 is allowed; the
    # former rtol = atol = 1e-5 around the float32 reference allowed 4.6e-5 from it.
    judge = corr_ondemand_ref(features1.double(), [level.double() for level in pyramid], coords.double(), 4)
    reference = corr_ondemand_ref(features1, pyramid, coords, 4)
    for weird in (strided, sliced):
        assert not weird.is_contiguous()
        assert_as_exact_as_reference(corr_ondemand(features1, pyramid, weird, 4), reference, judge)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, height, width, radius", [(2, 17, 23, 4), (1, 55, 128, 3), (3, 16, 20, 4)])
@pytest.mark.parametrize("storage", [torch.float32, torch.float16, torch.bfloat16])
def test_corr_ondemand_equals_the_dense_lookup(batch, height, width, radius, storage, device):
    generator = torch.Generator().manual_seed(height + width + radius)
    fmap1, fmap2 = (f.to(device) for f in features(batch, 64, height, width, generator))
    coords = make_coords(batch, height, width, generator).to(device)

    def channels_last(t):
        return t.permute(0, 2, 3, 1).to(storage).contiguous()

    features1 = channels_last(fmap1)
    pyramid = [channels_last(level) for level in pooled_pyramid(fmap2, LEVELS)]
    # Judge: the dense published lookup in float64 on the same (possibly rounded) features.
    dense64 = correlation_pyramid(
        all_pairs_correlation(features1.double().permute(0, 3, 1, 2), pyramid[0].double().permute(0, 3, 1, 2)), LEVELS
    )
    judge = corr_lookup_ref(dense64, coords.double(), radius)
    kernel = corr_ondemand(features1, pyramid, coords, radius)
    if storage == torch.float32:
        assert_as_exact_as_reference(kernel, corr_ondemand_ref(features1, pyramid, coords, radius), judge)
    else:
        # Pooled half-precision features round once more than the pooled float64 volume; the error is
        # that of the storage format: a few units in its last place, relative to the values.
        eps = torch.finfo(storage).eps
        assert max_error(kernel, judge) <= 8 * eps * float(judge.abs().max())


def test_corr_ondemand_reference_is_the_dense_lookup_in_float64():
    generator = torch.Generator().manual_seed(7)
    fmap1, fmap2 = (f.double() for f in features(2, 24, 17, 23, generator))
    coords = make_coords(2, 17, 23, generator).double()
    dense = corr_lookup_ref(correlation_pyramid(all_pairs_correlation(fmap1, fmap2), LEVELS), coords, 4)
    pyramid = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2, LEVELS)]
    ondemand = corr_ondemand_ref(fmap1.permute(0, 2, 3, 1).contiguous(), pyramid, coords, 4)
    torch.testing.assert_close(ondemand, dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, height, width", [(2, 17, 23), (1, 55, 128), (1, 1, 1)])
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float16])
def test_convex_upsample(batch, height, width, mask_dtype, device):
    generator = torch.Generator().manual_seed(batch * height * width)
    flow = (5 * torch.randn(batch, 2, height, width, generator=generator)).to(device)
    up_mask = (3 * torch.randn(batch, 576, height, width, generator=generator)).to(device, mask_dtype)
    judge = convex_upsample_ref(flow.double(), up_mask.double())
    assert_as_exact_as_reference(convex_upsample(flow, up_mask), convex_upsample_ref(flow, up_mask), judge)


@pytest.mark.parametrize("device", DEVICES)
def test_convex_upsample_non_contiguous_and_extreme_logits(device):
    generator = torch.Generator().manual_seed(3)
    flow = (5 * torch.randn(2, 17, 23, 2, generator=generator)).to(device).permute(0, 3, 1, 2)  # channels-last
    up_mask = 3 * torch.randn(2, 23, 17, 576, generator=generator).to(device).permute(0, 3, 2, 1)
    up_mask[0, :9, 3, 4] = 80.0  # large logits: the online softmax must not overflow
    up_mask[1, 64:128, 0, 0] = -80.0
    assert not flow.is_contiguous() and not up_mask.is_contiguous()
    judge = convex_upsample_ref(flow.double(), up_mask.double())
    assert_as_exact_as_reference(convex_upsample(flow, up_mask), convex_upsample_ref(flow, up_mask), judge)


# ------------------------------------------------------------------------------------------------
# Every autotune configuration that a GPU would use, run here through the interpreter: the tests above
# run the interpreter's single configuration (64 cells, 64 channels, 32 columns), so a bug that shows
# only at another block size (a block's edge, a partial last block, an accumulation over several
# feature blocks) would otherwise be seen on a GPU only.


def gpu_configs(module, factory) -> list:
    """`factory()`'s configurations as on a GPU. In the interpreter, one per set of meta-parameters:
    it drops num_warps (a program runs as whole numpy arrays, without warps), so configurations
    differing only in it compute the same there and one of them stands for all."""
    with mock.patch.object(module, "interpreting", return_value=False):
        configs = factory()
    if not interpreting():
        return configs
    distinct = {}
    for config in configs:
        distinct.setdefault(tuple(sorted(config.kwargs.items())), config)
    return list(distinct.values())


def config_id(config) -> str:
    names = [f"{name}={value}" for name, value in sorted(config.kwargs.items())]
    return ",".join(names if interpreting() else [*names, f"warps={config.num_warps}"])


def run_with_config(monkeypatch, autotuner, config, run):
    """`run()` with `autotuner` held to `config`: a single configuration is launched as it is, without
    benchmarking, through the real launcher (its arguments are the ones a GPU gets)."""
    monkeypatch.setattr(autotuner, "configs", [config])
    result = run()
    assert autotuner.best_config is config  # the launch did go through `config`
    return result


ONDEMAND_CONFIGS = gpu_configs(ondemand_module, ondemand_module._ondemand_configs)
LOOKUP_CONFIGS = gpu_configs(lookup_module, lookup_module._lookup_configs)
UPSAMPLE_CONFIGS = gpu_configs(upsample_module, upsample_module._upsample_configs)

# 2 images of 5 x 7 cells (70: a partial last block for 4, 8 and 16 cells, blocks spanning both
# images), 2 levels (5 x 7, 2 x 3): a third would be 1 x 1, where the references divide by
# (size - 1) = 0 and answer NaN.
CONFIG_GRID = (2, 5, 7)
CONFIG_LEVELS = 2

# Feature sizes: RAFT-small's 128, RAFT-large's 256 and 96, each several blocks of every BLOCK_DIM
# (16 to 64), so that a kernel keeping one block of channels only misses the others' share; 96 with
# BLOCK_DIM=64 is a full block and a half-masked one.
ONDEMAND_DIMS = (128, 256, 96)
if interpreting():
    # Interpreted, every configuration x dim x radius (36 calls) took 56 s of CPU time on this grid
    # (170 s on the loaded 2-core machine), most of it with BLOCK_CELLS=1. So one (dim, radius) per
    # configuration, in turn: the 6 configurations take each of the 6 pairs once (every dim twice,
    # every radius three times), dim 96 going to BLOCK_DIM=64. These 6 take 8 s.
    ONDEMAND_CASES = [(config, ONDEMAND_DIMS[i % 3], (3, 4)[i % 2]) for i, config in enumerate(ONDEMAND_CONFIGS)]
else:  # on a GPU every combination: there a case costs one compilation, not minutes of interpreting
    ONDEMAND_CASES = [(c, dim, radius) for c in ONDEMAND_CONFIGS for dim in ONDEMAND_DIMS for radius in (3, 4)]


def test_the_configuration_lists_are_the_gpu_ones():
    """The lists above are the GPU's (several), not the interpreter's single one, and every dim and
    radius is run; a full block and a masked one of channels at least once."""
    assert len(ONDEMAND_CONFIGS) > 1 and len(LOOKUP_CONFIGS) > 1 and len(UPSAMPLE_CONFIGS) > 1
    assert {(c.kwargs["BLOCK_CELLS"], c.kwargs["BLOCK_DIM"]) for c in ONDEMAND_CONFIGS} >= {(1, 64), (4, 16)}
    assert {dim for _, dim, _ in ONDEMAND_CASES} == set(ONDEMAND_DIMS)
    assert {radius for _, _, radius in ONDEMAND_CASES} == {3, 4}
    assert any(dim % c.kwargs["BLOCK_DIM"] for c, dim, _ in ONDEMAND_CASES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "config, dim, radius",
    [pytest.param(*case, id=f"{config_id(case[0])}-D{case[1]}-r{case[2]}") for case in ONDEMAND_CASES],
)
def test_corr_ondemand_every_gpu_configuration(config, dim, radius, device, monkeypatch):
    batch, height, width = CONFIG_GRID
    generator = torch.Generator().manual_seed(dim + radius)
    fmap1, fmap2 = (f.to(device) for f in features(batch, dim, height, width, generator))
    coords = make_coords(batch, height, width, generator).to(device)
    features1 = fmap1.permute(0, 2, 3, 1).contiguous()
    pyramid = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2, CONFIG_LEVELS)]
    judge = corr_ondemand_ref(features1.double(), [level.double() for level in pyramid], coords.double(), radius)
    kernel = run_with_config(
        monkeypatch,
        ondemand_module._corr_ondemand_kernel,
        config,
        lambda: corr_ondemand(features1, pyramid, coords, radius),
    )
    assert_as_exact_as_reference(kernel, corr_ondemand_ref(features1, pyramid, coords, radius), judge)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", LOOKUP_CONFIGS, ids=config_id)
@pytest.mark.parametrize("radius", [3, 4])
def test_corr_lookup_every_gpu_configuration(config, radius, device, monkeypatch):
    batch, height, width = CONFIG_GRID
    generator = torch.Generator().manual_seed(radius)
    fmap1, fmap2 = (f.to(device) for f in features(batch, 16, height, width, generator))
    pyramid = correlation_pyramid(all_pairs_correlation(fmap1, fmap2), CONFIG_LEVELS)
    coords = make_coords(batch, height, width, generator).to(device)
    judge = corr_lookup_ref([level.double() for level in pyramid], coords.double(), radius)
    kernel = run_with_config(
        monkeypatch, lookup_module._corr_lookup_kernel, config, lambda: corr_lookup(pyramid, coords, radius)
    )
    assert_as_exact_as_reference(kernel, corr_lookup_ref(pyramid, coords, radius), judge)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", UPSAMPLE_CONFIGS, ids=config_id)
def test_convex_upsample_every_gpu_configuration(config, device, monkeypatch):
    # 37 columns: several blocks of every BLOCK_W (8 to 32), the last one partial, so that the 3 x 3
    # neighbourhoods cross block edges.
    generator = torch.Generator().manual_seed(37)
    flow = (5 * torch.randn(2, 2, 3, 37, generator=generator)).to(device)
    up_mask = (3 * torch.randn(2, 576, 3, 37, generator=generator)).to(device)
    judge = convex_upsample_ref(flow.double(), up_mask.double())
    kernel = run_with_config(
        monkeypatch, upsample_module._convex_upsample_kernel, config, lambda: convex_upsample(flow, up_mask)
    )
    assert_as_exact_as_reference(kernel, convex_upsample_ref(flow, up_mask), judge)


# ------------------------------------------------------------------------------------------------
# Launchers refuse bad input with the shapes in the message.


@pytest.fixture(scope="module")
def lookup_inputs():
    generator = torch.Generator().manual_seed(0)
    fmap1, fmap2 = features(1, 8, 16, 20, generator)
    return correlation_pyramid(all_pairs_correlation(fmap1, fmap2), LEVELS), make_coords(1, 16, 20, generator)


def test_corr_lookup_errors(lookup_inputs):
    pyramid, coords = lookup_inputs
    with pytest.raises(ValueError, match="takes 1 to 4 pyramid levels, got 5"):
        corr_lookup(pyramid + pyramid[-1:], coords, 4)
    with pytest.raises(ValueError, match=r"coords must be \(B, 2, H, W\), got \(1, 3, 16, 20\)"):
        corr_lookup(pyramid, torch.zeros(1, 3, 16, 20), 4)
    with pytest.raises(ValueError, match="coords must be float32, got torch.float64"):
        corr_lookup(pyramid, coords.double(), 4)
    with pytest.raises(ValueError, match=r"level 0 has shape \(320, 1, 16, 20\), expected \(640, 1, 16, 20\)"):
        corr_lookup(pyramid, coords.repeat(2, 1, 1, 1), 4)
    with pytest.raises(ValueError, match="share one dtype"):
        corr_lookup([pyramid[0].half(), *pyramid[1:]], coords, 4)
    with pytest.raises(ValueError, match="level 0 must be contiguous"):
        corr_lookup([pyramid[0].transpose(2, 3).contiguous().transpose(2, 3), *pyramid[1:]], coords, 4)
    with pytest.raises(ValueError, match="radius must be a positive integer, got 0"):
        corr_lookup(pyramid, coords, 0)
    with pytest.raises(ValueError, match="different devices"):
        corr_lookup(pyramid, coords.to("meta"), 4)


def test_corr_ondemand_errors():
    fmap1 = torch.zeros(1, 16, 20, 8)
    pyramid = [torch.zeros(1, 16 >> level, 20 >> level, 8) for level in range(LEVELS)]
    coords = torch.zeros(1, 2, 16, 20)
    with pytest.raises(ValueError, match=r"fmap1 must be \(B, H, W, D\) channels-last"):
        corr_ondemand(fmap1[0], pyramid, coords, 4)
    with pytest.raises(ValueError, match=r"coords has shape \(1, 2, 20, 16\), expected \(1, 2, 16, 20\)"):
        corr_ondemand(fmap1, pyramid, coords.transpose(2, 3), 4)
    with pytest.raises(ValueError, match=r"fmap2 level 2 has shape \(1, 4, 5, 4\), expected \(1, 4, 5, 8\)"):
        corr_ondemand(fmap1, [*pyramid[:2], torch.zeros(1, 4, 5, 4), pyramid[3]], coords, 4)
    with pytest.raises(ValueError, match="must be contiguous"):
        corr_ondemand(fmap1.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1), pyramid, coords, 4)
    with pytest.raises(ValueError, match="share one dtype"):
        corr_ondemand(fmap1.half(), pyramid, coords, 4)


def test_convex_upsample_errors():
    flow = torch.zeros(1, 2, 4, 5)
    with pytest.raises(ValueError, match=r"up_mask has shape \(1, 575, 4, 5\), expected \(1, 576, 4, 5\)"):
        convex_upsample(flow, torch.zeros(1, 575, 4, 5))
    with pytest.raises(ValueError, match=r"flow must be \(B, 2, H, W\)"):
        convex_upsample(flow[:, :1], torch.zeros(1, 576, 4, 5))
    with pytest.raises(ValueError, match="flow must be float32"):
        convex_upsample(flow.half(), torch.zeros(1, 576, 4, 5))
    with pytest.raises(ValueError, match="up_mask must be one of"):
        convex_upsample(flow, torch.zeros(1, 576, 4, 5, dtype=torch.float64))


def test_cpu_tensors_without_the_interpreter_are_refused():
    code = (
        "import torch\n"
        "from raft_engine.kernels.convex_upsample import convex_upsample\n"
        "from raft_engine import FlowEngine, RAFT, RAFTConfig\n"
        "for call in (lambda: convex_upsample(torch.zeros(1, 2, 2, 2), torch.zeros(1, 576, 2, 2)),\n"
        "             lambda: FlowEngine(RAFT(RAFTConfig.small()), device='cpu', backend='triton')):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as error:\n"
        "        print(error)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert "TRITON_INTERPRET=1" in first and "convex_upsample" in first
    assert "backend='triton' on the CPU" in second


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_autotune_configuration_is_correct():
    """Autotuning picks one configuration per shape; each of them must compute the same function."""
    import raft_engine.kernels.convex_upsample as upsample_module
    import raft_engine.kernels.corr_lookup as lookup_module
    import raft_engine.kernels.corr_ondemand as ondemand_module

    generator = torch.Generator().manual_seed(11)
    fmap1, fmap2 = (f.cuda() for f in features(2, 64, 17, 23, generator))
    coords = make_coords(2, 17, 23, generator).cuda()
    pyramid = correlation_pyramid(all_pairs_correlation(fmap1, fmap2), LEVELS)
    lookup_judge = corr_lookup_ref([level.double() for level in pyramid], coords.double(), 4)
    features1 = fmap1.permute(0, 2, 3, 1).contiguous()
    pooled = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2, LEVELS)]
    flow = 5 * torch.randn(2, 2, 17, 23, generator=generator).cuda()
    up_mask = 3 * torch.randn(2, 576, 17, 23, generator=generator).cuda()
    cases = [
        (
            lookup_module._corr_lookup_kernel,
            lambda: corr_lookup(pyramid, coords, 4),
            lookup_judge,
            corr_lookup_ref(pyramid, coords, 4),
        ),
        (
            ondemand_module._corr_ondemand_kernel,
            lambda: corr_ondemand(features1, pooled, coords, 4),
            lookup_judge,
            corr_ondemand_ref(features1, pooled, coords, 4),
        ),
        (
            upsample_module._convex_upsample_kernel,
            lambda: convex_upsample(flow, up_mask),
            convex_upsample_ref(flow.double(), up_mask.double()),
            convex_upsample_ref(flow, up_mask),
        ),
    ]
    for autotuner, run, judge, reference in cases:
        configs = list(autotuner.configs)
        try:
            for config in configs:
                autotuner.configs = [config]  # a single configuration is launched without benchmarking
                autotuner.cache.clear()
                assert_as_exact_as_reference(run(), reference, judge)
        finally:
            autotuner.configs = configs
            autotuner.cache.clear()
