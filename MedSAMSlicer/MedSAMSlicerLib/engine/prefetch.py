"""Background warming of the embedding cache around the slice the user is looking at.

One worker thread embeds the neighbours of a slice, nearest first, through the session's cache (so a slice the
foreground asks for at the same time is still computed once).  ``warm`` on another slice, or ``cancel``, stops the
current job between two slices; an encoder call already running finishes first (it cannot be interrupted).
"""

from __future__ import annotations

import logging
import threading

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
