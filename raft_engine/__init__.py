"""raft-engine: fast, exact inference for RAFT optical flow."""

from importlib.metadata import PackageNotFoundError, version

from raft_engine.errors import RaftEngineError
from raft_engine.model.config import RAFTConfig
from raft_engine.model.consistency import forward_backward_check
from raft_engine.model.raft import RAFT, BidirectionalResult, FlowResult, RAFTOutput
from raft_engine.runtime.engine import FlowEngine
from raft_engine.runtime.estimator import EstimatorSettings, FlowEstimator
from raft_engine.runtime.options import EngineOptions
from raft_engine.weights import PRESETS, load_model

try:
    __version__ = version("raft-engine")  # the one place the version is written is pyproject.toml
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "PRESETS",
    "BidirectionalResult",
    "EngineOptions",
    "EstimatorSettings",
    "FlowEngine",
    "FlowEstimator",
    "FlowResult",
    "RAFT",
    "RAFTConfig",
    "RAFTOutput",
    "RaftEngineError",
    "forward_backward_check",
    "load_model",
    "__version__",
]
