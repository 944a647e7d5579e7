"""What every writer of the package shares: atomic writes (a temporary name beside the target, then a
rename), so that an interrupted write never leaves a truncated file under the final name, and a file
system error that names the path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from raft_engine.errors import PathError


def write_atomically(path: str | os.PathLike, payload: bytes | str | Callable[[Path], object]) -> None:
    """Write `payload` to a temporary file beside `path`, then rename it to `path` (atomic on POSIX and
    Windows): an error, Ctrl-C or a full disk mid-write leaves the previous file or none, never a
    truncated one.

    payload: bytes, text (UTF-8), or a function that writes the file it is given (e.g.
        `lambda tmp: torch.save(obj, tmp)`); the temporary name does not end in the target's suffix,
        so such a function must not guess a format from it.
    A file system error (a missing folder, no permission, a full disk) raises `PathError` naming `path`.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if callable(payload):
            payload(partial)
        else:
            data = payload.encode() if isinstance(payload, str) else payload
            with open(partial, "wb") as f:
                f.write(data)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise PathError(f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder `path` and its missing parents -> the path; `PathError` naming it where that
    cannot be done (a file in the way, no permission)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise PathError(f"{folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PathError(f"cannot create the folder {folder}: {error.strerror or error}") from error
    return folder
