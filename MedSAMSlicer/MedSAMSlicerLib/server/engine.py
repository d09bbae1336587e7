"""The server's state: one model, one embedding cache, the uploaded volumes, the clients' sessions and jobs.

- The model loads in the background at start (``/health`` answers at once and says what is loading); requests that
  need it wait for it.  All network calls go through the one :class:`ModelWorker`.
- Sessions belong to the client that opened them (token + client id); another client gets 404, as if it did not
  exist.  Sessions of the same volume, window and axis share one prepared (windowed) volume, and every session uses
  the one :class:`EmbeddingCache`, keyed by content fingerprint: the encoder runs at most once per slice per volume.
- Limits: ``max_sessions``; idle sessions expire; a job nobody polls for ``job_heartbeat`` seconds (its client
  crashed or disconnected) is cancelled at its next slice; volumes and embeddings live within ``memory_bytes``.
- Jobs: a propagation always runs as a job; a slice segmentation, a session opening and a local hand-over can run as
  one too (``"async": true``), so that a GUI only ever makes short requests (start, poll, fetch the result) and never
  waits on an encoder.  A start request may carry a ``request_id``: repeating it (the client's short request timed
  out before the answer came) returns the same job instead of starting a second one.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, TypeVar

import numpy as np

from .. import protocol
from ..engine import (
    AUTO,
    CancelToken,
    CorrectableObject,
    EmbeddingCache,
    PropagationOptions,
    VolumeSession,
    propagate,
    propagation_options,
)
from ..engine.prefetch import Foreground, prefetch_cap, prefetch_loop
from ..errors import BoxError, Cancelled, MedSAMError, ServiceError, first_line
from ..protocol import Box, JobState, PropagationResult, PropagationSettings, SessionSpec, SliceRequest, SliceResult
from ..protocol.axes import take_slice
from ..protocol.boxes import checked_box
from ..protocol.wire import pack_mask
from .volumes import VolumeStore, checked_fingerprint, checked_volume, sweep_private_dir
from .worker import INTERACTIVE, PREFETCH, PROPAGATION, ModelWorker, SerialSegmenter, priority

log = logging.getLogger(__name__)


class _HasOwner(Protocol):
    owner: str


class _Used(Protocol):  # a session, here and on the Ray ingress
    owner: str
    last_used: float  # time.monotonic() of its last use: the idle sweep closes sessions unused too long


class _Polled(Protocol):  # a job, here and on the Ray ingress
    owner: str
    session_id: str
    last_seen: float  # time.monotonic() of its last poll: a job nobody polls is cancelled


Owned = TypeVar("Owned", bound=_HasOwner)  # sessions and jobs, here and on the Ray ingress
UsedT = TypeVar("UsedT", bound=_Used)
PolledT = TypeVar("PolledT", bound=_Polled)
NO_SUCH_SESSION = "no such session (it expired, was closed, or belongs to another client)"
NO_SUCH_JOB = "no such job (it finished long ago, or belongs to another client)"
_MiB = 1 << 20
_job_local = threading.local()  # the job whose thread is running, to count its encoder calls


@dataclass
class ServerConfig:
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str = "auto"
    backend: str = "auto"
    precision: str = "exact"
    cache_dir: str | None = None
    fp16_cache: bool = False
    max_sessions: int = 32
    idle_timeout: float = 1800.0
    max_upload_bytes: int = 512 * _MiB
    memory_bytes: int = 4096 * _MiB  # embeddings get half, volumes (raw + windowed) the other half
    job_heartbeat: float = 30.0


class CountingSession(VolumeSession):
    """A prepared volume shared by every client session on it; counts the encoder calls made for it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder_calls = 0
        self._count_lock = threading.Lock()

    def embedding(self, index: int):
        self.check_index(index)

        def compute():
            with self._count_lock:
                self.encoder_calls += 1
            job = getattr(_job_local, "job", None)
            if job is not None:
                job.encoder_calls += 1
            return self.segmenter.embed(take_slice(self.image, self.np_axis, index))

        return self.cache.get_or_compute(self.cache_key(index), compute)


@dataclass
class ClientSession:
    id: str
    owner: str
    key: tuple  # of the prepared volume
    prepared: CountingSession
    last_used: float = field(default_factory=time.monotonic)
    prefetch_stop: threading.Event = field(default_factory=threading.Event)
    objects: dict = field(default_factory=dict)  # object id -> CorrectableObject (corrective boxes)
    object_lock: threading.Lock = field(default_factory=threading.Lock)  # one action at a time per session

    def describe(self) -> dict:
        p = self.prepared
        return {"session_id": self.id, "fingerprint": self.key[0], "shape": list(p.image.shape),
                "slice_count": p.slice_count, "slice_shape": list(p.slice_shape), "np_axis": p.np_axis,
                "axis": p.axis_name, "window": p.window.describe(), "window_reason": p.window_reason,
                "encoder_calls": p.encoder_calls}


@dataclass
class Job:
    id: str
    owner: str
    session_id: str
    total: int
    cancel: CancelToken = field(default_factory=CancelToken)
    state: JobState = JobState.RUNNING
    done: int = 0
    message: str = ""
    error: dict | None = None
    result: dict | None = None
    encoder_calls: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def describe(self) -> dict:
        return {"job_id": self.id, "state": self.state, "done": self.done, "total": self.total,
                "message": self.message, "error": self.error}

    def update(self, **values) -> None:
        with self.changed:
            for name, value in values.items():
                setattr(self, name, value)
            self.changed.notify_all()


class _WarningLog(logging.Handler):
    """Keeps the server's last warnings for ``/info`` (e.g. the disk cache falling back to memory)."""

    def __init__(self, keep: deque) -> None:
        super().__init__(logging.WARNING)
        self.keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self.keep.append(record.getMessage()[:300])


class Engine:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.started = time.time()
        self.ready = threading.Event()
        self.loading = "starting"
        self.load_error: str | None = None
        self.segmenter: SerialSegmenter | None = None
        self.worker = ModelWorker()
        self.warnings: deque = deque(maxlen=20)
        logging.getLogger("MedSAMSlicerLib").addHandler(_WarningLog(self.warnings))
        self.cache = EmbeddingCache(memory_budget=config.memory_bytes // 2, store_fp16=config.fp16_cache,
                                    disk_dir=config.cache_dir)
        self.private_dir = Path(tempfile.mkdtemp(prefix="medsam-serve-"))  # 0700
        self.volumes = VolumeStore(config.memory_bytes // 2, self.private_dir)
        self.sessions: dict[str, ClientSession] = {}
        self.prepared: dict[tuple, CountingSession] = {}
        self.jobs: dict[str, Job] = {}
        self.requests: dict[tuple[str, str], str] = {}  # (owner, request_id) -> job id: a repeated start is one job
        self.expired_sessions = 0
        self.cancelled_unpolled_jobs = 0
        self.baseline_rss = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.foreground = Foreground()  # jobs running: a prefetch waits for them

    # -- lifetime -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._reap, name="medsam-reaper", daemon=True).start()

    def load(self) -> None:
        """Load the model.  Call it from the main thread: measured, a model built in another thread decodes ~3x
        slower afterwards (OpenVINO/oneDNN thread set-up), whichever thread then runs it."""
        from ..engine.backends import make_segmenter

        self.loading = f"model {self.config.model} on {self.config.device}"
        try:
            extra = {"precision": self.config.precision} if self.config.precision != "exact" else {}
            segmenter = make_segmenter(self.config.model, self.config.checkpoint, self.config.device,
                                       self.config.backend, **extra)
        except Exception as error:  # shown by /health and every request that needs the model
            self.load_error = first_line(error)
            log.error("cannot load the model: %s", self.load_error)
            self.loading = ""
            return
        self.segmenter = SerialSegmenter(segmenter, self.worker)
        self.baseline_rss = _rss()
        self.loading = ""
        self.ready.set()
        log.info("%s; encoder backend %s", segmenter.model.describe(), segmenter.backend_name)

    def wait_ready(self, timeout: float = 600.0) -> SerialSegmenter:
        if not self.ready.wait(timeout) or self.segmenter is None:
            if self.load_error:
                raise ServiceError(f"the engine could not load its model: {self.load_error}", "internal", 500)
            raise ServiceError(f"the engine is still loading ({self.loading})", "loading", 503)
        return self.segmenter

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            for job in self.jobs.values():
                job.cancel.cancel()
            for session in self.sessions.values():
                session.prefetch_stop.set()
        self.worker.stop()
        shutil.rmtree(self.private_dir, ignore_errors=True)

    def _reap(self) -> None:
        """Expire idle sessions and cancel jobs nobody polls (a crashed or disconnected client)."""
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                for job in self.jobs.values():
                    if (job.state is JobState.RUNNING and not job.cancel.cancelled
                            and now - job.last_seen > self.config.job_heartbeat):
                        log.info("job %s: its client stopped polling; cancelling it", job.id[:8])
                        job.cancel.cancel()
                        job.message = "cancelled: the client stopped polling"
                        self.cancelled_unpolled_jobs += 1
                busy = {j.session_id for j in self.jobs.values() if j.state is JobState.RUNNING}
                for session in list(self.sessions.values()):
                    if session.id not in busy and now - session.last_used > self.config.idle_timeout:
                        self._close(session)
                        self.expired_sessions += 1
                for job in [j for j in self.jobs.values() if j.state is not JobState.RUNNING
                            and now - j.last_seen > self.config.idle_timeout]:
                    del self.jobs[job.id]
                self.requests = {k: v for k, v in self.requests.items() if v in self.jobs}
            sweep_private_dir(self.private_dir)

    # -- volumes ------------------------------------------------------------------------------------------------
    def _in_use(self) -> set[str]:
        return {key[0] for key in self.prepared}

    def _prepared_bytes(self) -> int:
        return sum(p.image.nbytes for p in self.prepared.values())

    def has_volume(self, fingerprint: str) -> bool:
        return checked_fingerprint(fingerprint) in self.volumes

    def volume_from_file(self, fingerprint: str, name: str) -> dict:
        """Local mode: keep the volume a client wrote into the private folder (read, checked, then removed)."""
        array = self.volumes.read_private_file(name, self.config.memory_bytes // 2)
        self.add_volume(fingerprint, array)
        return {"present": True, "fingerprint": fingerprint}

    def start_volume_from_file(self, owner: str, fingerprint: str, name: str, request_id: str | None) -> dict:
        """:meth:`volume_from_file` as a job (reading and hashing a large volume takes a while)."""
        checked_fingerprint(fingerprint)
        job, new = self._new_job(owner, "", 1, request_id)
        if new:
            self._launch(job, lambda: self.volume_from_file(fingerprint, name), "volume")
        return job.describe()

    def add_volume(self, fingerprint: str, array: np.ndarray) -> None:
        checked_volume(array, checked_fingerprint(fingerprint))
        with self._lock:
            self.volumes.budget_bytes = self.config.memory_bytes // 2 - self._prepared_bytes()
            self.volumes.add(fingerprint, array, self._in_use())

    # -- sessions -----------------------------------------------------------------------------------------------
    def open_session(self, owner: str, fingerprint: str, spec: SessionSpec) -> dict:
        segmenter = self.wait_ready()
        array = self.volumes.get(checked_fingerprint(fingerprint))
        spec = spec.in_frame("LPS")
        key = (fingerprint, *spec.key())
        with self._lock:
            mine = sum(1 for s in self.sessions.values())
            if mine >= self.config.max_sessions:
                raise ServiceError(f"the server holds its maximum of {self.config.max_sessions} sessions; close one "
                                   f"or wait for idle ones to expire", "too_many_sessions", 429)
            prepared = self.prepared.get(key)
            if prepared is None:
                prepared = CountingSession(segmenter, spec.volume(array), spec.window, spec.axis, self.cache)
                room = self.config.memory_bytes // 2 - self.volumes.bytes - self._prepared_bytes()
                if prepared.image.nbytes > room:
                    raise ServiceError(f"the server's volume memory ({self.config.memory_bytes // 2 >> 20} MiB) is "
                                       f"full; close other sessions", "memory_full", 507)
                self.prepared[key] = prepared
            session = ClientSession(secrets.token_urlsafe(16), owner, key, prepared)
            self.sessions[session.id] = session
        return session.describe()

    def start_open_session(self, owner: str, request_id: str | None, fingerprint: str, spec: SessionSpec) -> dict:
        """:meth:`open_session` as a job (it waits for the model and windows the whole volume); its result is the
        session's description.  A job cancelled before it ends closes the session it opened."""
        checked_fingerprint(fingerprint)
        job, new = self._new_job(owner, "", 1, request_id)
        if new:
            self._launch(job, lambda: self.open_session(owner, fingerprint, spec), "open",
                         discard=lambda opened: self._close_quietly(owner, opened["session_id"]))
        return job.describe()

    def _close_quietly(self, owner: str, session_id: str) -> None:
        try:
            self.close_session(owner, session_id)
        except ServiceError:
            pass

    def session(self, owner: str, session_id: str) -> ClientSession:
        return used_session(self._lock, self.sessions, session_id, owner)

    def close_session(self, owner: str, session_id: str) -> None:
        with self._lock:
            self._close(self.session(owner, session_id))

    def _close(self, session: ClientSession) -> None:
        session.prefetch_stop.set()
        for job in self.jobs.values():
            if job.session_id == session.id:
                job.cancel.cancel()
        del self.sessions[session.id]
        if not any(s.key == session.key for s in self.sessions.values()):
            self.prepared.pop(session.key, None)  # the embeddings stay in the shared cache

    # -- model work ---------------------------------------------------------------------------------------------
    def segment(self, owner: str, session_id: str, prompt: SliceRequest) -> tuple:
        session = self.session(owner, session_id)
        result = session.prepared.segment(prompt)
        session.last_used = time.monotonic()
        return result.mask, result.score

    def start_segment(self, owner: str, session_id: str, prompt: SliceRequest, request_id: str | None) -> dict:
        """:meth:`segment` as a job: the answer comes at once, the encoder (when the slice is not cached) runs on the
        model worker at the interactive priority, ahead of propagations and prefetch; the result is
        ``{"mask", "score", "encoder_calls", "seconds"}``."""
        session = self.session(owner, session_id)
        session.prepared.check_index(prompt.index)  # a slice outside the volume or a bad box: refused now, not later
        checked_box(prompt.box, session.prepared.slice_shape, prompt.allow_degenerate)
        job, new = self._new_job(owner, session.id, 1, request_id)
        if new:
            def work() -> dict:
                mask, score = self.segment(owner, session_id, prompt)
                result = SliceResult(prompt.index, mask, score, prompt.box).to_json()
                return {"mask": result["mask"], "score": result["score"]}

            self._launch(job, work, "segment", discard=lambda result: None)
        return job.describe()

    def prefetch(self, owner: str, session_id: str, indices: list[int]) -> None:
        session = self.session(owner, session_id)
        for index in indices:
            session.prepared.check_index(index)
        session.prefetch_stop.set()  # replaces this session's previous request
        stop = session.prefetch_stop = threading.Event()
        indices = list(indices)[:prefetch_cap(self.cache)]  # never evicts the slices in use

        def run() -> None:
            with priority(PREFETCH):  # and between two slices it waits while a job runs (engine/prefetch.py)
                prefetch_loop(indices, session.prepared.embedding, stop, self.foreground, self._stop)

        threading.Thread(target=run, name="medsam-prefetch", daemon=True).start()

    def start_job(self, owner: str, session_id: str, key_boxes: dict[int, Box], settings: PropagationSettings,
                  request_id: str | None = None) -> dict:
        session = self.session(owner, session_id)
        self.wait_ready()
        prepared = session.prepared
        options = propagation_options(settings)
        if not key_boxes:
            raise BoxError("propagation needs at least one key box")
        # a job's size for its progress: an open (None) end counts to the volume's edge
        low, high = settings.slice_range or (None, None)
        low, high = (0 if low is None else low), (prepared.slice_count - 1 if high is None else high)
        job, new = self._new_job(owner, session.id, max(0, high - low + 1), request_id)
        if not new:
            return job.describe()

        def progress(done: int, total: int) -> None:
            job.update(done=done, total=total)

        def work() -> dict:
            result = propagate(prepared, key_boxes, options, progress, job.cancel)
            return PropagationResult(result.mask, result.segmented_slices, result.stopped, result.scores).to_json()

        self._launch(job, work, "propagation", level=PROPAGATION)
        return job.describe()

    def start_object(self, owner: str, session_id: str, start: protocol.ObjectStart,
                     request_id: str | None = None) -> dict:
        """Propagate a new correctable object (a job, as :meth:`start_job`); its result adds ``object_id``, after
        which :meth:`start_object_action` applies corrective boxes, range cuts, accepts and undos to it."""
        session = self.session(owner, session_id)
        self.wait_ready()
        if not start.key_boxes:
            raise BoxError("an object needs at least one key box")
        key_boxes = start.key_boxes
        settings = PropagationOptions(rule="ours", slice_range=start.slice_range, margin=start.margin,
                                      stop=AUTO if start.stop else None)
        job, new = self._new_job(owner, session.id, session.prepared.slice_count, request_id)
        if not new:
            return job.describe()

        def work() -> dict:
            target = CorrectableObject(session.prepared, settings)
            with session.object_lock:
                change = target.start(key_boxes)
                object_id = secrets.token_urlsafe(12)
                session.objects[object_id] = target
            return self._object_answer(object_id, target, change)

        self._launch(job, work, "object", level=PROPAGATION)
        return job.describe()

    @staticmethod
    def _object_answer(object_id: str, target: CorrectableObject, change) -> dict:
        return {"object_id": object_id, "mask": pack_mask(target.mask), "action": change.action, "slice": change.slice,
                "changed": change.changed, "decoder_calls": change.decoder_calls, "stopped": change.stopped,
                "scores": {k: float(v) for k, v in target.scores.items()}, "locked": sorted(target.locked),
                "doubtful": target.doubtful(),
                "keys": {str(k): [b.x0, b.y0, b.x1, b.y1] for k, b in target.keys.items()},
                "range": [target.low, target.high]}

    def start_object_action(self, owner: str, session_id: str, object_id: str, step: protocol.ObjectAction,
                            request_id: str | None = None) -> dict:
        """One undoable step on an object, as a job at the interactive priority: ``box`` (a corrective key box:
        only the stretch it improves is recomputed, from the cache), ``cut`` (the object ends before ``index``),
        ``accept`` (lock the slice), ``edit`` (the slice takes the hand-edited ``mask`` and is locked), ``undo``.
        The result is the whole object plus what changed."""
        action, index, box, mask = step.action, step.index, step.box, step.mask
        session = self.session(owner, session_id)
        target = session.objects.get(object_id)
        if target is None:
            raise ServiceError("no such object in this session", "not_found", 404)
        if action != "undo":
            if index is None:
                raise BoxError(f"the {action} action needs a slice index")
            session.prepared.check_index(index)
        if action == "box":
            if box is None:
                raise BoxError("the box action needs a box")
            checked_box(box, session.prepared.slice_shape)
        if action == "edit" and (mask is None or mask.shape != session.prepared.slice_shape):
            raise BoxError(f"the edit action needs the slice's mask, shape {session.prepared.slice_shape}")
        job, new = self._new_job(owner, session.id, 1, request_id)
        if not new:
            return job.describe()

        def work() -> dict:
            with session.object_lock:
                if action == "box":
                    change = target.add_box(index, box)
                elif action == "cut":
                    change = target.cut(index)
                elif action == "accept":
                    change = target.accept(index)
                elif action == "edit":
                    change = target.set_slice(index, mask)
                else:
                    if not target.undo():
                        raise BoxError("nothing to undo")
                    change = type("Undone", (), {"action": "undo", "slice": -1, "changed": [], "decoder_calls": 0,
                                                 "stopped": {}})()
                return self._object_answer(object_id, target, change)

        self._launch(job, work, "correction", level=INTERACTIVE)
        return job.describe()

    def _new_job(self, owner: str, session_id: str, total: int, request_id: str | None) -> tuple[Job, bool]:
        """A new job, or (with a ``request_id`` seen before from this client) the job that request started."""
        with self._lock:
            if request_id:
                known = self.jobs.get(self.requests.get((owner, request_id), ""))
                if known is not None:
                    return known, False
            job = Job(secrets.token_urlsafe(16), owner, session_id, total)
            self.jobs[job.id] = job
            if request_id:
                self.requests[(owner, request_id)] = job.id
        return job, True

    def _launch(self, job: Job, work: Callable[[], dict], kind: str, level: int = INTERACTIVE,
                discard: Optional[Callable[[dict], None]] = None) -> None:
        """Run ``work`` for ``job`` in a thread of its own, its model calls queued at ``level``.  Its dict result
        (a mask packed for the wire now, so that fetching it is quick), or its error in one line, lands on the job.
        With ``discard``, work that cannot stop half-way finishes and, when the job was cancelled meanwhile, its
        result is handed to ``discard`` and the job ends "cancelled"."""

        def run() -> None:
            _job_local.job = job
            start = time.perf_counter()
            try:
                with self.foreground, priority(level):
                    result = work()
            except Cancelled as error:
                job.update(state=JobState.CANCELLED, message=job.message or str(error))
                return
            except MedSAMError as error:
                body: dict[str, object] = {"code": error.code, "message": str(error)}
                if isinstance(error, ServiceError):
                    body["status"] = error.status
                job.update(state=JobState.FAILED, message=str(error), error=body)
                return
            except Exception as error:  # a bug: keep the server alive, tell the client one line
                log.exception("%s job %s failed", kind, job.id[:8])
                job.update(state=JobState.FAILED, message=first_line(error),
                           error={"code": "internal", "message": first_line(error)})
                return
            finally:
                _job_local.job = None
            if discard is not None and job.cancel.cancelled:
                discard(result)
                job.update(state=JobState.CANCELLED, message=job.message or f"{kind} cancelled")
                return
            result = dict(result, encoder_calls=job.encoder_calls, seconds=round(time.perf_counter() - start, 3))
            job.update(result=result, state=JobState.DONE, done=job.total if job.total else job.done)

        threading.Thread(target=run, name=f"medsam-{kind}-{job.id[:8]}", daemon=True).start()

    def job(self, owner: str, job_id: str, wait: float = 0.0) -> Job:
        job = polled_job(self._lock, self.jobs, self.sessions, job_id, owner)
        if wait > 0 and job.state is JobState.RUNNING:
            seen = (job.state, job.done)
            with job.changed:
                job.changed.wait_for(lambda: (job.state, job.done) != seen, timeout=min(wait, 10.0))
        job.last_seen = time.monotonic()
        return job

    def cancel_job(self, owner: str, job_id: str) -> dict:
        job = self.job(owner, job_id)
        job.cancel.cancel()
        return job.describe()

    # -- figures ------------------------------------------------------------------------------------------------
    def info(self) -> dict:
        segmenter = self.segmenter
        stats = self.cache.stats
        with self._lock:
            running = sum(1 for j in self.jobs.values() if j.state is JobState.RUNNING)
            volumes = {key[0][:16]: p.encoder_calls for key, p in self.prepared.items()}
            prepared_bytes = self._prepared_bytes()
        model = {}
        if segmenter is not None:
            m = segmenter.model
            model = {"model": m.name, "title": m.entry.title, "checkpoint_sha256": m.checkpoint.sha256,
                     "checkpoint_verified": m.checkpoint.verified, "device": str(m.device),
                     "device_reason": m.device_choice.reason, "backend": segmenter.backend_name,
                     "encoder_calls": segmenter.encoder.calls}
        return {**model, "ready": self.ready.is_set(), "sessions": len(self.sessions), "jobs_running": running,
                "max_sessions": self.config.max_sessions, "idle_timeout_s": self.config.idle_timeout,
                "max_upload_bytes": self.config.max_upload_bytes, "volume_uploads": self.volumes.uploads,
                "volume_bytes": self.volumes.bytes + prepared_bytes,
                "encoder_calls_by_volume": volumes, "queued_model_calls": self.worker.queued(),
                "expired_sessions": self.expired_sessions, "cancelled_unpolled_jobs": self.cancelled_unpolled_jobs,
                "cache": {"hits": stats.hits, "misses": stats.misses, "disk_hits": stats.disk_hits,
                          "disk_writes": stats.disk_writes, "bytes": stats.bytes,
                          "memory_budget": self.cache.memory_budget,
                          "disk_dir": str(self.cache.disk_dir) if self.cache.disk_dir else None},
                "rss_mb": round(_rss() / _MiB, 1),
                "memory_budget_mb": round((self.baseline_rss + self.config.memory_bytes) / _MiB, 1),
                "local_dir": str(self.private_dir), "warnings": list(self.warnings)}


def owned_entry(table: dict[str, Owned], key: str, owner: str, missing: str) -> Owned:
    """The entry of ``table`` under ``key`` if ``owner`` owns it; else 404, as if it did not exist."""
    item = table.get(key)
    if item is None or not secrets.compare_digest(item.owner, owner):
        raise ServiceError(missing, "not_found", 404)
    return item


def used_session(lock: AbstractContextManager[Any], sessions: dict[str, UsedT], session_id: str,
                 owner: str) -> UsedT:
    """The owner's session (else 404), marked as used now."""
    with lock:
        session = owned_entry(sessions, session_id, owner, NO_SUCH_SESSION)
        session.last_used = time.monotonic()
        return session


def polled_job(lock: AbstractContextManager[Any], jobs: dict[str, PolledT], sessions: Mapping[str, _Used],
               job_id: str, owner: str) -> PolledT:
    """The owner's job (else 404), marked as polled now; its session counts as used (polling keeps it open)."""
    with lock:
        job = owned_entry(jobs, job_id, owner, NO_SUCH_JOB)
        job.last_seen = time.monotonic()
        session = sessions.get(job.session_id)
        if session is not None:
            session.last_used = job.last_seen
        return job


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:  # psutil missing: figures only
        return 0
