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
    code = "error"  # stable machine-readable name; the engine server sends it with the message (client maps it back)


class InputImageError(MedSAMError):
    """The image or label file cannot be used (missing, unreadable, wrong dimension, NaNs)."""

    code = "input_image"


class BoxError(MedSAMError):
    """The box prompt is empty, inverted or outside the slice."""

    code = "box"


class CheckpointError(MedSAMError):
    """Model weights are missing, truncated, tampered with or of the wrong architecture."""

    code = "checkpoint"


class OptionError(MedSAMError):
    """An option value is not understood."""

    code = "option"


class CacheError(MedSAMError):
    """The embedding cache cannot hold what it was asked to hold."""

    code = "cache"


class Cancelled(MedSAMError):
    """The user cancelled a running job; nothing partial was written."""

    exit_code = 130
    code = "cancelled"


class ServiceError(MedSAMError):
    """A refusal of the engine server (issue 9) that no class above names: bad token, unknown session, too large.

    ``code`` is stable (``unauthorized``, ``not_found``, ``too_large``, ``too_many_sessions``, ``memory_full``,
    ``bad_request``, ``bad_path``, ``loading``, ``internal``); ``status`` is the HTTP status that carries it.
    """

    def __init__(self, message: str, code: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class EngineUnavailable(MedSAMError):
    """The engine server cannot be reached, stopped answering, or did not start."""

    code = "unavailable"


# code -> class, so that a client re-raises what the server raised (the CLI then prints the same line)
ERROR_CLASSES = {cls.code: cls for cls in (InputImageError, BoxError, CheckpointError, OptionError, CacheError,
                                           Cancelled, EngineUnavailable)}
