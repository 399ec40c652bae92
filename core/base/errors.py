"""User-facing errors: each message says what went wrong and what to do about it.

Pages show ``str(error)`` as a one-line message; the CLI prints it and exits with status 2.
Anything that is not a ``FlowerProbeError`` is a bug and is allowed to surface as a traceback.
"""


class FlowerProbeError(Exception):
    """Base class for errors the user can act on."""


class MissingFileError(FlowerProbeError):
    """A dataset or weights file is absent and could not be downloaded (offline, say)."""


class BadImageError(FlowerProbeError):
    """A file is not an image Flower Probe can read, or is too large to decode safely."""


class UnsafePathError(FlowerProbeError):
    """A path escapes the folder it must stay in (data root, archive destination)."""


class DatasetError(FlowerProbeError):
    """A dataset is malformed: too few classes, an empty class, unknown name."""


class WorkspaceWriteError(FlowerProbeError):
    """The workspace could not be written (disk full, read-only); nothing saved earlier was touched."""


class CancelledError(FlowerProbeError):
    """A job was cancelled by the user; raised from inside a progress callback."""
