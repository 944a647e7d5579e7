"""Whether Triton is installed, and whether it runs kernels through its CPU interpreter. A leaf module:
the kernels, the input checks and the runtime all take the switch from here."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1 when it is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """Whether the triton package imports here (it installs on Linux only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
