"""Peak resident memory of this process over a block of work, sampled by a background thread."""

from __future__ import annotations

import threading


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.peak_mb``; polls the RSS every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / (1 << 20), 1)
