"""Files that appear whole or not at all, checked end to end: the one writer every output goes through.

A write goes to a temporary file beside the target (same folder, so the final ``os.replace`` is an atomic rename
on POSIX and Windows), is flushed to the disk (``fsync``), checked (not empty, and whatever ``verify`` re-reads),
renamed over the target, and the folder entry is flushed too.  On any failure the temporary file is removed, the
folders this write created are removed, the old target stays byte-identical, and the error is an
:class:`~MedSAMSlicerLib.errors.OutputError` (exit code 2) with one line saying what went wrong.  Checking matters
because some writers do not report a full disk: SimpleITK's NIfTI writer prints "wrote only N of M bytes" on the
C++ stderr and returns normally.

The temporary name keeps the target's suffix (writers such as SimpleITK pick the format from it) and is never longer
than the target's own name (beyond a 40-character floor), so a legal target name never fails as "File name too
long" because of its temporary file.  While it is being written the temporary file is locked (``flock``), so a
cleaner can tell an orphan left by a killed process (unlocked) from a write in progress (:func:`is_abandoned`).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import MedSAMError, OutputError, first_line

if sys.platform == "win32":  # no advisory locks: orphans are recognised by age instead
    fcntl = None
else:  # POSIX: advisory locks tell a write in progress from an orphan
    import fcntl

_NAME_FLOOR = 40  # temporary names may use this many characters even when the target's name is shorter
_ORPHAN_AGE_S = 3600.0  # without locks (Windows): a temporary file this old is an orphan
_TEMP_RE = re.compile(r"^\..*~[0-9a-f]{8}(\.[^/]*)?$")

committed: list[Path] = []  # targets this process replaced, in order: the CLI names them if Ctrl+C comes after
_committed_lock = threading.Lock()


def temp_name(target_name: str, suffix: str = "") -> str:
    """``.<head>~<8 hex><suffix>``, at most ``max(len(target_name), 40)`` bytes; ``head`` is the target's name
    without the suffix, cut to fit."""
    token = secrets.token_hex(4)
    budget = max(len(os.fsencode(target_name)), _NAME_FLOOR)
    head = target_name[:-len(suffix)] if suffix and target_name.endswith(suffix) else target_name
    room = budget - len(os.fsencode(f".~{token}{suffix}"))
    head = os.fsencode(head)[:max(room, 0)].decode("utf-8", "ignore")
    return f".{head}~{token}{suffix}"


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_RE.match(name))


def is_abandoned(path: Path) -> bool:
    """True when ``path`` is a temporary file nobody is writing (its writer was killed)."""
    if fcntl is None:
        try:
            return time.time() - path.stat().st_mtime > _ORPHAN_AGE_S
        except OSError:
            return False
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return False
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # locked: a live writer holds it
        return False
    else:
        return True
    finally:
        os.close(handle)


def output_error(target: Path | str, error: BaseException) -> OutputError:
    """The one-line error for a failed write of ``target``."""
    if isinstance(error, OutputError):
        return error
    if isinstance(error, OSError):
        why = error.strerror or first_line(error)
        hint = {28: "; free some space and try again", 30: "; write somewhere else",
                36: "; choose a shorter name", 13: "; check the folder's permissions"}.get(error.errno or 0, "")
        return OutputError(f"cannot write {target}: {why}{hint}")
    return OutputError(f"cannot write {target}: {first_line(error)}")


def _make_folders(folder: Path, target: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created (deepest last)."""
    missing = []
    current = folder
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    if os.path.lexists(current) and not current.is_dir():
        raise OutputError(f"cannot write {target}: {current} is a file, not a folder")
    created = []
    try:
        for path in reversed(missing):
            os.mkdir(path)
            created.append(path)
    except OSError as error:
        _remove_folders(created)
        raise output_error(target, error) from None
    return created


def _remove_folders(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_folder(folder: Path) -> None:
    """Flush the folder entry (the rename) too; some platforms and file systems cannot, which is fine."""
    if os.name != "posix":
        return
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp", verify: Callable[[Path], None] | None = None,
                mode: int = 0o600, allow_empty: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target`` for a writer to write by name; when the block succeeds the
    file is fsync-ed, checked (non-empty, then ``verify(temp)``, which raises if the file does not read back) and
    renamed over ``target``.  On any failure nothing changes at ``target`` and an :class:`OutputError` is raised
    for OS errors and failed checks (other exceptions, e.g. Ctrl+C, pass through after the clean-up).

    A ``target`` that is a symbolic link is written through: the link stays, the file it points to is replaced.
    New files get ``mode`` (private by default: medical data); a replaced file keeps its own mode.
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    folder = target.parent
    created = _make_folders(folder, target)
    temp = folder / temp_name(target.name, suffix)
    try:
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    except OSError as error:
        _remove_folders(created)
        raise output_error(target, error) from None
    done = False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # a file system without locks: the write still works, only orphan detection is by age
        try:
            yield temp
        except OSError as error:
            raise output_error(target, error) from error
        try:
            _fsync_path(temp)
            if os.stat(temp).st_size == 0 and not allow_empty:
                raise OutputError(f"cannot write {target}: nothing reached the disk (is it full?)")
            if verify is not None:
                verify(temp)
            try:
                os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
            except OSError:
                pass  # no old file (or no permission to read its mode): keep ``mode``
            os.replace(temp, target)
        except MedSAMError:
            raise
        except Exception as error:
            raise output_error(target, error) from error
        done = True
        _fsync_folder(folder)
        with _committed_lock:
            committed.append(target)
    finally:
        os.close(handle)
        if not done:
            try:
                os.unlink(temp)
            except OSError:
                pass
            _remove_folders(created)


def write_bytes_atomically(target: str | os.PathLike, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` as the whole content of ``target`` (see :func:`atomic_path`); returns ``target``."""

    def same_size(temp: Path) -> None:
        size = os.stat(temp).st_size
        if size != len(data):
            raise OutputError(f"cannot write {target}: only {size} of {len(data)} bytes reached the disk "
                              f"(is it full?)")

    with atomic_path(target, verify=same_size, mode=mode, allow_empty=not data) as temp:
        with open(temp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    return Path(target)
