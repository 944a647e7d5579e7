"""What every writer of the package shares: atomic writes (a temporary name beside the target,
then a rename), so that an interrupted write never leaves a truncated file under the final name."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | os.PathLike, payload: bytes) -> None:
    """Write `payload` to a temporary file beside `path`, then rename it to `path` (atomic on POSIX and
    Windows): an error, Ctrl-C or a full disk mid-write leaves the previous file or none, never a
    truncated one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(payload)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
