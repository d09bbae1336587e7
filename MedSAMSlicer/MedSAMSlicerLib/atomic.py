"""Files that appear whole or not at all: write a temporary file beside the target, then rename it over.

``os.replace`` within one folder is atomic on POSIX and Windows, so a reader (or a crash) sees the old file or
the new one, never a part.  The temporary name keeps the target's suffix because writers such as SimpleITK pick
the format from it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target``; it becomes ``target`` if the block succeeds, else vanishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes_atomically(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` as the whole content of ``target``, flushed to disk before the rename."""
    with atomic_path(target) as temp:
        with temp.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    return Path(target)
