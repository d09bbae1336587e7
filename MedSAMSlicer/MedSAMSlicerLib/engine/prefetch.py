"""Background warming of the embedding cache: around the slice the user is looking at, and ahead of a propagation.

``Prefetcher``: one worker thread embeds the neighbours of a slice, nearest first, through the session's cache (so a
slice the foreground asks for at the same time is still computed once).  ``warm`` on another slice, or ``cancel``,
stops the current job between two slices; an encoder call already running finishes first (it cannot be interrupted).

``prefetch_loop`` (the engine server's ``POST /sessions/{id}/prefetch``): embeds the asked slices in order, at the
model worker's prefetch priority, and waits while any job a user waits for runs (:class:`Foreground`): one model
worker runs every call one at a time, so a prefetch call that slipped in between two calls of a correction or a
propagation made it wait a whole encoder call (measured in the browser: a corrective box waited for two).  The slices
asked for are capped at half of what the embedding cache holds, so a prefetch never evicts the slices in use.

``EncodeAhead``: while a propagation's decoder walks slice by slice, the next few slices it will need are encoded
by ``depth`` worker threads on the runtime's throughput requests (OpenVINO streams, each on its own cores), so the
encoder never waits for the decoder and two slices encode side by side.  Workers go through
``session.embedding``, so the cache still computes each slice once and a session subclass still counts its calls.
"""


from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable

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


class Foreground:
    """How many jobs a user waits for are running (a context manager around each); :meth:`wait_idle` blocks a
    background prefetch until none is."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> "Foreground":
        with self._idle:
            self._count += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    @property
    def busy(self) -> bool:
        return self._count > 0

    def wait_idle(self, stop: threading.Event, poll: float = 0.05) -> None:
        """Return when no job runs, or when ``stop`` is set (checked every ``poll`` seconds)."""
        with self._idle:
            while self._count and not stop.is_set():
                self._idle.wait(poll)


def prefetch_cap(cache) -> int:
    """The most slices one prefetch may ask for: half of what the embedding cache holds in memory."""
    from .cache import embedding_bytes

    return max(1, int(cache.memory_budget // embedding_bytes(cache.store_dtype)) // 2)


def prefetch_loop(indices: Iterable[int], embedding: Callable[[int], object], stop: threading.Event,
                  foreground: Foreground, halt: threading.Event | None = None) -> list[int]:
    """Embed ``indices`` in order through ``embedding`` (the session's cache), each after waiting for the running
    jobs; stops when ``stop`` (a newer prefetch of the session, or its end) or ``halt`` (the engine's end) is set,
    or at the first failure (logged; the foreground retries).  Returns the slices it went through."""
    done: list[int] = []
    for index in indices:
        foreground.wait_idle(stop)
        if stop.is_set() or (halt is not None and halt.is_set()):
            break
        try:
            embedding(index)
        except Exception as error:  # a prefetch failure never reaches a user; the foreground retries
            log.warning("prefetch of slice %d failed: %s", index, first_line(error))
            break
        done.append(index)
    return done


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
