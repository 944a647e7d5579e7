from __future__ import annotations

import os
import warnings

import torch

# Without a GPU the Triton kernels run through Triton's interpreter, which must be chosen before
# triton is imported (raft_engine imports it).
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from synthetic import DATA, synthetic_state_dict  # noqa: E402

from raft_engine import RAFT, RAFTConfig  # noqa: E402
from raft_engine.weights import load_model  # noqa: E402

# The exactness tests compare float32 with float32 references. PyTorch runs float32 convolutions on
# Ampere and later GPUs in TF32 (10-bit mantissas) unless told otherwise; on a GPU machine the tests
# ask for IEEE float32. (The Triton kernels never use TF32: they have no tl.dot.) The legacy flag, not
# torch.backends.cudnn.conv.fp32_precision: once the new API is used, torch.export (torch 2.13) fails
# reading the legacy one.
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    np.random.seed(0)
    return 0


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs), for the batch and server tests, shut down at the end."""
    ray = pytest.importorskip("ray", reason="Ray (the [ray] extra) is not installed")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "raft_reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _load_quietly(name: str) -> RAFT:
    with warnings.catch_warnings():
        # The synthetic official-large weights give the duplicate shortcut norms different values.
        warnings.filterwarnings("ignore", message=".*duplicate shortcut-norm")
        return load_model(synthetic_state_dict(name))


@pytest.fixture(scope="session")
def official_small() -> RAFT:
    return _load_quietly("official_small")


@pytest.fixture(scope="session")
def official_large() -> RAFT:
    return _load_quietly("official_large")


@pytest.fixture(scope="session")
def random_small() -> RAFT:
    """RAFT-small with PyTorch's default initialisation: cheap, for API tests."""
    torch.manual_seed(1)
    return RAFT(RAFTConfig.small()).eval()


def rel_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in 0..255."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()
