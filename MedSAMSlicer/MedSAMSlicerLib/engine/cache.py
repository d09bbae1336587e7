"""Per-slice embedding cache: the image encoder runs at most once per slice, model and window.

- Keys: (volume content fingerprint, slice axis, slice index, model, checkpoint hash, window).  The fingerprint is
  a hash of the windowed voxels, so an edited volume or another window never returns a stale embedding.
- Memory: an LRU store with a byte budget (default: a quarter of the RAM available, at most 4 GiB), optionally
  holding float16 (half the bytes; the mask change this causes is measured by ``bench/cache_precision.py``).
- Disk (optional): one ``.npz`` per slice under ``<cache dir>/<fingerprint>/``, written atomically, loaded without
  pickle, with a sha256 inside that covers every array in the file (features, geometry) and the cache key, so a
  tampered, truncated or misplaced file is recomputed and replaced, never used.  Temporary files left by a killed
  process are removed the first time a folder is used (:func:`MedSAMSlicerLib.atomic.is_abandoned` tells them from
  a write in progress).  A cache folder that cannot be written degrades to memory only, with one warning.
- Concurrency: one computation per key at a time; a second caller waits for the first (prefetch thread included).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import atomic_path, is_abandoned
from ..errors import CacheError
from .pipelines import SliceGeometry
from .predictor import SliceEmbedding

log = logging.getLogger(__name__)

CACHE_ENV = "MEDSAM_SLICER_CACHE"
EMBEDDING_SHAPE = (1, 256, 64, 64)  # every supported model's encoder output
_GiB = 1 << 30


def volume_fingerprint(image: np.ndarray) -> str:
    """sha256 of shape, dtype and voxels of the windowed volume."""
    digest = hashlib.sha256()
    digest.update(repr((image.shape, str(image.dtype))).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def default_memory_budget() -> int:
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:  # psutil missing or the platform hides memory figures
        available = 8 * _GiB
    return int(min(available // 4, 4 * _GiB))


def embedding_bytes(dtype: torch.dtype) -> int:
    return int(np.prod(EMBEDDING_SHAPE)) * torch.tensor([], dtype=dtype).element_size()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # embeddings computed
    disk_hits: int = 0
    disk_writes: int = 0
    disk_rejected: int = 0  # corrupt or unreadable files that were recomputed
    evictions: int = 0
    bytes: int = 0


class EmbeddingCache:
    def __init__(self, memory_budget: int | None = None, store_fp16: bool = False,
                 disk_dir: str | os.PathLike | None = None) -> None:
        self.store_dtype = torch.float16 if store_fp16 else torch.float32
        self.memory_budget = default_memory_budget() if memory_budget is None else int(memory_budget)
        needed = embedding_bytes(self.store_dtype)
        if self.memory_budget < needed:
            raise CacheError(f"embedding memory budget {self.memory_budget} bytes is smaller than one embedding "
                             f"({needed} bytes); give at least {needed // (1 << 20)} MiB")
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir else None
        self.stats = CacheStats()
        self._store: OrderedDict[tuple, SliceEmbedding] = OrderedDict()
        self._lock = threading.RLock()
        self._in_flight: dict[tuple, threading.Event] = {}
        self._disk_warned = False
        self._swept: set[Path] = set()  # folders already cleared of orphan temporary files

    # -- memory -------------------------------------------------------------------------------------------------
    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            return key in self._store

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def clear(self) -> None:
        with self._lock:
            self._store.clear()
            self.stats.bytes = 0

    def _put(self, key: tuple, embedding: SliceEmbedding) -> None:
        with self._lock:
            if key in self._store:
                self.stats.bytes -= self._store.pop(key).nbytes
            self._store[key] = embedding
            self.stats.bytes += embedding.nbytes
            while self.stats.bytes > self.memory_budget and len(self._store) > 1:
                _, evicted = self._store.popitem(last=False)
                self.stats.bytes -= evicted.nbytes
                self.stats.evictions += 1

    def _lookup(self, key: tuple) -> SliceEmbedding | None:
        with self._lock:
            if key in self._store:
                self._store.move_to_end(key)
                self.stats.hits += 1
                return self._store[key]
        return None

    def get_or_compute(self, key: tuple, compute: Callable[[], SliceEmbedding]) -> SliceEmbedding:
        """The embedding for ``key``: from memory, else disk, else ``compute()`` (once, whoever asks)."""
        while True:
            found = self._lookup(key)
            if found is not None:
                return found
            with self._lock:
                waiting = self._in_flight.get(key)
                if waiting is None:
                    self._in_flight[key] = threading.Event()
                    break
            waiting.wait()
        try:
            embedding = self._read_disk(key)
            if embedding is None:
                embedding = self._for_storage(compute())
                with self._lock:
                    self.stats.misses += 1
                self._write_disk(key, embedding)
            self._put(key, embedding)
            return embedding
        finally:
            with self._lock:
                self._in_flight.pop(key).set()

    def _for_storage(self, embedding: SliceEmbedding) -> SliceEmbedding:
        features = embedding.features.to(self.store_dtype).contiguous()
        return SliceEmbedding(features, embedding.geometry)

    # -- disk ---------------------------------------------------------------------------------------------------
    def _path(self, key: tuple) -> Path | None:
        if self.disk_dir is None:
            return None
        fingerprint, *rest = key
        name = "-".join(str(part).replace(os.sep, "_").replace(":", "_").replace(",", "_") for part in rest)
        return self.disk_dir / str(fingerprint)[:32] / f"{name}.npz"

    @staticmethod
    def _digest(key: tuple, features: np.ndarray, geometry: np.ndarray) -> bytes:
        """sha256 over the key (as the file name spells it), the features (dtype, shape, bytes) and the geometry."""
        digest = hashlib.sha256()
        digest.update("/".join(str(part) for part in key).encode("utf-8"))
        digest.update(repr((features.dtype.str, features.shape)).encode())
        digest.update(np.ascontiguousarray(features).tobytes())
        digest.update(np.ascontiguousarray(geometry, dtype="<i8").tobytes())
        return digest.digest()

    def _sweep(self, folder: Path) -> None:
        """Remove temporary files that a killed process left in ``folder`` (once per folder and process)."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        try:
            names = [entry for entry in os.scandir(folder) if entry.name.startswith(".")]
        except OSError:
            return
        for entry in names:  # cache entries never start with a dot: these are temporary files
            path = Path(entry.path)
            if is_abandoned(path):
                try:
                    path.unlink()
                    log.info("removed %s, left by an interrupted cache write", path.name)
                except OSError:
                    pass

    def _read_disk(self, key: tuple) -> SliceEmbedding | None:
        path = self._path(key)
        if path is None:
            return None
        self._sweep(path.parent)
        if not os.path.lexists(path):
            return None
        try:
            if not path.is_file():
                raise ValueError("not a regular file")
            with np.load(path, allow_pickle=False) as data:
                features = np.asarray(data["features"])
                geometry = np.asarray(data["geometry"])
                digest = bytes(np.asarray(data["sha256"], dtype=np.uint8))
            if features.shape != EMBEDDING_SHAPE or features.dtype.kind != "f":
                raise ValueError(f"features of shape {features.shape} and type {features.dtype}")
            if geometry.shape != (4,) or geometry.dtype.kind not in "iu":
                raise ValueError(f"geometry of shape {geometry.shape} and type {geometry.dtype}")
            if self._digest(key, features, geometry) != digest:
                raise ValueError("checksum mismatch")
            sizes = [int(v) for v in geometry]
            if min(sizes) < 1 or max(sizes[2:]) > 4096:
                raise ValueError(f"geometry {sizes} out of range")
            embedding = SliceEmbedding(torch.from_numpy(features).to(self.store_dtype),
                                       SliceGeometry((sizes[0], sizes[1]), (sizes[2], sizes[3])))
        except Exception as error:  # truncated, corrupt, tampered or from an incompatible version
            log.warning("embedding cache file %s is unusable (%s); recomputing it", path, error)
            with self._lock:
                self.stats.disk_rejected += 1
            return None
        with self._lock:
            self.stats.disk_hits += 1
        return embedding

    def _write_disk(self, key: tuple, embedding: SliceEmbedding) -> None:
        path = self._path(key)
        if path is None:
            return
        features = embedding.features.numpy()
        geometry = np.array([*embedding.geometry.original_size, *embedding.geometry.input_size], dtype=np.int64)
        try:
            if os.path.isdir(path):  # a folder where the file belongs (damage): it cannot be replaced
                raise OSError(f"{path} is a folder")
            with atomic_path(path, suffix=".npz") as temp:
                np.savez(temp, features=features, geometry=geometry,
                         sha256=np.frombuffer(self._digest(key, features, geometry), dtype=np.uint8))
            with self._lock:
                self.stats.disk_writes += 1
        except OSError as error:
            if not self._disk_warned:
                why = error.strerror if error.strerror else str(error).rpartition(": ")[2]  # the cause, not the path
                log.warning("cannot write the embedding cache in %s (%s); keeping embeddings in memory only",
                            self.disk_dir, why)
                self._disk_warned = True


def default_disk_dir() -> Path | None:
    """``$MEDSAM_SLICER_CACHE`` if set (empty: no disk cache)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else None
