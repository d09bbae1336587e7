"""Paths the user names, checked before any work: inputs are regular files, outputs never overwrite an input.

- :func:`regular_file`: an input must exist and be a regular file (a symbolic link to one is fine).  A folder, a
  FIFO (reading it would wait forever for a writer), a device (``/dev/zero`` never ends) or a socket is refused by
  ``stat`` alone, without opening it.
- :func:`check_output_file` / :func:`check_output_folder`: an output must not be any input, however it is spelled
  (the same path, a ``../`` detour, a symbolic link either way, a hard link: compared by device and inode), must not
  be an existing folder (or, for a folder, an existing file) or a non-regular file, must fit the file system's name
  limit, and its folder must be creatable and writable (not inside a file, not on a read-only file system).
  Commands call these before loading a model, so a mistake costs nothing and nothing is written.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterable

from .errors import InputImageError, MedSAMError, OutputError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_file(path: str | os.PathLike, what: str = "image", error: type[MedSAMError] = InputImageError,
                 folder_hint: str = "give a file") -> Path:
    """``path`` if it is a regular file (links followed); else ``error`` with one line saying what it is."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise error(f"{what} not found: {path}") from None
    except OSError as problem:
        raise error(f"cannot read {what} {path}: {problem.strerror or problem}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a folder; {folder_hint}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is {_kind(info.st_mode)}, not a regular file; give a file on disk")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: same inode when both exist (hard links too), else same real path."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def _existing_ancestor(folder: Path) -> Path:
    current = folder
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def _check_folder(folder: Path, shown: Path, what: str) -> None:
    """The folder ``folder`` exists and is writable, or can be created."""
    anchor = _existing_ancestor(folder)
    try:
        info = os.stat(anchor)
    except OSError as problem:
        raise OutputError(f"cannot write {what} {shown}: {anchor}: {problem.strerror or problem}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {what} {shown}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(anchor).f_flag & getattr(os, "ST_RDONLY", 1)
        why = "it is on a read-only file system" if read_only else "permission denied"
        raise OutputError(f"cannot write {what} {shown}: {why} ({anchor})")
    limit = os.statvfs(anchor).f_namemax if hasattr(os, "statvfs") else 255
    below = folder.relative_to(anchor).parts if folder != anchor else ()
    for part in below:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"cannot write {what} {shown}: folder name {part[:40]}... is longer than the "
                              f"{limit} bytes the file system allows")


def check_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "--out"
                      ) -> Path:
    """Refuse, before any work, an output file that would destroy an input or cannot be written.

    Returns the path the writer will replace (a symbolic link followed to its target, ``..`` resolved).
    """
    shown = Path(path)
    if not str(path):
        raise OutputError(f"{what} is empty; give a file name")
    real = Path(os.path.realpath(shown))
    if shown.name in ("", ".", "..") or str(path).endswith(os.sep):
        raise OutputError(f"{what} {shown} names a folder; give a file name")
    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):  # not there yet (or below a file: _check_folder says so)
        info = None
    except OSError as problem:
        if problem.errno != errno.ENAMETOOLONG:  # too long: the length check below says it better
            raise OutputError(f"cannot write {what} {shown}: {problem.strerror or problem}") from None
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{what} {shown} is an existing folder; give a file name")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{what} {shown} is {_kind(info.st_mode)}; give a regular file name")
    for source in inputs:
        if source and same_file(real, source):
            raise OutputError(f"{what} {shown} is the input {source} (the same file): writing it would destroy the "
                              f"input; choose another name")
    _check_folder(real.parent, shown, what)
    limit = os.statvfs(_existing_ancestor(real.parent)).f_namemax if hasattr(os, "statvfs") else 255
    if len(os.fsencode(real.name)) > limit:
        raise OutputError(f"cannot write {what} {shown.name[:40]}...: the name is {len(os.fsencode(real.name))} "
                          f"bytes, longer than the {limit} the file system allows")
    return real


def check_output_folder(folder: str | os.PathLike, names: Iterable[str], inputs: Iterable[str | os.PathLike] = (),
                        what: str = "--out") -> Path:
    """Refuse an output folder that is a file, cannot be created or written, or whose files ``names`` would
    overwrite an input.  Returns the folder with links and ``..`` resolved."""
    shown = Path(folder)
    real = Path(os.path.realpath(shown))
    if os.path.lexists(real) and not real.is_dir():
        raise OutputError(f"{what} {shown} is a file, not a folder; give a folder for the output files")
    inputs = [source for source in inputs if source]
    for name in names:
        check_output_file(real / name, inputs, what=f"{what} file")
    _check_folder(real, shown, what)
    return real

