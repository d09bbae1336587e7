"""Background warming of the embedding cache: around the slice the user is looking at, and ahead of a propagation.

``Prefetcher``: one worker thread embeds the neighbours of a slice, nearest first, through the session's cache (so a
slice the foreground asks for at the same time is still computed once).  ``warm`` on another slice, or ``cancel``,
stops the current job between two slices; an encoder call already running finishes first (it cannot be interrupted).

``EncodeAhead``: while a propagation's decoder walks slice by slice, the next few slices it will need are encoded
by ``depth`` worker threads on the runtime's throughput requests (OpenVINO streams, each on its own cores), so the
encoder never waits for the decoder and two slices encode side by side.  Workers go through
``session.embedding``, so the cache still computes each slice once and a session subclass still counts its calls.
"""


from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

from ..errors import first_line
from .predictor import SliceEmbedding, encoding_ahead
from .session import VolumeSession

log = logging.getLogger(__name__)


def nearest_first(center: int, radius: int, count: int) -> list[int]:
    order = [center]
    for distance in range(1, radius + 1):
        order.extend(i for i in (center + distance, center - distance) if 0 <= i < count)
    return [i for i in order if 0 <= i < count]


class Prefetcher:
    def __init__(self, session: VolumeSession) -> None:
        self.session = session
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.embedded: list[int] = []  # slices this prefetcher had to compute or fetch, in order

    def warm(self, center: int, radius: int = 3) -> None:
        """Start embedding ``center`` and its neighbours up to ``radius`` slices away; replaces any running job."""
        self.cancel()
        order = nearest_first(center, radius, self.session.slice_count)
        with self._lock:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(order, self._stop), name="medsam-prefetch",
                                            daemon=True)
            self._thread.start()

    def _run(self, order: list[int], stop: threading.Event) -> None:
        for index in order:
            if stop.is_set():
                return
            try:
                self.session.embedding(index)
                self.embedded.append(index)
            except Exception as error:  # a prefetch failure must never reach the user; the foreground retries
                log.warning("prefetch of slice %d failed: %s", index, error)
                return

    def cancel(self) -> None:
        with self._lock:
            self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the current job; True when no job is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True


class EncodeAhead:
    """Encodes slices ``depth`` at a time ahead of their use; :meth:`embedding` hands each one over."""

    def __init__(self, session: VolumeSession, depth: int) -> None:
        self.session = session
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="medsam-ahead",
                                        initializer=encoding_ahead)
        self._futures: dict[int, Future] = {}
        self._submitted: set[int] = set()

    def want(self, indices: Iterable[int]) -> None:
        """Start encoding ``indices`` (those not asked for before and not in memory already), in order."""
        for index in indices:
            if index not in self._submitted and self.session.cache_key(index) not in self.session.cache:
                self._submitted.add(index)
                self._futures[index] = self._pool.submit(self.session.embedding, index)

    def embedding(self, index: int) -> SliceEmbedding:
        """The embedding of ``index``: waits for its encode-ahead, or computes it here if none was started."""
        future = self._futures.pop(index, None)
        if future is not None:
            try:
                return future.result()
            except Exception as error:  # retried in the foreground, which reports a real failure itself
                log.warning("encode-ahead of slice %d failed (%s); encoding it again", index, first_line(error))
        return self.session.embedding(index)

    def close(self) -> None:
        """Drop what has not started; wait for encodes already running (they land in the cache)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "EncodeAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
