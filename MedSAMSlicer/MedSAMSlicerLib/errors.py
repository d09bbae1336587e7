"""Errors a user can act on.

Every failure that comes from the user's input (a file, a box, a checkpoint, an option) raises a subclass of
:class:`MedSAMError` whose message is one line saying what is wrong and what to do.  The CLI prints that line and
exits non-zero; the Slicer panel shows it in a message box.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first informative line of a library's error (ITK prefixes its own location lines), for one-line messages."""
    text = str(error).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("sitk::ERROR", "itk::ERROR")):
            return line[:limit]
    return text.splitlines()[0][:limit] if text else type(error).__name__


class MedSAMError(Exception):
    """Base class: a problem the user can fix; ``str(error)`` is the whole message."""

    exit_code = 2


class InputImageError(MedSAMError):
    """The image or label file cannot be used (missing, unreadable, wrong dimension, NaNs)."""


class BoxError(MedSAMError):
    """The box prompt is empty, inverted or outside the slice."""


class CheckpointError(MedSAMError):
    """Model weights are missing, truncated, tampered with or of the wrong architecture."""


class OptionError(MedSAMError):
    """An option value is not understood."""


class CacheError(MedSAMError):
    """The embedding cache cannot hold what it was asked to hold."""


class Cancelled(MedSAMError):
    """The user cancelled a running job; nothing partial was written."""

    exit_code = 130
