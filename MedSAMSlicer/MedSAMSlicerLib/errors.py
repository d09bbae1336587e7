"""Errors a user can act on.

Every failure that comes from the user's input (a file, a box, a checkpoint, an option) raises a subclass of
:class:`MedSAMError` whose message is one line saying what is wrong and what to do.  The CLI prints that line and
exits non-zero; the Slicer panel shows it in a message box.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


_ITK_LOCATION = re.compile(r"^(?:Exception thrown in SimpleITK\b.*|\S+\.(?:cxx|hxx|cpp|cc|txx|h)(?::\d+)+:?)$")
_ITK_PREFIX = re.compile(r"^(?:ITK ERROR|ITK WARNING|itk::ERROR|itk::WARNING|sitk::ERROR|sitk::WARNING)\s*:\s*")
_ITK_OBJECT = re.compile(r"^\w+\(0x[0-9a-fA-F]+\)\s*:\s*")  # "NrrdImageIO(0x5567b6b313b0): "
_TEEM = re.compile(r"^\[nrrd\]\s*(?:_?\w+\s*:\s*)?")  # "[nrrd] _nrrdEncodingRaw_read: "


def _itk_human_part(lines: list[str]) -> str:
    """The sentences of an ITK/SimpleITK error without its C++ source locations and object addresses.

    SimpleITK puts ``Exception thrown in SimpleITK ImageFileReader_Execute: /path/itkNrrdImageIO.cxx:935:`` first;
    the human text ("Failed to allocate memory for image.", "Unable to determine ImageIO reader for ...") follows.
    NRRD errors come from teem as a chain of ``[nrrd] function: trouble`` lines: the last line says what is wrong
    and a ``trouble parsing <field>`` line, when present, says which header field.
    """
    human, teem = [], []
    for line in lines:
        if _ITK_LOCATION.match(line):
            continue
        if line.startswith("[nrrd]"):
            teem.append(_TEEM.sub("", line).strip())
            continue
        line = _ITK_OBJECT.sub("", _ITK_PREFIX.sub("", line)).strip()
        if line:
            human.append(line)
    teem = [line for line in teem if line and line.rstrip(":") not in ("trouble", "")]
    if teem:
        parsing = [line for line in teem if line.startswith("trouble parsing")]
        detail = teem[-1]
        return f"{parsing[-1]}: {detail}" if parsing and parsing[-1] != detail else detail
    return " ".join(human)


def first_line(error: BaseException, limit: int = 200) -> str:
    """One informative line of a library's error, for one-line messages.

    For SimpleITK/ITK errors this is the human part (their first line is a C++ source location); for anything
    else the first non-empty line.
    """
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if any(_ITK_LOCATION.match(line) or _ITK_PREFIX.match(line) or line.startswith("[nrrd]") for line in lines):
        human = _itk_human_part(lines)
        if human:
            return human[:limit]
    return lines[0][:limit]


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


class OutputError(MedSAMError, OSError):
    """An output cannot be written where asked (it is an input, a folder, on a full or read-only disk...).

    Also an :class:`OSError`, so that code which already treats a failed write as an OS error keeps working.
    """

    code = "output"

    def __str__(self) -> str:  # OSError would format (errno, strerror); ours is the whole message
        return str(self.args[0]) if self.args else ""


class ApiTypeError(MedSAMError, TypeError):
    """A Python API call got an argument of the wrong type; the message says what was expected."""

    code = "api_type"


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
                                           Cancelled, EngineUnavailable, OutputError, ApiTypeError)}
