"""raft-engine: fast, exact inference for RAFT optical flow."""

from raft_engine.config import RAFTConfig
from raft_engine.engine import FlowEngine, FlowResult
from raft_engine.model import RAFT, RAFTOutput
from raft_engine.weights import PRESETS, load_model

__version__ = "0.1.0"

__all__ = ["PRESETS", "FlowEngine", "FlowResult", "RAFT", "RAFTConfig", "RAFTOutput", "load_model", "__version__"]
