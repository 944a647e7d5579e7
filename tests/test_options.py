"""EngineOptions: the runtime settings as one frozen, checked value that FlowEngine takes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from raft_engine import EngineOptions, FlowEngine, FlowEstimator, load_model
from raft_engine.errors import InputError, InputTypeError


def test_defaults_are_the_engines():
    options = EngineOptions()
    assert options.to_dict() == {
        "device": None,
        "dtype": "fp32",
        "padding": "sintel",
        "backend": "auto",
        "corr": "auto",
        "corr_dtype": "fp32",
        "corr_budget": 2 * 2**30,
        "compile": False,
        "cuda_graphs": None,
        "max_compiled_shapes": 8,
        "channels_last": False,
    }


def test_names_are_normalised_and_the_value_is_plain_data():
    options = EngineOptions(device=torch.device("cpu"), dtype=torch.bfloat16, corr_dtype="float16")
    assert (options.device, options.dtype, options.corr_dtype) == ("cpu", "bf16", "fp16")
    assert pickle.loads(pickle.dumps(options)) == options
    assert EngineOptions(dtype="bfloat16") == EngineOptions(dtype="bf16")
    with pytest.raises(AttributeError):
        options.dtype = "fp32"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"dtype": "fp64"}, InputError, "unsupported dtype 'fp64'"),
        ({"corr_dtype": torch.float64}, InputError, "unsupported dtype torch.float64"),
        ({"padding": "zeros"}, InputError, "unknown padding 'zeros'"),
        ({"backend": "cuda"}, InputError, "unknown backend 'cuda'"),
        ({"corr": "dense"}, InputError, "unknown corr 'dense'"),
        ({"corr_budget": 0}, InputError, "corr_budget must be a positive number of bytes"),
        ({"corr_budget": True}, InputError, "corr_budget must be a positive number of bytes"),
        ({"max_compiled_shapes": 0}, InputError, "max_compiled_shapes must be >= 1"),
        ({"max_compiled_shapes": 2.0}, InputTypeError, "max_compiled_shapes must be an integer"),
        ({"compile": "yes"}, InputTypeError, "compile must be True or False"),
        ({"channels_last": 1}, InputTypeError, "channels_last must be True or False"),
        ({"cuda_graphs": True}, InputError, "cuda_graphs=True needs compile=True"),
        ({"device": "gpu"}, InputError, "unknown device 'gpu'"),
        ({"device": 0}, InputTypeError, "device must be a name"),
    ],
)
def test_each_setting_is_checked_and_named(settings, error, message):
    with pytest.raises(error, match=message):
        EngineOptions(**settings)


def test_a_device_that_is_not_here_is_refused_by_the_engine_not_the_options():
    options = EngineOptions(device="cuda:3")  # a driver may describe its GPU workers' engines
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            FlowEngine(load_model("builtin"), options)


def test_replace_checks_again_and_names_unknown_settings():
    options = EngineOptions(device="cpu")
    assert options.replace(dtype="bf16") == EngineOptions(device="cpu", dtype="bf16")
    with pytest.raises(InputError, match="unknown corr"):
        options.replace(corr="nope")
    with pytest.raises(InputTypeError, match="unknown engine option.*iters"):
        options.replace(iters=3)


def test_the_engine_takes_options_and_keywords_alike():
    model = load_model("builtin")
    rng = np.random.default_rng(0)
    image1 = rng.integers(0, 256, (128, 136, 3), dtype=np.uint8)
    image2 = np.roll(image1, 2, axis=1)
    options = EngineOptions(device="cpu", padding="kitti", corr="ondemand")
    by_options = FlowEngine(model, options)
    by_keywords = FlowEngine(model, device="cpu", padding="kitti", corr="ondemand")
    overridden = FlowEngine(model, options, corr="volume")
    assert by_options.options == by_keywords.options == options
    assert overridden.options == options.replace(corr="volume") and overridden.corr == "volume"
    flows = [engine.estimate(image1, image2, iters=2).flow for engine in (by_options, by_keywords)]
    torch.testing.assert_close(flows[0], flows[1], rtol=0, atol=0)
    with pytest.raises(InputTypeError, match="options must be an EngineOptions, got str"):
        FlowEngine(model, "cpu")  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="unknown engine option"):
        FlowEngine(model, devices="cpu")


def test_the_engine_is_a_flow_estimator():
    engine = FlowEngine(load_model("builtin"), device="cpu")
    assert isinstance(engine, FlowEstimator)
    settings = engine.settings
    assert (settings.variant, settings.backend, settings.dtype, settings.device) == ("small", "torch", "fp32", "cpu")
    assert settings.takes_flow_init and not settings.runs_own_iters and settings.iters is None
    assert engine.describe() == "cpu, torch, corr auto"
    assert engine.describe(128, 136) == "cpu, torch, corr volume"
    assert not isinstance(object(), FlowEstimator)
