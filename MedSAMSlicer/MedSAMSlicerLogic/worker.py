"""Running engine work off Slicer's GUI thread, without Qt.

``BackgroundTask`` runs one function in a Python thread and records its progress and outcome in plain fields.  The
panel polls it with a ``qt.QTimer`` (Qt stays in the widget) and, once it is finished, applies the result to MRML on
the GUI thread: MRML and VTK objects are not thread-safe, so the worker function receives only numpy arrays and
engine objects, never a node.

The engine releases the GIL inside torch and ONNX Runtime, so the GUI stays responsive while the encoder runs.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any, Callable

from MedSAMSlicerLib.errors import Cancelled
from MedSAMSlicerLib.engine.propagation import CancelToken

from .messages import user_message

log = logging.getLogger(__name__)

# work(progress, cancel) -> result; progress(done, total) may be called from the worker thread.
Work = Callable[[Callable[[int, int], None], CancelToken], Any]


class TaskState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BackgroundTask:
    def __init__(self, title: str, work: Work) -> None:
        self.title = title
        self.cancel_token = CancelToken()
        self.state = TaskState.RUNNING
        self.result: Any = None
        self.message = ""  # one line for the user when FAILED or CANCELLED
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.seconds = 0.0
        self._progress = (0, 0)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"medsam-{title}", daemon=True)
        self._thread.start()

    def _report(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (done, total)

    def _run(self, work: Work) -> None:
        try:
            result = work(self._report, self.cancel_token)
        except Cancelled as error:
            self._finish(TaskState.CANCELLED, None, str(error), error)
        except BaseException as error:  # noqa: BLE001 - every failure must reach the user as one message
            self._finish(TaskState.FAILED, None, user_message(error), error)
        else:
            if self.cancel_token.cancelled:  # cancelled after the last check: the user asked for nothing
                self._finish(TaskState.CANCELLED, None, f"{self.title} cancelled; nothing was written", None)
            else:
                self._finish(TaskState.DONE, result, "", None)

    def _finish(self, state: TaskState, result: Any, message: str, error: BaseException | None) -> None:
        with self._lock:
            self.result, self.message, self.error = result, message, error
            self.seconds = time.monotonic() - self.started
            self.state = state  # last: a poller that sees the new state also sees the fields above

    @property
    def progress(self) -> tuple[int, int]:
        with self._lock:
            return self._progress

    @property
    def finished(self) -> bool:
        return self.state is not TaskState.RUNNING

    def cancel(self) -> None:
        """Ask the work to stop at its next check (between two slices); an encoder call in flight finishes first."""
        self.cancel_token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests and batch scripts; the panel polls instead).  True when finished."""
        self._thread.join(timeout)
        return self.finished
