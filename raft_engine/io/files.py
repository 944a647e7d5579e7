"""What every writer of the package shares: atomic writes (a temporary name beside the target, then a
rename), so that an interrupted write never leaves a truncated file under the final name, and a file
system error that names the path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from raft_engine.errors import InputError, MissingFileError, PathError


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


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of a file; `MissingFileError` or `PathError` naming it (and what it should be) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such {what}: {path}" if not path.is_dir() else f"{path} is a folder, not a {what}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise PathError(f"cannot read {path}: {error.strerror or error}") from error


def check_output_file(path: str | os.PathLike, suffixes: Iterable[str] | None = None, what: str = "output") -> Path:
    """Before any work, whether `path` can take a file: its suffix is one of `suffixes` (None: any), it is
    not a folder, and its folder exists (missing parents are created) and takes a new file -> the path.
    `InputError` for a suffix, `PathError` for the place, each naming the path."""
    path = Path(path)
    if suffixes is not None:
        allowed = sorted({suffix.lower() for suffix in suffixes})
        if path.suffix.lower() not in allowed:
            raise InputError(
                f"{what} {path}: expected a file ending in {', '.join(allowed)}, got {path.suffix or 'no suffix'}"
            )
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder; give the file to write")
    check_output_folder(path.parent, what=f"the folder of {what} {path}")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Before any work, whether `path` is a folder that takes new files (created, with missing parents,
    where it does not exist) -> the path; `PathError` naming it otherwise."""
    folder = make_folder(path) if not Path(path).is_dir() else Path(path)
    try:
        # A real file, not os.access: root passes every permission check, yet /proc or a read-only mount
        # still refuses it.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".raft-engine-", suffix=".probe"):
            pass
    except OSError as error:
        raise PathError(f"{what} {folder} does not take new files: {error.strerror or error}") from error
    return folder


def check_folder_can_be_made(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Before any work, whether the folder `path` exists and takes new files, or could be created: its
    nearest existing ancestor is a folder that takes new files. Nothing is created -> the path."""
    folder = Path(path)
    if folder.is_dir():
        return check_output_folder(folder, what)
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if folder.exists() or not ancestor.is_dir():
        raise PathError(f"{what} {folder} cannot be a folder: {folder if folder.exists() else ancestor} is a file")
    check_output_folder(ancestor, what=f"{what} {folder}: the folder")
    return folder
