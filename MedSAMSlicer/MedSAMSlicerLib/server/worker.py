"""The one place where model work runs: a single thread that owns the segmenter.

Request handlers, propagation jobs and prefetchers call :class:`SerialSegmenter` (same interface as
:class:`~MedSAMSlicerLib.engine.predictor.Segmenter`), which queues each encoder or decoder call for the worker thread
and waits for it.  One thread means the GPU/CPU never runs two networks at once (no thrashing, no doubled memory),
and the queue is ordered by priority: an annotator's click (interactive) goes before a propagation's next slice,
which goes before background prefetch.  The priority is per calling thread (:func:`priority`).

A running call cannot be interrupted, so a click on a cached slice that arrived while a prefetch's encoder call ran
waited for that whole call (0.3 s on a quiet 2-core CPU, 2-4 s loaded: the p95 of ``bench/web_latency.py``).  A
decoder call (``light``) of a job a user waits for therefore does not queue behind a prefetch call in progress: it
runs at once on its own thread, beside it (:class:`~MedSAMSlicerLib.engine.predictor.Segmenter` is thread-safe: with a
runtime each network has its own request; the PyTorch path shares one lock, so there it still waits).  The decoder
is small (tens of ms); two encoder calls never run at once.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import numpy as np

from ..engine import Segmenter, SliceEmbedding

T = TypeVar("T")
INTERACTIVE, PROPAGATION, PREFETCH = 0, 1, 2
_local = threading.local()


@contextmanager
def priority(level: int) -> Iterator[None]:
    """Model calls made by this thread inside the block are queued at ``level``."""
    before = getattr(_local, "priority", INTERACTIVE)
    _local.priority = level
    try:
        yield
    finally:
        _local.priority = before


class ModelWorker:
    def __init__(self) -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within one priority
        self.running: int | None = None  # the priority of the call running now (None: idle)
        self.beside_prefetch = 0  # light calls that ran beside a prefetch call instead of waiting for it
        self._thread = threading.Thread(target=self._run, name="medsam-model-worker", daemon=True)
        self._thread.start()

    def call(self, work: Callable[..., T], *args, light: bool = False) -> T:
        """Run ``work(*args)`` on the worker thread, queued at this thread's priority.  ``light`` (a decoder call):
        above the prefetch priority and while a prefetch call runs, it runs now on this thread instead."""
        level = getattr(_local, "priority", INTERACTIVE)
        if light and level < PREFETCH and self.running == PREFETCH:
            self.beside_prefetch += 1
            return work(*args)
        future: Future = Future()
        self._queue.put((level, next(self._order), work, args, future))
        return future.result()

    def queued(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            level, _, work, args, future = self._queue.get()
            if work is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            self.running = level
            try:
                future.set_result(work(*args))
            except BaseException as error:  # handed to the caller's thread, which reports it
                future.set_exception(error)
            finally:
                self.running = None

    def stop(self) -> None:
        self._queue.put((-1, next(self._order), None, (), None))


class SerialSegmenter:
    """A :class:`Segmenter` whose network calls all run on the :class:`ModelWorker` thread."""

    def __init__(self, segmenter: Segmenter, worker: ModelWorker) -> None:
        self.inner = segmenter
        self.worker = worker
        self.model = segmenter.model
        self.pipeline = segmenter.pipeline
        self.encoder = segmenter.encoder  # counters
        self.backend_name = segmenter.backend_name

    # The engine's encode-ahead threads would run outside this worker's priorities and job accounting; the worker
    # serialises the network anyway, so propagation walks slice by slice here.
    ahead_depth = 0

    @property
    def image_size(self) -> int:
        return self.inner.image_size

    def __getattr__(self, name: str):
        """Descriptive attributes of the segmenter (precision, embedding tag, runtime reason) read through."""
        if name == "inner":  # not set yet (during __init__ or unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def embed(self, slice_u8: np.ndarray) -> SliceEmbedding:
        return self.worker.call(self.inner.embed, slice_u8)

    def predict(self, embedding: SliceEmbedding, box) -> tuple[np.ndarray, float]:
        return self.worker.call(self.inner.predict, embedding, box, light=True)

    def predict_model_box(self, embedding: SliceEmbedding, box_array: np.ndarray) -> tuple[np.ndarray, float]:
        return self.worker.call(self.inner.predict_model_box, embedding, box_array, light=True)

    def predict_model_box_pair(self, first: tuple[SliceEmbedding, np.ndarray],
                               second: tuple[SliceEmbedding, np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """Two decoder calls at once (a correction's first slices), on the worker like the others (read through
        ``__getattr__`` it ran on the job's thread, outside the worker's order)."""
        return self.worker.call(self.inner.predict_model_box_pair, first, second, light=True)
