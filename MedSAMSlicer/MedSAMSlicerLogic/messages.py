"""Turning any failure into the one line the panel shows.

Errors the user can act on (:class:`MedSAMError`) already carry their message.  A few others are common enough to
deserve their own advice (GPU out of memory, a package missing).  Anything else is a bug: the user gets its type
and first line, and the full traceback goes to the log.
"""

from __future__ import annotations

import logging

from MedSAMSlicerLib.errors import MedSAMError

log = logging.getLogger(__name__)


def _is_out_of_memory(error: BaseException) -> bool:
    name = type(error).__name__
    text = str(error)
    return name == "OutOfMemoryError" or "CUDA out of memory" in text or (
        isinstance(error, RuntimeError) and "out of memory" in text.lower())


def user_message(error: BaseException) -> str:
    if isinstance(error, MedSAMError):
        return str(error)
    if _is_out_of_memory(error):
        return ("the GPU ran out of memory; nothing was written. Choose 'cpu' under Device, or close other programs "
                "that use the GPU, and try again")
    if isinstance(error, MemoryError):
        return "the computer ran out of memory; nothing was written. Close other volumes or programs and try again"
    if isinstance(error, ModuleNotFoundError):
        # In Slicer's own process: the engine's private packages are never on its path, so installing them cannot
        # help (audit B1); the feature that needs the package must do without it or run in a child process.
        return (f"the Python package {error.name!r} is not available in this Python; nothing was written. Please "
                "report this as a bug")
    log.error("MedSAMSlicer internal error", exc_info=(type(error), error, error.__traceback__))
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return f"unexpected error ({type(error).__name__}: {first}); nothing was written. Details are in the log"


def view_missing(view: str) -> MedSAMError:
    """The chosen slice view does not exist in the current layout (audit R4)."""
    return MedSAMError(f"the {view} view is not in the current layout; choose another view under 'Draw in view', or "
                       "switch to a layout that shows it")
