"""One error family, so the CLI can turn every user-fixable problem into one sentence.

Each error carries a ``hint``: what the user can do about it. The library raises these and
never prints or exits; the CLI decides the exit code from the class:

* :class:`UsageError` (and subclasses): the request itself cannot work (unknown model, layer
  out of range, weights that do not fit). Detected before any image is processed; exit 2.
* :class:`ImageError`: one input image cannot be used. A batch records it and goes on; exit 1.
* :class:`OutputError`: the output folder stopped taking files (disk full, read-only) during a
  run; the run stops cleanly; exit 1.
"""

from __future__ import annotations


class FeatvizError(Exception):
    """Base class: a problem the user can fix, with a message and an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(FeatvizError):
    """The options cannot work together or name something that does not exist."""


class ModelError(UsageError):
    """The model cannot be built: unknown name, unimportable factory, unreadable file."""


class WeightsError(UsageError):
    """The weights cannot be found, downloaded or loaded into the architecture."""


class LayerError(UsageError):
    """A layer index is out of range, a path names no module, or the module's output is no map."""


class ImageError(FeatvizError):
    """One input image cannot be decoded into an RGB picture."""


class OutputError(FeatvizError):
    """The output folder cannot take more files (full, read-only): the run stops, exit 1.

    Unlike an :class:`ImageError`, going on cannot help; the files already written are whole and
    ``--skip-existing`` resumes once there is room."""
