"""Uploaded volumes, named by their content fingerprint: each volume is received once, whoever sends it.

A volume arrives either as a compressed upload or (local mode) as the name of a ``.npy`` file that a client on the
same machine wrote into the server's private folder (mode 0700, made at start).  Only plain files directly inside
that folder are read; anything else (``..``, absolute paths, symlinks) is refused.  Every array is checked (3D,
numbers, finite, the fingerprint it was announced under) before it is kept.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import ServiceError
from ..protocol import check_voxels, wire


def checked_volume(array: np.ndarray, fingerprint: str) -> np.ndarray:
    check_voxels(array)
    if wire.content_fingerprint(array) != fingerprint:
        raise ServiceError("the volume's content does not match the fingerprint it was sent under", "bad_request")
    array.setflags(write=False)
    return array


def checked_fingerprint(fingerprint: str) -> str:
    if len(fingerprint) != wire.FINGERPRINT_CHARS or any(c not in "0123456789abcdef" for c in fingerprint):
        raise ServiceError("a volume fingerprint is 64 lowercase hex digits (sha256)", "bad_request")
    return fingerprint


class VolumeStore:
    """Raw arrays by fingerprint, within a byte budget; volumes no session uses are dropped first (LRU)."""

    def __init__(self, budget_bytes: int, private_dir: Path) -> None:
        self.budget_bytes = budget_bytes
        self.private_dir = private_dir
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.uploads = 0  # volumes received (a second upload of the same content is never received)

    def __contains__(self, fingerprint: str) -> bool:
        with self._lock:
            return fingerprint in self._arrays

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._arrays.values())

    def get(self, fingerprint: str) -> np.ndarray:
        with self._lock:
            if fingerprint not in self._arrays:
                raise ServiceError("no volume with this fingerprint on the server; upload it first", "not_found", 404)
            self._arrays.move_to_end(fingerprint)
            return self._arrays[fingerprint]

    def add(self, fingerprint: str, array: np.ndarray, in_use: set[str]) -> None:
        with self._lock:
            if fingerprint in self._arrays:
                return
            used = sum(a.nbytes for a in self._arrays.values())
            for name in [n for n in self._arrays if n not in in_use]:
                if used + array.nbytes <= self.budget_bytes:
                    break
                used -= self._arrays.pop(name).nbytes
            if used + array.nbytes > self.budget_bytes:
                raise ServiceError(f"the server's volume memory ({self.budget_bytes >> 20} MiB) is full; close "
                                   f"other sessions or start it with a larger --memory-mb", "memory_full", 507)
            self._arrays[fingerprint] = array
            self.uploads += 1

    def drop_unused(self, in_use: set[str]) -> None:
        with self._lock:
            for name in [n for n in self._arrays if n not in in_use]:
                del self._arrays[name]

    def private_file(self, name: str) -> Path:
        """The plain file ``name`` directly inside the private folder, or a 403 (no other path is ever opened)."""
        if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
            raise ServiceError(f"{name!r} is not a file name inside the server's private folder", "bad_path", 403)
        path = self.private_dir / name
        try:
            info = os.lstat(path)
        except OSError:
            raise ServiceError(f"no file {name!r} in the server's private folder", "bad_path", 403) from None
        if not stat.S_ISREG(info.st_mode):  # symlinks, devices, folders
            raise ServiceError(f"{name!r} is not a plain file in the server's private folder", "bad_path", 403)
        return path

    def read_private_file(self, name: str, max_bytes: int) -> np.ndarray:
        path = self.private_file(name)
        try:
            if path.stat().st_size > max_bytes:
                raise ServiceError(f"the volume file exceeds {max_bytes >> 20} MiB", "too_large", 413)
            with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as stream:
                return wire.load_npy(stream)
        finally:
            path.unlink(missing_ok=True)


def sweep_private_dir(private_dir: Path, older_than: float = 3600.0) -> None:
    """Remove hand-over files a crashed client left behind."""
    now = time.time()
    for path in private_dir.glob("*"):
        try:
            if now - path.lstat().st_mtime > older_than:
                path.unlink()
        except OSError:
            pass
