"""The errors raft-engine raises on purpose, all under one root, `RaftEngineError`.

Each one is a mistake in what was asked (an image, an option, a file that is not what it should be) or a
resource that is missing (a file, a package, a GPU, a provider). Anything else that escapes raft-engine
is a bug: the command line prints these in one line and shows a traceback for everything else.

Where callers catch a built-in exception today, the class keeps it as a second base: an `InputError` is a
`ValueError`, a `PathError` an `OSError`, a `MissingDependency` a `ModuleNotFoundError`. A leaf module: it
imports nothing.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "DownloadError",
    "ExportError",
    "FileFormatError",
    "ImageTooLarge",
    "InputError",
    "InputTypeError",
    "MissingDependency",
    "MissingFileError",
    "NotAvailable",
    "PathError",
    "ProviderError",
    "RaftEngineError",
    "UsageError",
    "WeightsError",
]


class RaftEngineError(Exception):
    """The root of raft-engine's own errors: a mistake in what was asked, or a missing resource."""


class InputError(RaftEngineError, ValueError):
    """A value raft-engine cannot take: an image (shape, range, size), an option, a count."""


class InputTypeError(RaftEngineError, TypeError):
    """An argument of a type raft-engine does not take (a list where an image was expected, ...)."""


class FileFormatError(InputError):
    """A file whose content is not what it should be: a corrupt or foreign image, flow file, video, graph."""


class ImageTooLarge(InputError):
    """An image of more pixels than allowed, refused from its header before it is decoded."""


class WeightsError(FileFormatError):
    """A checkpoint or state dict that is not one of the RAFT layouts raft-engine loads."""


class PathError(RaftEngineError, OSError):
    """A path that cannot be read or written: missing, a folder where a file is expected, not writable."""


class MissingFileError(PathError, FileNotFoundError):
    """A file or folder that should exist and does not."""


class MissingDependency(RaftEngineError, ModuleNotFoundError):
    """An optional package that this use needs is not installed; the message says how to install it."""


class DownloadError(RaftEngineError, OSError):
    """Published weights could not be downloaded (no network, a changed address, a checksum mismatch)."""


class ProviderError(RaftEngineError, OSError):
    """An ONNX Runtime execution provider that was asked for did not load."""


class ExportError(RaftEngineError, RuntimeError):
    """The exported graph does not do what was asked (wrong shapes, custom operators, numbers off)."""


class ClusterError(RaftEngineError, ConnectionError):
    """A Ray cluster that cannot be reached or joined."""


class NotAvailable(RaftEngineError):
    """What was asked cannot run on this machine (no GPU, a missing package or provider): a benchmark
    configuration or selftest check reports it as unavailable or skipped, not as a failure."""


class UsageError(RaftEngineError):
    """A mistake on the command line: options that do not go together, a missing input."""
