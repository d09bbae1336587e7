"""Engine job stepping: one pending operation (a slice or a propagation) and the prefetch, advanced in short steps.

:class:`EngineJobs` holds what happens between a click and the write: the engine's health while it starts or loads
its model ("waiting"), the volume's session (:class:`.remote_volumes.RemoteVolumes`), starting the work as a job on
the engine (a retried start carries the same request id, so it is the same job), polling it and fetching its result.
Every request carries a timeout of at most ``POLL_TIMEOUT``; a request that times out is retried at the next poll;
``UNREACHABLE_POLLS`` failures in a row, over at least ``UNREACHABLE_SECONDS``, end the operation.  When the result
is in, the ``finish`` callback given by :class:`.box_segmentation.BoxSegmentationLogic` writes it (MRML, undo, time
log): nothing here touches the scene.

The requests and results are the protocol's (:mod:`MedSAMSlicerLib.protocol`): a slice goes as a
``protocol.SliceRequest``, a propagation as key boxes plus ``PropagationSettings``, and the results come back as
``protocol.SliceResult`` / ``PropagationResult``.  :class:`SliceInput` / :class:`PropagationInput` add what the logic
copied out of MRML at click time (the volume on its grid, the boxes' ROI prompts, the window).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Protocol, Union

from MedSAMSlicerLib.errors import Cancelled, EngineUnavailable, MedSAMError, ServiceError, first_line
from MedSAMSlicerLib.protocol import Box, JobState, PropagationResult, PropagationSettings, SliceRequest, SliceResult

from .messages import user_message
from .remote_volumes import RemoteKey, RemoteVolumes
from .roi_prompts import SlicePrompt
from .undo import Operation
from .volume_nodes import VolumeOnGrid

log = logging.getLogger(__name__)

POLL_TIMEOUT = 0.05  # seconds: the longest a poll may keep the GUI waiting (its requests' timeouts, its local work)
MIN_STEP = 0.02  # seconds: a poll starts another step only with this much of its POLL_TIMEOUT left
CANCEL_TIMEOUT = POLL_TIMEOUT  # telling the engine to stop (a click); not delivered = the engine drops unpolled jobs
UNREACHABLE_POLLS = 50  # consecutive failed polls (about 5 s at the panel's 100 ms) before a job is given up...
UNREACHABLE_SECONDS = 5.0  # ...and at least this long without an answer (a busy computer answers late, not never)
STARTUP_TIMEOUT = 600.0  # seconds an operation waits for the engine to load its model (first use: ONNX export)


class ProgressState(str, Enum):
    """What a poll says: the engine job states (:class:`JobState`) plus "idle" (nothing pending) and "waiting"
    (the engine is starting or loading its model).  A ``str`` enum: it compares equal to the plain strings."""

    IDLE = "idle"
    WAITING = "waiting"
    RUNNING = JobState.RUNNING.value
    DONE = JobState.DONE.value
    FAILED = JobState.FAILED.value
    CANCELLED = JobState.CANCELLED.value

    def __str__(self) -> str:
        return self.value


FINISHED = (ProgressState.DONE, ProgressState.FAILED, ProgressState.CANCELLED)


@dataclass
class SliceInput:
    """A slice to segment, as copied out of MRML at click time."""

    grid: VolumeOnGrid
    grid_key: tuple
    prompt: SlicePrompt
    window: str

    @property
    def axis(self) -> str:
        return self.prompt.axis

    @property
    def request(self) -> SliceRequest:
        """What the engine gets: the slice index and its box."""
        return SliceRequest(int(self.prompt.index), self.prompt.box)

    @property
    def remote_key(self) -> RemoteKey:
        """(grid key, window, axis): the engine session this work needs."""
        return self.grid_key, self.window, self.axis


@dataclass
class PropagationInput:
    """A propagation from key boxes, as copied out of MRML at click time."""

    grid: VolumeOnGrid
    grid_key: tuple
    prompts: list  # SlicePrompt, one per key box, all along the same axis
    window: str
    settings: PropagationSettings

    @property
    def axis(self) -> str:
        return self.prompts[0].axis

    @property
    def slice_range(self) -> Optional[tuple]:
        return self.settings.slice_range

    @property
    def key_boxes(self) -> dict[int, Box]:
        return {int(p.index): p.box for p in self.prompts}

    @property
    def remote_key(self) -> RemoteKey:
        return self.grid_key, self.window, self.axis


class OwnJob(Protocol):
    """Work that starts and finishes its own engine job (the review actions of ``object_review``): stepped like
    the others, its ``finish`` writes the result and says what the poll reports.  ``grid``, ``grid_key`` and
    ``window`` are what the logic checks and writes against, as for the other inputs."""

    @property
    def grid(self) -> VolumeOnGrid: ...

    @property
    def grid_key(self) -> tuple: ...

    @property
    def window(self) -> str: ...

    @property
    def remote_key(self) -> RemoteKey: ...

    def start_job(self, remote: Any, budget: float, request_id: str) -> Any: ...

    def finish(self, pending: "PendingOperation", result: dict) -> "Progress": ...


WorkInput = Union[SliceInput, PropagationInput, OwnJob]


@dataclass
class Outcome:
    """What the engine produced, with what it cost."""

    seconds: float
    encoder_calls: int
    slice_result: Optional[SliceResult] = None
    propagation: Optional[PropagationResult] = None
    window: str = ""  # the window actually used, for the user


@dataclass
class Progress:
    """What ``poll()`` says (see :class:`ProgressState`): "idle", "waiting", "running", then once: "done"
    (``operation`` and ``outcome`` set), "failed" or "cancelled" (``message`` says why; nothing was written)."""

    state: ProgressState
    title: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    operation: Optional[Operation] = None
    outcome: Optional[Outcome] = None
    error: Optional[BaseException] = None  # what failed (scripts re-raise it; front ends show ``message``)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def busy(self) -> bool:
        return self.state in (ProgressState.WAITING, ProgressState.RUNNING)


@dataclass
class PendingOperation:
    """An operation between its click and its write."""

    title: str
    volume_node_id: str
    request: WorkInput
    segmentation_id: str  # target fixed at click time ("" = a new segmentation)
    segment_id: str  # "" = a new segment
    writer: Optional[Callable[..., None]]  # box_segmentation.Writer
    started: float = field(default_factory=time.monotonic)
    job: Any = None  # RemoteJob once started
    remote: Any = None  # RemoteVolume
    encoder_calls_before: int = 0
    failed_polls: int = 0
    last_answer: float = field(default_factory=time.monotonic)  # when the engine last answered a request
    cancel_requested: bool = False
    engine_ready: bool = False  # the engine said it has its model (no more health checks)
    request_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))  # a retried start is the same job
    message: str = ""  # what the operation is doing now (the last step's words)
    reopened: bool = False  # the engine had lost the volume session once already


@dataclass
class PrefetchWish:
    """Slices to encode ahead on the engine, for the volume session ``key`` = (grid key, window, axis)."""

    key: RemoteKey
    grid: Any
    indices: list
    failures: int = 0
    last_answer: float = field(default_factory=time.monotonic)  # when a step of it last got an answer


# Writes a finished operation's outcome (MRML, undo, time log) and returns the undo step.
Finish = Callable[[PendingOperation, Outcome], Operation]


class EngineJobs:
    """The pending operation and the prefetch wish, stepped against the engine by :meth:`poll`."""

    def __init__(self, volumes: RemoteVolumes, finish: Finish) -> None:
        self.volumes = volumes
        self.finish = finish
        self.pending: Optional[PendingOperation] = None
        self.prefetch_wish: Optional[PrefetchWish] = None

    def start(self, pending: PendingOperation) -> PendingOperation:
        if self.pending is not None:
            raise MedSAMError(f"{self.pending.title} is still running; wait for it or cancel it first")
        self.volumes.require_engine()
        self.pending = pending
        return pending

    def poll(self) -> Progress:
        """Advance the pending operation by short steps (``POLL_TIMEOUT`` in all).  With no operation pending it
        advances the prefetch wish and says "idle"."""
        pending = self.pending
        if pending is None:
            if self.prefetch_wish is not None:
                self._advance_prefetch(POLL_TIMEOUT)
            return Progress(ProgressState.IDLE)
        try:
            progress = self._advance(pending)
        except Cancelled as error:
            progress = Progress(ProgressState.CANCELLED, pending.title, message=str(error) or
                                f"{pending.title} cancelled; nothing was written", error=error)
        except MedSAMError as error:  # every failure reaches the user as one line; nothing written
            progress = Progress(ProgressState.FAILED, pending.title, message=user_message(error), error=error)
        except Exception as error:  # a bug or an OS error: one line for the user too, the traceback in the log
            log.warning("%s failed", pending.title, exc_info=True)
            progress = Progress(ProgressState.FAILED, pending.title, message=user_message(error), error=error)
        if progress.finished:
            self.pending = None
        return progress

    def _advance(self, pending: PendingOperation) -> Progress:
        """Steps while time is left in this poll: each request's timeout is what is left (``POLL_TIMEOUT`` at most).
        A request that times out ends the poll; the next poll retries it."""
        engine = self.volumes.require_engine()
        if pending.cancel_requested:
            self._deliver_cancel(pending)
            raise Cancelled(f"{pending.title} cancelled; nothing was written")
        deadline = time.monotonic() + POLL_TIMEOUT
        first = True
        if not pending.engine_ready:
            waiting = self._engine_waiting(engine, pending)  # one health request; raises when the engine is gone
            if waiting is not None:
                return waiting
            pending.engine_ready, pending.failed_polls, first = True, 0, False
            pending.last_answer = time.monotonic()
        while True:
            budget = min(POLL_TIMEOUT, deadline - time.monotonic())
            if not first and budget < MIN_STEP:
                return self._running(pending)
            try:
                progress = self._step(pending, budget)
            except EngineUnavailable:
                if not first:  # a later step ran out of this poll's time: the next poll retries it in full
                    return self._running(pending)
                pending.failed_polls += 1
                if _unreachable(pending) or _local_engine_exited(engine):
                    raise EngineUnavailable(f"the engine stopped answering during '{pending.title}'; nothing was "
                                            "written. Check the engine (Model section) and run it again") from None
                return Progress(ProgressState.RUNNING, pending.title, message="waiting for the engine")
            pending.failed_polls, pending.last_answer = 0, time.monotonic()
            if progress is not None:
                return progress
            first = False

    def _step(self, pending: PendingOperation, budget: float) -> Optional[Progress]:
        """One short step (local work or one request of at most ``budget`` s); a Progress when the poll should
        report now, None when the next step can follow at once."""
        request = pending.request
        if pending.remote is None:  # 1. the volume on the engine (sent once per content, opened once per window)
            remote = self.volumes.open_step(request.grid, *request.remote_key, budget)
            if remote is None:
                opening = self.volumes.opening(request.remote_key)
                pending.message = opening.message if opening is not None else "sending the volume to the engine"
                return None
            pending.remote = remote
            return None
        if pending.job is None:  # 2. the work starts as a job on the engine (the same request id if repeated)
            if isinstance(request, SliceInput):
                pending.job = self._start_slice_job(pending, request, budget)
            elif isinstance(request, PropagationInput):
                pending.job = pending.remote.propagate(request.key_boxes, request.settings, timeout=budget,
                                                       request_id=pending.request_id)
            else:
                pending.job = request.start_job(pending.remote, budget, pending.request_id)
            pending.message = "segmenting" if isinstance(request, SliceInput) else "propagating"
            return None
        status = pending.job.status
        if not status.finished:  # 3. progress (a long poll for half the time left: a quick job answers now)
            status = pending.job.poll(timeout=budget / 2, request_timeout=budget)
            if status.state is JobState.RUNNING:
                return Progress(ProgressState.RUNNING, pending.title, status.done, status.total, status.message or
                                pending.message)
            if status.state is not JobState.DONE:
                pending.job.raise_failure()
            return None  # the result at the next step, with the time left
        result = pending.job.result(timeout=budget)  # 4. the result, then the write (a timeout: retried, R10)
        if isinstance(request, SliceInput):
            return self._finish_slice(pending, request, result)
        if isinstance(request, PropagationInput):
            return self._finish_propagation(pending, result)
        return request.finish(pending, result)

    def _start_slice_job(self, pending: PendingOperation, request: SliceInput, budget: float) -> Any:
        try:
            return pending.remote.start_segment(request.request, timeout=budget, request_id=pending.request_id)
        except ServiceError as error:
            if error.code != "not_found" or pending.reopened:
                raise
        # The engine no longer knows the session (it expired while idle, or the engine restarted): open it again.
        self.volumes.forget(request.remote_key)
        pending.remote, pending.reopened = None, True
        return None

    def _running(self, pending: PendingOperation) -> Progress:
        if pending.job is not None:
            status = pending.job.status
            return Progress(ProgressState.RUNNING, pending.title, status.done, status.total, pending.message)
        opening = self.volumes.opening(pending.request.remote_key) if pending.remote is None else None
        if opening is not None:
            return Progress(ProgressState.RUNNING, pending.title, opening.done * 100 // max(opening.total, 1), 100,
                            opening.message)
        return Progress(ProgressState.RUNNING, pending.title, message=pending.message)

    def _engine_waiting(self, engine: Any, pending: PendingOperation) -> Optional[Progress]:
        """None when the engine is ready; else a "waiting" progress (model loading), or an error when it is gone."""
        try:
            health = engine.health(timeout=POLL_TIMEOUT)
        except EngineUnavailable:
            if _local_engine_exited(engine) or time.monotonic() - pending.started > STARTUP_TIMEOUT:
                raise
            pending.failed_polls += 1
            if _unreachable(pending) and getattr(engine, "process", None) is None:
                raise  # a remote server that does not answer: say so instead of waiting
            return Progress(ProgressState.WAITING, pending.title, message="waiting for the engine to answer")
        pending.failed_polls, pending.last_answer = 0, time.monotonic()
        if health.get("ready", True):
            return None
        if time.monotonic() - pending.started > STARTUP_TIMEOUT:
            raise EngineUnavailable("the engine did not finish loading its model in time; see its log (Model "
                                    "section) and try again")
        return Progress(ProgressState.WAITING, pending.title,
                        message=f"engine: {health.get('loading') or 'loading the model'}")

    def _finish_slice(self, pending: PendingOperation, request: SliceInput, result: dict) -> Progress:
        prompt = request.prompt
        outcome = Outcome(_seconds(result, pending), int(result.get("encoder_calls", 0)),
                          slice_result=SliceResult.from_json(result, int(prompt.index), prompt.box),
                          window=_window_text(pending.remote))
        operation = self.finish(pending, outcome)
        return Progress(ProgressState.DONE, pending.title, 1, 1, operation.description, operation, outcome)

    def _finish_propagation(self, pending: PendingOperation, result: dict) -> Progress:
        propagation = PropagationResult.from_json(result)
        outcome = Outcome(_seconds(result, pending), int(result.get("encoder_calls", 0)), propagation=propagation,
                          window=_window_text(pending.remote))
        operation = self.finish(pending, outcome)
        total = propagation.segmented_slices
        return Progress(ProgressState.DONE, pending.title, total, total, operation.description, operation, outcome)

    def cancel(self) -> None:
        """Stop the pending operation: the next ``poll`` reports "cancelled" (nothing is written) and the engine is
        told to stop (between two slices; one short request, retried once by that poll)."""
        pending = self.pending
        if pending is None:
            return
        pending.cancel_requested = True
        self._deliver_cancel(pending)

    @staticmethod
    def _deliver_cancel(pending: PendingOperation) -> None:
        job, pending.job = pending.job, None  # at most once per job
        if job is None or job.status.finished:
            return
        try:
            job.cancel(timeout=CANCEL_TIMEOUT)
        except MedSAMError as error:  # the engine is gone or slow: it stops jobs nobody polls by itself
            pending.job = job
            log.info("cancel not delivered: %s", error)

    def reset(self) -> None:
        """Forget the pending operation (its engine job is told to stop) and the prefetch wish."""
        pending, self.pending = self.pending, None
        if pending is not None and pending.job is not None:
            self._deliver_cancel(pending)
        self.prefetch_wish = None

    # -- prefetch -------------------------------------------------------------------------------------------------
    def wish_prefetch(self, key: RemoteKey, grid: Any, indices: list) -> None:
        """Encode ``indices`` ahead in the session ``key`` (the latest wish wins); one step now when idle."""
        self.prefetch_wish = PrefetchWish(key, grid, indices)
        if self.pending is None:
            self._advance_prefetch(POLL_TIMEOUT)

    def _advance_prefetch(self, budget: float) -> None:
        """One step of the wished prefetch: send the volume (a step of it), or, once it is there, the request."""
        wish = self.prefetch_wish
        if wish is None:
            return
        try:
            remote = self.volumes.session(wish.key)
            if remote is None:
                self.volumes.open_step(wish.grid, *wish.key, budget)  # the request goes at the next poll
                wish.failures, wish.last_answer = 0, time.monotonic()
                return
            remote.prefetch(wish.indices, timeout=budget)
            self.prefetch_wish = None
        except EngineUnavailable as error:  # slow or gone: retried at the next polls, then given up
            wish.failures += 1
            if wish.failures >= UNREACHABLE_POLLS and time.monotonic() - wish.last_answer >= UNREACHABLE_SECONDS:
                log.info("prefetch given up: %s", first_line(error))
                self.prefetch_wish = None
        except ServiceError as error:
            if error.code == "not_found":
                self.volumes.forget(wish.key)  # the session expired: opened again at the next poll
                return
            log.info("prefetch not sent: %s", first_line(error))
            self.prefetch_wish = None
        except Exception as error:  # a prefetch never reaches the user (the operation reports); kept in the log
            log.info("prefetch not sent: %s", first_line(error), exc_info=not isinstance(error, MedSAMError))
            self.prefetch_wish = None


def _unreachable(pending: PendingOperation) -> bool:
    return pending.failed_polls >= UNREACHABLE_POLLS and \
        time.monotonic() - pending.last_answer >= UNREACHABLE_SECONDS


def _local_engine_exited(engine: Any) -> bool:
    process = getattr(engine, "process", None)
    return process is not None and process.poll() is not None


def _seconds(result: dict, pending: PendingOperation) -> float:
    return float(result.get("seconds", time.monotonic() - pending.started))


def _window_text(remote: Any) -> str:
    window = getattr(remote, "window", "") or ""
    reason = getattr(remote, "window_reason", "") or ""
    return f"{window} ({reason})" if reason else str(window)


__all__ = ["CANCEL_TIMEOUT", "EngineJobs", "MIN_STEP", "Outcome", "POLL_TIMEOUT", "PendingOperation",
           "PrefetchWish", "Progress", "ProgressState", "PropagationInput", "SliceInput", "STARTUP_TIMEOUT",
           "UNREACHABLE_POLLS", "UNREACHABLE_SECONDS", "WorkInput"]
