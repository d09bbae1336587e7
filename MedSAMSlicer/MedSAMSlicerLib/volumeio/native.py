"""What C and C++ libraries print while they read or write a file.

ITK's MetaImage reader prints "data not read completely" and the NIfTI writer "wrote only N of M bytes" straight to
the process's stdout/stderr file descriptors, below Python, then carry on.  Left alone those lines break the
one-line error promise and the facts in them are lost; :func:`native_output` collects them so that the caller can
put them into its own message (or log them).
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@contextmanager
def native_output() -> Iterator[list[str]]:
    """Collect the lines C/C++ code writes to file descriptors 1 and 2 during the block (into the yielded list,
    filled when the block ends).  Where the descriptors cannot be redirected, nothing is collected."""
    lines: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        sink = tempfile.TemporaryFile()
    except OSError:  # no room for even a small temporary file (full disk): let the lines through
        yield lines
        return
    saved: list[int] = []
    try:
        try:
            saved = [os.dup(1), os.dup(2)]
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        except OSError:  # a closed descriptor: nothing to redirect
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
            for copy in saved:
                os.close(copy)
            saved = []
        yield lines
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        try:
            sink.seek(0)
            text = sink.read(65536).decode("utf-8", "replace")
        except OSError:
            text = ""
        sink.close()
        lines.extend(" ".join(line.split()) for line in text.splitlines() if line.strip())


def call_collecting(call: Callable[[], T]) -> tuple[T | None, RuntimeError | None, list[str]]:
    """Run an ITK call (which raises RuntimeError on failure) under :func:`native_output`: its result or None, the
    error or None, and what the C++ code printed.  The caller raises after the block, with the printed lines."""
    result, failure = None, None
    with native_output() as native:
        try:
            result = call()
        except RuntimeError as error:
            failure = error
    return result, failure, native
