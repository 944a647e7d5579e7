"""FlowEngine.sequence: every frame encoded once, the flows of `estimate`, warm start carried forward,
streaming; and the generated sequences of raft_engine.scenes that test and measure it."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_error
from PIL import Image

from raft_engine import FlowEngine, FlowResult
from raft_engine.model.warm_start import forward_interpolate
from raft_engine.scenes import SceneSequence, generate_pair, generate_sequence

# The bound: each flow equals `estimate` to float32 rounding. Measured: up to 5e-7 (RAFT-small,
# pairs batched), 0 (pair by pair, warm start).
EXACT = 1e-5
HEIGHT, WIDTH = 123, 157  # odd: padded to 128x160, so padding and cropping are exercised


@pytest.fixture(scope="module")
def clip() -> SceneSequence:
    return generate_sequence(4, frames=4, height=HEIGHT, width=WIDTH)


def _pairwise(engine: FlowEngine, frames, iters: int, warm_start: bool = False) -> list[FlowResult]:
    """What sequence must equal: estimate on each pair, warm start through forward_interpolate."""
    results: list[FlowResult] = []
    for image1, image2 in itertools.pairwise(frames):
        flow_init = forward_interpolate(results[-1].flow_low) if warm_start and results else None
        results.append(engine.estimate(image1, image2, iters=iters, flow_init=flow_init))
    return results


def _assert_equal_flows(results: list[FlowResult], expected: list[FlowResult]) -> None:
    assert len(results) == len(expected)
    for k, (result, reference) in enumerate(zip(results, expected, strict=True)):
        assert result.flow.shape == reference.flow.shape and result.flow_low.shape == reference.flow_low.shape
        assert rel_error(result.flow, reference.flow) <= EXACT, f"pair {k}"
        assert rel_error(result.flow_low, reference.flow_low) <= EXACT, f"pair {k}"


# 3 pairs in batches of 2: one full batch and one partial; batch_size 8: one batch larger than the clip.
# Triton runs through its interpreter, about 1 s per iteration of 3 pairs here: 1 iteration.
@pytest.mark.parametrize(
    "backend, corr, padding, batch_size, iters",
    [
        ("torch", "volume", "sintel", 2, 2),
        ("torch", "ondemand", "kitti", 8, 2),
        ("triton", "volume", "kitti", 2, 1),
        ("triton", "ondemand", "sintel", 2, 1),
    ],
)
def test_cold_sequence_equals_estimate(official_small, clip, backend, corr, padding, batch_size, iters):
    engine = FlowEngine(official_small, device="cpu", backend=backend, corr=corr, padding=padding)
    results = list(engine.sequence(clip.frames, iters=iters, batch_size=batch_size))
    _assert_equal_flows(results, _pairwise(engine, clip.frames, iters=iters))
    assert all(r.flow.shape == (1, 2, HEIGHT, WIDTH) for r in results)


def test_large_model_sequence_equals_estimate(official_large, clip):
    """RAFT-large: convex upsampling, batch norm in the context encoder, 256-channel features."""
    engine = FlowEngine(official_large, device="cpu", backend="torch")
    _assert_equal_flows(list(engine.sequence(clip.frames, iters=2, batch_size=2)), _pairwise(engine, clip.frames, 2))


@pytest.mark.parametrize("backend, batch_size", [("torch", 2), ("triton", 3)])
def test_warm_start_carries_the_previous_flow_forward(official_small, clip, backend, batch_size):
    engine = FlowEngine(official_small, device="cpu", backend=backend)
    results = list(engine.sequence(clip.frames, iters=2, warm_start=True, batch_size=batch_size))
    _assert_equal_flows(results, _pairwise(engine, clip.frames, iters=2, warm_start=True))
    # The test has power: a sequence run cold, or warm-started with the previous flow_low as it is (on
    # the wrong grid), differs from it by far more than the bound.
    cold = _pairwise(engine, clip.frames, iters=2)
    unwarped = engine.estimate(clip.frames[2], clip.frames[3], iters=2, flow_init=results[1].flow_low)
    assert rel_error(results[2].flow, cold[2].flow) > 100 * EXACT
    assert rel_error(results[2].flow, unwarped.flow) > 100 * EXACT
    torch.testing.assert_close(results[0].flow, cold[0].flow, rtol=1e-5, atol=1e-5)  # the first pair starts cold


@pytest.mark.parametrize("warm_start", [False, True])
def test_each_frame_goes_through_the_feature_encoder_once(random_small, warm_start):
    engine = FlowEngine(random_small, device="cpu")
    encoded = []
    hook = engine.model.fnet.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
    frames = generate_sequence(0, frames=6, height=128, width=128).frames
    try:
        results = list(engine.sequence(frames, iters=1, warm_start=warm_start, batch_size=2))
    finally:
        hook.remove()
    assert len(results) == 5
    assert sum(encoded) == 6, encoded  # estimate pair by pair would encode 10
    assert encoded == [3, 2, 1]  # frames 0-2, 3-4, 5: a batch of new frames each time


def test_streams_frames_as_it_needs_them(random_small):
    """Frames are pulled lazily: before the flow of pair k (frames k, k+1) is yielded, at most
    batch_size more frames have been read; an endless source works."""
    engine = FlowEngine(random_small, device="cpu")
    frame = generate_pair(0, 128, 128).image1
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            pulled += 1
            # Endless, but a sequence reading far ahead fails here rather than filling the memory.
            assert pulled <= 20, "sequence read 20 frames ahead"
            yield np.roll(frame, pulled, axis=1)

    results = engine.sequence(endless(), iters=1, batch_size=3)
    assert pulled == 0  # nothing is read before the first result is asked for
    for k, result in enumerate(itertools.islice(results, 7)):
        assert isinstance(result, FlowResult) and result.flow.shape == (1, 2, 128, 128)
        assert k + 2 <= pulled <= k + 2 + 3 - 1, (k, pulled)
    assert pulled == 10  # batches of frames 0-3, 3-6, 6-9


def test_input_forms_agree(random_small):
    engine = FlowEngine(random_small, device="cpu")
    frames = generate_sequence(1, frames=3, height=128, width=136).frames
    expected = [r.flow for r in engine.sequence(list(frames), iters=2)]
    tensors = [torch.from_numpy(f).permute(2, 0, 1) for f in frames]
    forms = {
        "generator": (f for f in frames),
        "tuple": frames,
        "PIL": [Image.fromarray(f) for f in frames],
        "torch uint8 CHW": tensors,
        "torch float BCHW": [t[None].float() for t in tensors],
        "numpy (T, H, W, 3)": np.stack(frames),
        "torch (T, 3, H, W)": torch.stack(tensors),
    }
    for name, form in forms.items():
        flows = [r.flow for r in engine.sequence(form, iters=2)]
        assert len(flows) == 2, name
        for flow, reference in zip(flows, expected, strict=True):
            torch.testing.assert_close(flow, reference, rtol=1e-5, atol=1e-5, msg=name)


def test_bad_arguments_fail_at_the_call(random_small):
    """Before any frame is read: the call, not the first next(), raises."""
    engine = FlowEngine(random_small, device="cpu")
    frames = generate_sequence(0, frames=2, height=128, width=128).frames
    with pytest.raises(ValueError, match="iters must be >= 1"):
        engine.sequence(frames, iters=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        engine.sequence(frames, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        engine.sequence(frames, batch_size=2.5)
    with pytest.raises(TypeError, match="warm_start must be True or False"):
        engine.sequence(frames, warm_start="yes")
    with pytest.raises(TypeError, match="frames must be an iterable of images, got int"):
        engine.sequence(5)
    with pytest.raises(ValueError, match=r"\(T, H, W, C\).*got shape \(128, 128, 3\)"):
        engine.sequence(frames[0])  # one image is not a sequence (iterating it would give its rows)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_frames(random_small, count):
    engine = FlowEngine(random_small, device="cpu")
    frames = generate_sequence(0, frames=2, height=128, width=128).frames[:count]
    with pytest.raises(ValueError, match=f"a sequence needs at least 2 frames, got {count}"):
        list(engine.sequence(frames))


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_frame_of_another_size_fails_after_the_pairs_before_it(random_small, warm_start):
    engine = FlowEngine(random_small, device="cpu")
    frames = list(generate_sequence(0, frames=4, height=128, width=128).frames)
    frames.append(np.zeros((128, 136, 3), np.uint8))
    results = []
    with pytest.raises(ValueError, match=r"frame 4 is 128x136 \(HxW\), but frame 0 is 128x128"):
        # batch_size 8: the pending pairs 0-3 are computed and yielded before the error is raised.
        for result in engine.sequence(frames, iters=1, warm_start=warm_start, batch_size=8):
            results.append(result)
    _assert_equal_flows(results, _pairwise(engine, frames[:4], iters=1, warm_start=warm_start))


def test_a_batch_or_a_failing_source_is_one_clear_error(random_small):
    engine = FlowEngine(random_small, device="cpu")
    frames = generate_sequence(0, frames=3, height=128, width=128).frames
    with pytest.raises(ValueError, match="frame 1 is a batch of 2 images"):
        list(engine.sequence([frames[0], np.stack(frames[1:])]))
    with pytest.raises(ValueError, match="frame 2: expected a numpy array"):
        list(engine.sequence([frames[0], frames[1], np.zeros(5, np.uint8)]))

    def failing():
        yield from frames
        raise OSError("the camera went away")

    results = []
    with pytest.raises(OSError, match="the camera went away"):
        for result in engine.sequence(failing(), iters=1):
            results.append(result)
    assert len(results) == 2  # both pairs before the failure


# torch.compile on the CPU compiles one graph for about 20-60 s (measured 21 s on 2 shared cores):
# one tiny shape (a single batch of 2 pairs at 128x128) and 2 iterations.
def test_compiled_sequence_equals_estimate(random_small):
    frames = generate_sequence(2, frames=3, height=128, width=128).frames
    fast = FlowEngine(random_small, device="cpu", compile=True)
    start = time.perf_counter()
    results = list(fast.sequence(frames, iters=2, batch_size=2))
    print(f"compiled sequence: {time.perf_counter() - start:.1f} s")
    assert fast.compiled_sequence is not None and fast.compiled_sequence.shapes == [("volume", 2, 128, 128, 2, False)]
    _assert_equal_flows(results, _pairwise(FlowEngine(random_small, device="cpu"), frames, iters=2))


# ------------------------------------------------------------------------------------------------
# Generated sequences


def test_generated_sequences_are_deterministic_and_prefix_stable():
    a, b = generate_sequence(5, frames=4, height=64, width=80), generate_sequence(5, frames=4, height=64, width=80)
    assert len(a.frames) == 4 and len(a.flows) == 3
    assert a.frames[0].shape == (64, 80, 3) and a.frames[0].dtype == np.uint8
    assert a.flows[0].shape == (64, 80, 2) and a.flows[0].dtype == np.float32
    for x, y in zip(a.frames + a.flows, b.frames + b.flows, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.frames[0], generate_sequence(6, frames=4, height=64, width=80).frames[0])
    # The first frames of a longer clip are the shorter clip: a clip's length changes none of its motion.
    longer = generate_sequence(5, frames=6, height=64, width=80)
    for x, y in zip(a.frames + a.flows, longer.frames[:4] + longer.flows[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    pair = a.pair(1)
    assert pair.image1 is a.frames[1] and pair.image2 is a.frames[2] and pair.flow is a.flows[1]


def _backward_warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image sampled at p + flow(p) -> (H, W, C) float32, and where p + flow(p) lies inside the image."""
    height, width = flow.shape[:2]
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([(xs + flow[..., 0]) / (width - 1) * 2 - 1, (ys + flow[..., 1]) / (height - 1) * 2 - 1], -1)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    warped = F.grid_sample(tensor, torch.from_numpy(grid)[None].float(), align_corners=True)
    return warped[0].permute(1, 2, 0).numpy(), (np.abs(grid) <= 1).all(axis=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_flow_maps_its_frame_onto_the_next(seed):
    """Frame t + 1 sampled at p + flow_t(p) reproduces frame t but for occlusions and interpolation,
    as for generated pairs (tests/test_scenes.py)."""
    clip = generate_sequence(seed, frames=4, height=96, width=128, max_displacement=12, photometric=False)
    for t, flow in enumerate(clip.flows):
        warped, inside = _backward_warp(clip.frames[t + 1], flow)
        error = np.abs(warped - clip.frames[t].astype(np.float32)).mean(axis=2)[inside]
        moving = np.linalg.norm(flow, axis=2)[inside] > 2
        unwarped = np.abs(clip.frames[t + 1].astype(np.float32) - clip.frames[t]).mean(axis=2)[inside]
        assert moving.mean() > 0.2, t  # the test has motion to check
        assert np.median(error[moving]) < 0.2 * np.median(unwarped[moving]), t
        assert np.mean(error < 10) > 0.8, t
    photometric = generate_sequence(seed, frames=4, height=96, width=128, max_displacement=12)
    for flow, same in zip(clip.flows, photometric.flows, strict=True):
        np.testing.assert_array_equal(flow, same)


@pytest.mark.parametrize("seed", [3, 4])
def test_motion_is_smooth_along_the_sequence(seed):
    """A point keeps nearly its velocity from one pair to the next (what warm start relies on):
    flow_{t+1}(p + flow_t(p)) stays close to flow_t(p) where nothing occludes it."""
    clip = generate_sequence(seed, frames=5, height=96, width=128, max_displacement=10, photometric=False)
    for t in range(len(clip.flows) - 1):
        following, inside = _backward_warp(clip.flows[t + 1], clip.flows[t])
        change = np.linalg.norm(following - clip.flows[t], axis=2)[inside]
        speed = np.linalg.norm(clip.flows[t], axis=2)[inside]
        # Measured: median change 0.02 and 0.12 px (the background's acceleration) against a median
        # speed of 3.0 and 3.8 px; accelerations 20 times larger give 0.38 and 2.4 px.
        assert np.median(change) < 0.05 * np.median(speed), t
        assert np.median(speed) > 1, t


def test_displacements_follow_max_displacement():
    """The default is 5% of the width per frame: up to 26 px at 512 wide; the objects' translation is
    bounded by it plus what rotation, scaling and acceleration add near their edges."""
    largest = [
        max(np.linalg.norm(f, axis=2).max() for f in generate_sequence(seed, 3, 96, 256, photometric=False).flows)
        for seed in range(4)
    ]
    assert max(largest) > 6  # 12.8 px objects' speed at 256 wide
    assert max(largest) < 40


def test_bad_sequence_requests():
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        generate_sequence(0, frames=1)
    with pytest.raises(ValueError, match="at least 16x16"):
        generate_sequence(0, frames=3, height=8, width=64)
