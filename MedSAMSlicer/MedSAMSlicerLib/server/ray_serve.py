"""The engine on Ray Serve (``medsam-slicer serve --ray``): several model replicas behind the same HTTP API.

Layout (README "Many readers, many GPUs"):

- ``Model`` replicas (``--replicas N``, ``--replica-cpus``/``--replica-gpus`` each): every replica is a whole
  single-node :class:`~.engine.Engine` (one model worker, one embedding cache, its volumes, its jobs).
- ``Ingress`` (one replica, no model): the very FastAPI app of :mod:`.app`, given :class:`FrontEngine` instead of an
  Engine, so routes, validation, tokens and error bodies are the single-node server's.  It keeps only what a session
  or a job needs to be rebuilt elsewhere (fingerprint, geometry, window, axis; a job's key boxes and options): a
  few hundred bytes each, never a volume or an embedding.
- Routing is Ray Serve's model multiplexing, with the volume's content fingerprint as the model id: a request about
  a volume goes to the replica that already holds it (its embeddings stay where they were computed), a new volume
  to the replica holding the fewest.  Each replica also "holds" the id ``replica:<its id>``, so that polls of a job
  (and ``/info``) reach the replica the job runs on; one that lands elsewhere (Ray routes best effort) is answered
  "elsewhere" and the ingress asks again.
- A request that reaches a replica without the volume (the replica was lost and replaced, evicted the volume, or
  the request spilled over from a busy replica) is answered 409 ``resend_volume`` naming the fingerprint; the
  client sends the volume again and repeats the request (:class:`~..client.engine_client.EngineClient`), and the
  re-sent volume goes to the replica that asked for it.  A job whose replica is gone is started again by the
  ingress on the replica that now holds the volume, at the client's next poll.  A lost replica costs re-encoding,
  never a wrong mask: every answer is computed from the volume itself, on whichever replica holds it.
- Correctable objects live in a replica's session: their actions are never started twice (not elsewhere, not
  again on a repeated call); a lost object answers 410 ``object_gone``, a lost answer 410 ``answer_lost``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, cast

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

from ..errors import ERROR_CLASSES, MedSAMError, ServiceError, first_line
from ..protocol import Box, ObjectAction, ObjectStart, PropagationSettings, SessionSpec, SliceRequest, wire
from .engine import Engine, ServerConfig, polled_job, used_session
from .volumes import checked_fingerprint

log = logging.getLogger(__name__)
LOST = (RayActorError, ReplicaUnavailableError)  # the replica died (or is dying) under the call

APP_NAME = "medsam"
MODEL_DEPLOYMENT = "Model"
RESEND = "resend_volume"  # the error code the client answers by re-sending the volume (engine_client.RESEND_VOLUME)
ELSEWHERE = "elsewhere"
OBJECT_GONE = "object_gone"  # 410: the object's replica or session is gone (client: engine_client.OBJECT_GONE)
ANSWER_LOST = "answer_lost"  # 410: an object action's answer is lost; never re-applied (engine_client.ANSWER_LOST)
TAG = "replica:"  # multiplexed id prefix of "this very replica"
CALL_TIMEOUT = 600.0  # s: a call may wait for a busy replica's model worker
FIND_TIMEOUT = 20.0  # s: how long the ingress keeps asking for a replica that is alive but busy
POLL_PATIENCE = 2.0  # s: a job poll that cannot reach its (alive, saturated) replica answers the last known state
REPLICA_HEARTBEAT = 24 * 3600.0  # s: the ingress, not the replica, cancels jobs nobody polls (see FrontEngine)
MAX_RESTARTS = 5  # of one job, after replicas were lost
LOSS_TIMEOUT = 60.0  # s of failed calls before a request is answered 503 (Serve notices a dead replica in seconds)
ROUTING_LAG = 1.0  # s after a placement during which a "re-send" from another replica is Ray's routing catching up


class ResendVolume(ServiceError):
    """This replica does not hold the volume the request is about."""

    def __init__(self, fingerprint: str, replica: str = "") -> None:
        super().__init__("the engine replica that took this request does not hold the volume (it was replaced, "
                         "or the request went to a less busy one); send the volume again and repeat the request",
                         RESEND, 409)
        self.fingerprint = fingerprint
        self.replica = replica


class Elsewhere(ServiceError):
    def __init__(self) -> None:
        super().__init__("the request reached another replica than the one it was meant for", ELSEWHERE, 503)


class ObjectGone(ServiceError):
    """A correctable object the ingress routed is no longer anywhere: its replica was lost, or that replica's
    session expired and was opened afresh (objects live in a replica's session, with its embeddings)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the object is gone ({why}); start the object again", OBJECT_GONE, 410)


LOST_REPLICA = "the engine replica that held it was lost"
EXPIRED_SESSION = "its session expired on the engine replica that held it"


class AnswerLost(ServiceError):
    """An object action's job ended on its replica but its answer can no longer be fetched: it is never applied
    a second time (a box or an undo twice is not the user's work); the client reads the object again."""

    def __init__(self) -> None:
        super().__init__("the engine lost the answer of this object action (it may have been applied); review the "
                         "object again before the next action", ANSWER_LOST, 410)


class ReplicaLost(ServiceError):
    def __init__(self, tag: str) -> None:
        super().__init__(f"engine replica {tag[:8]} is gone", "unavailable", 503)


# -- the model replicas -------------------------------------------------------------------------------------------
class ReplicaEngine(Engine):
    """An Engine that also remembers the encoder calls of sessions it closed (figures per volume for /info)."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.retired_calls: Counter = Counter()

    def _close(self, session) -> None:
        super()._close(session)
        if session.key not in self.prepared:
            self.retired_calls[session.key[0]] += session.prepared.encoder_calls

    def calls_by_volume(self) -> dict[str, int]:
        with self._lock:
            calls = Counter(self.retired_calls)
            for key, prepared in self.prepared.items():
                calls[key[0]] += prepared.encoder_calls
        return dict(calls)


def _error_of(error: MedSAMError, tag: str) -> dict:
    body: dict[str, Any] = {"code": error.code, "message": str(error), "replica": tag}
    if isinstance(error, ServiceError):
        body["status"] = error.status
    if isinstance(error, ResendVolume):
        body["fingerprint"] = error.fingerprint
    return {"error": body, "replica": tag}


class ModelReplica:
    """One model replica: a whole Engine.  Every method answers ``{"ok": value, "replica": id}`` or
    ``{"error": {...}}`` (our errors cross the Ray boundary as data, not as pickled exceptions)."""

    def __init__(self, config: ServerConfig) -> None:
        # A poll may not reach a replica taking max_ongoing_requests already; the ingress keeps the heartbeat.
        self.engine = ReplicaEngine(dataclasses.replace(config, job_heartbeat=REPLICA_HEARTBEAT))
        self.engine.start()
        self.engine.load()  # in the constructor: Serve marks the replica ready once the model is in
        if self.engine.load_error:
            raise RuntimeError(f"cannot load the model: {self.engine.load_error}")
        self.tag = serve.get_replica_context().replica_id.unique_id
        self.opened: dict[tuple[str, str], str] = {}  # (owner, ingress session id) -> this engine's session id
        self._lock = threading.Lock()

    @serve.multiplexed(max_num_models_per_replica=256)
    async def hold(self, model_id: str) -> str:
        """Ray's "model" loader: a volume's fingerprint is held when its voxels are here; ``replica:<id>`` only by
        that replica.  A refusal is not cached, so the id is not announced and Ray keeps routing it elsewhere."""
        if model_id.startswith(TAG):
            if model_id != TAG + self.tag:
                raise Elsewhere()
            return model_id
        if not self.engine.has_volume(model_id):
            raise ResendVolume(model_id, self.tag)
        return model_id

    async def _answer(self, work: Callable[[], Any], model_id: Optional[str] = None) -> dict:
        try:
            if model_id is not None:
                await self.hold(model_id)
            await self.hold(TAG + self.tag)  # announce this replica's own id (cheap once loaded)
            return {"ok": await asyncio.to_thread(work), "replica": self.tag}
        except MedSAMError as error:
            return _error_of(error, self.tag)

    # -- volumes and sessions ---------------------------------------------------------------------------------
    async def has_volume(self, fingerprint: str) -> dict:
        answer = await self._answer(lambda: self.engine.has_volume(fingerprint))
        if answer.get("ok"):
            await self.hold(fingerprint)  # (re)announce it
        return answer

    async def add_volume(self, fingerprint: str, array, model_id: str) -> dict:
        if model_id.startswith(TAG) and model_id != TAG + self.tag:
            return _error_of(Elsewhere(), self.tag)
        def work() -> bool:
            self.engine.add_volume(fingerprint, array)
            return True

        answer = await self._answer(work)
        if "ok" in answer:
            await self.hold(fingerprint)  # now Ray routes this fingerprint here
        return answer

    def _session(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec) -> str:
        """This engine's session for the ingress session ``sid``, opened here when needed."""
        with self._lock:
            local = self.opened.get((owner, sid))
        if local is not None:
            try:
                self.engine.session(owner, local)
                return local
            except ServiceError:  # expired here
                pass
        try:
            described = self.engine.open_session(owner, fingerprint, spec)
        except ServiceError as error:
            if error.code == "not_found" and not self.engine.has_volume(fingerprint):
                raise ResendVolume(fingerprint, self.tag) from None
            raise
        with self._lock:
            self.opened[(owner, sid)] = described["session_id"]
        return described["session_id"]

    async def open(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec) -> dict:
        def work() -> dict:
            local = self._session(owner, fingerprint, sid, spec)
            return dict(self.engine.session(owner, local).describe(), session_id=sid)

        return await self._answer(work, fingerprint)

    async def close(self, owner: str, fingerprint: str, sid: str) -> dict:
        def work() -> bool:
            with self._lock:
                local = self.opened.pop((owner, sid), None)
            if local is not None:
                try:
                    self.engine.close_session(owner, local)
                except ServiceError:
                    pass
            return True

        return await self._answer(work)

    async def segment(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec, prompt: SliceRequest,
                      run_async: bool = False) -> dict:
        def work() -> Any:
            local = self._session(owner, fingerprint, sid, spec)
            if run_async:
                return self.engine.start_segment(owner, local, prompt, None)
            mask, score = self.engine.segment(owner, local, prompt)
            return mask, float(score)

        return await self._answer(work, fingerprint)

    async def prefetch(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec, indices: list) -> dict:
        def work() -> int:
            self.engine.prefetch(owner, self._session(owner, fingerprint, sid, spec), indices)
            return len(indices)

        return await self._answer(work, fingerprint)

    async def start_job(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec, key_boxes: dict[int, Box],
                        settings: PropagationSettings) -> dict:
        def work() -> dict:
            return self.engine.start_job(owner, self._session(owner, fingerprint, sid, spec), key_boxes, settings)

        return await self._answer(work, fingerprint)

    async def start_object(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec,
                           start: ObjectStart, request_id: str) -> dict:
        def work() -> dict:
            local = self._session(owner, fingerprint, sid, spec)
            return self.engine.start_object(owner, local, start, request_id)

        return await self._answer(work, fingerprint)

    def _held_session(self, owner: str, sid: str) -> Optional[str]:
        """This engine's session for ``sid`` if it is still open here (never opened afresh: it holds the objects)."""
        with self._lock:
            local = self.opened.get((owner, sid))
        if local is None:
            return None
        try:
            self.engine.session(owner, local)
        except ServiceError:  # expired here
            return None
        return local

    async def object_action(self, owner: str, fingerprint: str, sid: str, spec: SessionSpec, object_id: str,
                            step: ObjectAction, request_id: str, model_id: str) -> dict:
        """``request_id`` (the ingress's job id): a repeated call (the ingress asks again after a call timed out
        in a saturated replica's queue) returns the job the first started instead of applying the action twice."""
        def work() -> dict:
            local = self._held_session(owner, sid)
            if local is None:
                raise ObjectGone(EXPIRED_SESSION)
            return self.engine.start_object_action(owner, local, object_id, step, request_id)

        return await self._answer(work, model_id)

    async def job(self, owner: str, job_id: str, wait: float, model_id: str) -> dict:
        def work() -> dict:
            job = self.engine.job(owner, job_id, wait)
            body = job.describe()
            if job.state == "done":
                body["result"] = job.result
            return body

        return await self._answer(work, model_id)

    async def cancel_job(self, owner: str, job_id: str, model_id: str) -> dict:
        return await self._answer(lambda: self.engine.cancel_job(owner, job_id), model_id)

    async def info(self, model_id: str) -> dict:
        def work() -> dict:
            return dict(self.engine.info(), replica=self.tag, pid=os.getpid(),
                        encoder_calls_by_fingerprint=self.engine.calls_by_volume())

        return await self._answer(work, model_id)


# -- the ingress ----------------------------------------------------------------------------------------------------
@dataclass
class FrontSession:
    id: str
    owner: str
    fingerprint: str
    spec: SessionSpec
    description: dict
    front: "FrontEngine"
    last_used: float = field(default_factory=time.monotonic)

    def describe(self) -> dict:
        """Fresh from the replica holding the volume (its encoder calls); the ingress's copy if none answers."""
        try:
            described = self.front.replica_call(self.fingerprint, "open", self.owner, self.fingerprint, self.id,
                                                self.spec)
        except ServiceError as error:
            if error.code == RESEND:
                raise
            return self.description
        self.description = described
        return described


@dataclass
class FrontJob:
    id: str
    owner: str
    session_id: str
    total: int
    launch: Callable[["FrontJob"], None]  # (re)starts the work: sets tag and remote_id, or runs a thread
    fingerprint: str = ""
    state: str = "running"
    done: int = 0
    message: str = ""
    error: Optional[dict] = None
    result: Optional[dict] = None
    tag: str = ""  # the replica the job runs on ("" for the ingress's own jobs)
    remote_id: str = ""
    needs_volume: bool = False
    restarts: int = 0
    cancelled: bool = False
    last_seen: float = field(default_factory=time.monotonic)  # the client's last poll
    # False for an object action: applying it again (a second box, a second undo) would change the user's object
    restartable: bool = True
    object_id: str = ""  # the object an object action acts on
    started: threading.Event = field(default_factory=threading.Event)  # its first start returned (or failed)
    start_error: Optional[BaseException] = None  # what its first start raised

    def describe(self) -> dict:
        return {"job_id": self.id, "state": self.state, "done": self.done, "total": self.total,
                "message": self.message, "error": self.error}

    def take(self, body: dict) -> None:
        self.state, self.done, self.total = body["state"], body["done"], body["total"]
        self.message, self.error, self.result = body.get("message", ""), body.get("error"), body.get("result")


class _Ready:
    """``engine.ready`` for app.py's /health: the ingress answers once Serve deployed the replicas (model in)."""

    def is_set(self) -> bool:
        return True


class FrontEngine:
    """What :func:`.app.create_app` calls an engine, done by the Model replicas.  It is pickled to the ingress
    replica with the app (its state starts afresh there) and finds the replicas' handle at its first call."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._fresh()

    def __getstate__(self) -> dict:
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.config = state["config"]
        self._fresh()

    def _fresh(self) -> None:
        self.ready = _Ready()
        self.loading = ""
        self.load_error = None
        self._model = None
        self._lock = threading.RLock()
        self.sessions: dict[str, FrontSession] = {}
        self.jobs: dict[str, FrontJob] = {}
        self.requests: dict[tuple[str, str], str] = {}
        self.waiting: dict[str, set[str]] = {}  # fingerprint -> replicas that asked for it to be re-sent
        self.placed: dict[str, tuple[str, float]] = {}  # fingerprint -> (replica that took it last, when)
        self.upload_locks: dict[str, threading.Lock] = {}
        self.counts: Counter = Counter()  # uploads, resent_volumes, misrouted, job_restarts, replica_losses
        self._reaper: Optional[threading.Thread] = None
        # (owner, correctable object id) -> (the replica holding it, its session, why it is gone or ""): entries go
        # with their session; a gone one stays till then, so that every later action says why, not a bare 404
        self.objects: dict[tuple[str, str], tuple[str, str, str]] = {}

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    @property
    def model(self):
        if self._model is None:
            self._model = serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME)
        return self._model

    # -- calls to the replicas ------------------------------------------------------------------------------------
    def _remote(self, model_id: str, method: str, *args, timeout: float = CALL_TIMEOUT) -> dict:
        handle = getattr(self.model.options(multiplexed_model_id=model_id), method)
        response = handle.remote(*args)
        try:
            return response.result(timeout_s=timeout)
        except TimeoutError:  # still waiting for a free slot of a saturated replica: withdraw it
            response.cancel()
            raise

    def _unwrap(self, answer: dict):
        if "error" not in answer:
            return answer["ok"], answer["replica"]
        error = answer["error"]
        code, message = error.get("code", "internal"), error.get("message", "the engine failed")
        if code == RESEND:
            with self._lock:
                self.waiting.setdefault(error["fingerprint"], set()).add(answer["replica"])
            raise ResendVolume(error["fingerprint"], answer["replica"])
        if code == ELSEWHERE:
            raise Elsewhere()
        cls = ERROR_CLASSES.get(code)
        raise cls(message) if cls is not None and cls is not ServiceError else \
            ServiceError(message, code, int(error.get("status", 400)))

    def replica_call(self, fingerprint: str, method: str, *args, with_replica: bool = False):
        """``method`` on the replica that holds ``fingerprint`` (Ray's multiplexed routing); with
        ``with_replica``: (its answer, that replica's id)."""
        deadline = time.monotonic() + LOSS_TIMEOUT
        while True:
            try:
                value, replica = self._unwrap(self._remote(fingerprint, method, *args))
                return (value, replica) if with_replica else value
            except ResendVolume as wanted:
                if not self._routing_lags(fingerprint, wanted.replica):
                    raise
                continue
            except LOST as error:  # ask again: Ray routes to a live replica once it knows of the loss
                self.count("replica_losses")
                log.warning("an engine replica was lost during %s: %s", method, first_line(error))
                if time.monotonic() > deadline:
                    raise ServiceError("the engine replicas keep failing; see the server's log", "unavailable",
                                       503) from None
                time.sleep(0.25)

    def _routing_lags(self, fingerprint: str, replica: str) -> bool:
        """Whether a "re-send" answer only means that Ray's routers have not yet heard (replicas announce the
        ids they hold every 0.1 s) that another replica took this volume a moment ago: then wait and ask again,
        instead of placing the volume on a second replica."""
        with self._lock:
            placed = self.placed.get(fingerprint)
        if placed is None or placed[0] == replica or time.monotonic() - placed[1] > ROUTING_LAG:
            return False
        with self._lock:
            self.waiting.get(fingerprint, set()).discard(replica)
            self.counts["routing_lag_retries"] += 1
        time.sleep(0.05)
        return True

    def at_replica(self, tag: str, method: str, *args, patience: float = FIND_TIMEOUT):
        """``method`` on replica ``tag`` itself; :class:`ReplicaLost` when it is gone, a 503 "busy" when it is
        alive but did not take the call within ``patience`` seconds (it is taking max_ongoing_requests)."""
        deadline = time.monotonic() + patience
        pause = 0.02
        while True:
            try:
                return self._unwrap(self._remote(TAG + tag, method, *args, TAG + tag, timeout=patience + 10.0))[0]
            except TimeoutError:
                pass
            except Elsewhere:
                self.count("misrouted")
            except LOST:
                pass
            if tag not in self.live_replicas():
                raise ReplicaLost(tag)
            if time.monotonic() > deadline:
                raise ServiceError(f"engine replica {tag[:8]} did not answer within {patience:g} s", "busy", 503)
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    @staticmethod
    def live_replicas() -> list[str]:
        """The ids of the Model replicas alive now (Serve names each replica actor after its id)."""
        import ray

        prefix = f"SERVE_REPLICA::{APP_NAME}#{MODEL_DEPLOYMENT}#"
        return [a["name"][len(prefix):] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(prefix)]

    # -- volumes --------------------------------------------------------------------------------------------------
    def has_volume(self, fingerprint: str) -> bool:
        checked_fingerprint(fingerprint)
        return bool(self.replica_call(fingerprint, "has_volume", fingerprint))

    def add_volume(self, fingerprint: str, array) -> None:
        """The replicas that asked for this volume get it; else the replica that took it before (clients opening
        the same new volume at once: one placement, not one per client), else the one Ray routes it to."""
        checked_fingerprint(fingerprint)
        with self._lock:
            lock = self.upload_locks.setdefault(fingerprint, threading.Lock())
        with lock:
            with self._lock:
                targets = self.waiting.pop(fingerprint, set())
                self.counts["uploads"] += 1
                if targets:
                    self.counts["resent_volumes"] += 1
                placed = self.placed.get(fingerprint)
            if not targets and placed is not None and placed[0] in self.live_replicas():
                targets = {placed[0]}
            taken = None
            for tag in targets:
                try:
                    self.at_replica(tag, "add_volume", fingerprint, array)
                    taken = tag
                except ServiceError:
                    pass  # gone meanwhile
            if taken is None:
                _, taken = self.replica_call(fingerprint, "add_volume", fingerprint, array, fingerprint,
                                             with_replica=True)
            with self._lock:
                self.placed[fingerprint] = (taken, time.monotonic())

    def volume_from_file(self, fingerprint: str, name: str) -> dict:
        raise ServiceError("the Ray engine takes volumes as uploads only (its replicas may run on other "
                           "machines)", "bad_path", 403)

    def start_volume_from_file(self, owner: str, fingerprint: str, name: str, request_id: Optional[str]) -> dict:
        return self.volume_from_file(fingerprint, name)

    # -- sessions -------------------------------------------------------------------------------------------------
    def open_session(self, owner: str, fingerprint: str, spec: SessionSpec) -> dict:
        checked_fingerprint(fingerprint)
        with self._lock:
            self._expire()
            if len(self.sessions) >= self.config.max_sessions:
                raise ServiceError(f"the server holds its maximum of {self.config.max_sessions} sessions; close one "
                                   f"or wait for idle ones to expire", "too_many_sessions", 429)
        sid = secrets.token_urlsafe(16)
        described = self.replica_call(fingerprint, "open", owner, fingerprint, sid, spec)
        with self._lock:
            self.sessions[sid] = FrontSession(sid, owner, fingerprint, spec, described, self)
        return described

    def start_open_session(self, owner: str, request_id: Optional[str], fingerprint: str, spec: SessionSpec) -> dict:
        checked_fingerprint(fingerprint)

        def launch(job: FrontJob) -> None:
            def run() -> None:
                try:
                    opened = self.open_session(owner, fingerprint, spec)
                except ResendVolume:
                    job.needs_volume = True
                    return
                except MedSAMError as error:
                    body: dict[str, Any] = {"code": error.code, "message": str(error)}
                    if isinstance(error, ServiceError):
                        body["status"] = error.status
                    job.state, job.message, job.error = "failed", str(error), body
                    return
                except Exception as error:  # a bug: one line to the client, the trace to the log
                    log.exception("opening a session failed")
                    job.state, job.message = "failed", first_line(error)
                    job.error = {"code": "internal", "message": first_line(error)}
                    return
                if job.cancelled:
                    self._close_quietly(owner, opened["session_id"])
                    job.state = "cancelled"
                    return
                job.result = dict(opened, encoder_calls=0, seconds=0.0)
                job.done, job.state = 1, "done"

            threading.Thread(target=run, name="medsam-open", daemon=True).start()

        return self._new_job(owner, "", 1, request_id, launch, fingerprint).describe()

    def _close_quietly(self, owner: str, sid: str) -> None:
        try:
            self.close_session(owner, sid)
        except ServiceError:
            pass

    def _expire(self) -> None:
        now = time.monotonic()
        busy = {j.session_id for j in self.jobs.values() if j.state == "running"}
        for session in [s for s in self.sessions.values()
                        if s.id not in busy and now - s.last_used > self.config.idle_timeout]:
            del self.sessions[session.id]
        # finished jobs of gone sessions; finished session-less ones (volume takes, session openings) once unpolled
        for job in [j for j in self.jobs.values() if j.state != "running" and (
                j.session_id not in self.sessions if j.session_id else now - j.last_seen > self.config.idle_timeout)]:
            del self.jobs[job.id]
        self.requests = {k: v for k, v in self.requests.items() if v in self.jobs}
        self.objects = {k: v for k, v in self.objects.items() if v[1] in self.sessions}

    def session(self, owner: str, session_id: str) -> FrontSession:
        return used_session(self._lock, self.sessions, session_id, owner)

    def close_session(self, owner: str, session_id: str) -> None:
        session = self.session(owner, session_id)
        with self._lock:
            self.sessions.pop(session_id, None)
            self.objects = {k: v for k, v in self.objects.items() if v[1] != session_id}
            for job in self.jobs.values():
                if job.session_id == session_id and job.state == "running":
                    self._cancel(job)
        try:
            self.replica_call(session.fingerprint, "close", owner, session.fingerprint, session_id)
        except ServiceError:  # the replica is gone: nothing left to close
            pass

    # -- model work -----------------------------------------------------------------------------------------------
    def segment(self, owner: str, session_id: str, prompt: SliceRequest) -> tuple:
        s = self.session(owner, session_id)
        return tuple(self.replica_call(s.fingerprint, "segment", owner, s.fingerprint, s.id, s.spec, prompt))

    def start_segment(self, owner: str, session_id: str, prompt: SliceRequest, request_id: Optional[str]) -> dict:
        s = self.session(owner, session_id)
        args = (owner, s.fingerprint, s.id, s.spec, prompt, True)
        return self._remote_job(owner, s, 1, request_id, "segment", args)

    def prefetch(self, owner: str, session_id: str, indices: list[int]) -> None:
        s = self.session(owner, session_id)
        self.replica_call(s.fingerprint, "prefetch", owner, s.fingerprint, s.id, s.spec, list(indices))

    def start_job(self, owner: str, session_id: str, key_boxes: dict[int, Box], settings: PropagationSettings,
                  request_id: Optional[str] = None) -> dict:
        s = self.session(owner, session_id)
        return self._remote_job(owner, s, 0, request_id, "start_job",
                                (owner, s.fingerprint, s.id, s.spec, dict(key_boxes), settings))

    def start_object(self, owner: str, session_id: str, start: ObjectStart, request_id: Optional[str] = None) -> dict:
        s = self.session(owner, session_id)
        return self._remote_job(owner, s, 0, request_id, "start_object", (owner, s.fingerprint, s.id, s.spec, start),
                                with_job_id=True)

    def object_count(self) -> int:
        """How many correctable objects the ingress routes now (``/info`` ``objects``): not gone, session open."""
        with self._lock:
            return sum(1 for held in self.objects.values() if not held[2])

    def _lose_object(self, owner: str, object_id: str, why: str) -> ObjectGone:
        """Mark the object gone (till its session goes) and return the error that says so."""
        with self._lock:
            held = self.objects.get((owner, object_id))
            if held is not None:
                self.objects[(owner, object_id)] = (held[0], held[1], why)
        return ObjectGone(why)

    def start_object_action(self, owner: str, session_id: str, object_id: str, step: ObjectAction,
                            request_id: Optional[str] = None) -> dict:
        """On the replica holding the object (its corrections' state lives there, with the embeddings); never
        started again elsewhere (see :meth:`_refresh`)."""
        s = self.session(owner, session_id)
        with self._lock:
            held = self.objects.get((owner, object_id))
        if held is None or held[1] != s.id:
            raise ServiceError("no such object in this session", "not_found", 404)
        tag, _, gone = held
        if gone:
            raise ObjectGone(gone)
        if tag not in self.live_replicas():
            raise self._lose_object(owner, object_id, LOST_REPLICA)
        try:
            return self._remote_job(owner, s, 1, request_id, "object_action",
                                    (owner, s.fingerprint, s.id, s.spec, object_id, step), tag=tag,
                                    with_job_id=True, object_id=object_id)
        except ReplicaLost:
            raise self._lose_object(owner, object_id, LOST_REPLICA) from None
        except ServiceError as error:  # the replica's session expired (or was opened afresh): its objects are gone
            if error.code not in (OBJECT_GONE, "not_found"):
                raise
            raise self._lose_object(owner, object_id, EXPIRED_SESSION) from None

    def _remote_job(self, owner: str, session: FrontSession, total: int, request_id: Optional[str], method: str,
                    args: tuple, tag: str = "", with_job_id: bool = False, object_id: str = "") -> dict:
        """A job run by the replica holding the volume (or replica ``tag``): started now (a refusal reaches the
        client now), started again when that replica is lost (an object action never: ``object_id``).  With
        ``with_job_id`` the replica gets this job's id as its request id: a call repeated to it starts nothing new.

        A repeated ``request_id`` (the client's request timed out, it asks again) gets the job the first started,
        also while that first start is still on its way (the job is registered before it is started)."""

        def launch(job: FrontJob) -> None:
            extra = (job.id,) if with_job_id else ()
            if tag:
                answer, job.tag = self.at_replica(tag, method, *args, *extra), tag
            else:
                answer, job.tag = self.replica_call(session.fingerprint, method, *args, *extra, with_replica=True)
            job.remote_id = answer["job_id"]
            job.take(answer)

        with self._lock:
            known = self.jobs.get(self.requests.get((owner, request_id), "")) if request_id else None
            if known is None:
                job = FrontJob(secrets.token_urlsafe(16), owner, session.id, total, launch, session.fingerprint,
                               restartable=not object_id, object_id=object_id)
                self.jobs[job.id] = job
                if request_id:
                    self.requests[(owner, request_id)] = job.id
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, name="medsam-ray-reaper", daemon=True)
                    self._reaper.start()
        if known is not None:
            known.started.wait(CALL_TIMEOUT)
            if known.start_error is not None:
                raise known.start_error
            return known.describe()
        try:
            self._start(job, first=True)
        except BaseException as error:  # refused: forgotten, so that the client's repeat starts it afresh
            job.start_error = error
            with self._lock:
                self.jobs.pop(job.id, None)
                self.requests = {k: v for k, v in self.requests.items() if v != job.id}
            raise
        finally:
            job.started.set()
        if job.cancelled:  # its session was closed while it was being started
            self._cancel(job)
        return job.describe()

    def _reap(self) -> None:
        """Cancel the jobs whose client stopped polling (the replicas' own heartbeat is off: a poll may not reach a
        saturated replica for a while), and expire idle sessions."""
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:
                self._expire()
                unpolled = [j for j in self.jobs.values() if j.tag and j.state == "running" and not j.cancelled
                            and now - j.last_seen > self.config.job_heartbeat]
                self.counts["cancelled_unpolled_jobs"] += len(unpolled)
            for job in unpolled:
                log.info("job %s: its client stopped polling; cancelling it", job.id[:8])
                job.message = "cancelled: the client stopped polling"
                self._cancel(job)

    def _start(self, job: FrontJob, first: bool = False) -> None:
        try:
            job.launch(job)
            job.needs_volume = False
        except ResendVolume:
            if first:
                raise
            job.needs_volume = True
            raise

    def _new_job(self, owner: str, session_id: str, total: int, request_id: Optional[str],
                 launch: Callable[[FrontJob], None], fingerprint: str) -> FrontJob:
        with self._lock:
            if request_id:
                known = self.jobs.get(self.requests.get((owner, request_id), ""))
                if known is not None:
                    return known
            job = FrontJob(secrets.token_urlsafe(16), owner, session_id, total, launch, fingerprint)
            self.jobs[job.id] = job
            if request_id:
                self.requests[(owner, request_id)] = job.id
        launch(job)
        return job

    def job(self, owner: str, job_id: str, wait: float = 0.0) -> FrontJob:
        job = polled_job(self._lock, self.jobs, self.sessions, job_id, owner)
        if job.needs_volume:  # the client was told to re-send the volume; it did, and polls again
            job.needs_volume = False
            if job.tag:
                self._start(job)
            else:
                job.launch(job)
        # A job that ended before its replica answered the start (an undo or an accept: microseconds) came back
        # "done" without its result, which only the replica's own poll carries: fetched like a running job's.
        if job.tag and (job.state == "running" or (job.state == "done" and job.result is None)):
            self._refresh(job, wait)
        elif job.state == "running" and wait > 0:
            end = time.monotonic() + min(wait, 10.0)
            while job.state == "running" and not job.needs_volume and time.monotonic() < end:
                time.sleep(0.02)
        if job.needs_volume:
            raise ResendVolume(job.fingerprint)
        return job

    def _refresh(self, job: FrontJob, wait: float) -> None:
        """Poll the replica the job runs on; start the job again when that replica is gone."""
        try:
            job.take(self.at_replica(job.tag, "job", job.owner, job.remote_id, min(wait, 2.0),
                                     patience=POLL_PATIENCE))
            if job.result and isinstance(job.result.get("object_id"), str):
                with self._lock:
                    if job.session_id in self.sessions:  # not one closed meanwhile (its entries are gone)
                        self.objects[(job.owner, job.result["object_id"])] = (job.tag, job.session_id, "")
            return
        except ReplicaLost:
            if not job.restartable:
                self._fail(job, self._lose_object(job.owner, job.object_id, LOST_REPLICA))
                return
        except ServiceError as error:
            if error.code == "busy":
                return  # the last known state; the job goes on where it runs, and the client polls again
            if error.code != "not_found":
                raise
            if not job.restartable:  # its replica forgot the job: it may have been applied; never apply it twice
                self._fail(job, AnswerLost())
                return
        with self._lock:
            job.restarts += 1
            self.counts["job_restarts"] += 1
        if job.restarts > MAX_RESTARTS:
            job.state, job.message = "failed", "the engine replicas running this job kept failing"
            job.error = {"code": "unavailable", "message": job.message, "status": 503}
            return
        log.warning("job %s: its replica is gone; starting it again", job.id[:8])
        job.done = 0
        self._start(job)

    def _fail(self, job: FrontJob, error: ServiceError) -> None:
        log.warning("job %s: %s", job.id[:8], error.code)
        job.state, job.message = "failed", str(error)
        job.error = {"code": error.code, "message": str(error), "status": error.status}

    def cancel_job(self, owner: str, job_id: str) -> dict:
        job = self.job(owner, job_id)
        self._cancel(job)
        return job.describe()

    def _cancel(self, job: FrontJob) -> None:
        job.cancelled = True
        if job.tag and job.state == "running":
            try:
                self.at_replica(job.tag, "cancel_job", job.owner, job.remote_id)
            except ServiceError:
                pass

    # -- figures ------------------------------------------------------------------------------------------------
    def info(self) -> dict:
        replicas = {}
        for tag in self.live_replicas():
            try:
                replicas[tag] = self.at_replica(tag, "info")
            except ServiceError as error:
                replicas[tag] = {"error": str(error)}
        first: dict[str, Any] = next((r for r in replicas.values() if "model" in r), {})
        with self._lock:
            running = sum(1 for j in self.jobs.values() if j.state == "running")
            counts = dict(self.counts)
            sessions = len(self.sessions)
        return {**{k: first.get(k) for k in ("model", "title", "checkpoint_sha256", "checkpoint_verified", "device",
                                              "device_reason", "backend")},
                "ray": True, "ready": True, "replicas": replicas,
                "encoder_calls": sum(int(r.get("encoder_calls", 0)) for r in replicas.values()),
                "sessions": sessions, "jobs_running": running, "max_sessions": self.config.max_sessions,
                "idle_timeout_s": self.config.idle_timeout, "max_upload_bytes": self.config.max_upload_bytes,
                "volume_uploads": counts.get("uploads", 0), "resend_answers": counts.get("resend_answers", 0),
                "resent_volumes": counts.get("resent_volumes", 0),
                "misrouted_polls": counts.get("misrouted", 0), "job_restarts": counts.get("job_restarts", 0),
                "replica_losses": counts.get("replica_losses", 0),
                "cancelled_unpolled_jobs": counts.get("cancelled_unpolled_jobs", 0), "objects": self.object_count(),
                "local_dir": None,
                "warnings": []}


def build_app(config: ServerConfig, tokens: list[str], replicas: int = 1, replica_cpus: float = 1.0,
              replica_gpus: float = 0.0, max_ongoing: int = 16):
    """The Serve application: Ingress (the HTTP API) -> Model replicas."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from .app import create_app

    front = FrontEngine(config)
    app = create_app(cast("Engine", front), tokens)  # FrontEngine answers everything app.py asks of an Engine

    @app.exception_handler(ResendVolume)
    async def _resend(request: Request, error: ResendVolume) -> JSONResponse:
        body = wire.error_body(error)
        body["error"]["fingerprint"] = error.fingerprint  # which volume to send again
        front.count("resend_answers")
        return JSONResponse(body, status_code=409)

    @serve.deployment(name="Ingress", num_replicas=1, max_ongoing_requests=1000,
                      ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, model) -> None:
            self.model = model  # bound so that Serve deploys the replicas; FrontEngine looks the handle up

    deployment: Any = serve.deployment(ModelReplica, name=MODEL_DEPLOYMENT)  # Serve's stubs miss this form
    model = deployment.options(
        num_replicas=replicas, max_ongoing_requests=max_ongoing, graceful_shutdown_timeout_s=5,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus})
    ingress: Any = Ingress
    return ingress.bind(model.bind(config))


def serve_on_ray(config: ServerConfig, host: str, port: int, tokens: list[str], address: Optional[str] = None,
                 replicas: int = 1, replica_cpus: float = 1.0, replica_gpus: float = 0.0, max_ongoing: int = 16,
                 object_store_mb: Optional[float] = None, parent_pid: Optional[int] = None,
                 url: Optional[str] = None) -> int:
    """Start a local Ray cluster (or join ``address``), deploy the app, print the URL line (``url``: as
    :func:`.run.url_of` wrote it for the port chosen), serve until stopped."""
    import signal
    import sys

    import ray

    from ..errors import OptionError
    from .run import _watch_parent, is_loopback

    local = not address
    try:
        options: dict[str, Any] = {"object_store_memory": int(object_store_mb * (1 << 20))} \
            if local and object_store_mb else {}
        ray.init(address=address or None, namespace="medsam-slicer", include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING, **options)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise OptionError(f"cannot {'join the Ray cluster at ' + address if address else 'start Ray'}: "
                          f"{first_line(error)}") from None
    if not is_loopback(host):
        log.warning("listening on %s: reachable from other machines; put it behind TLS (README: Local and remote "
                    "engine)", host)
    stopping = threading.Event()
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(build_app(config, tokens, replicas, replica_cpus, replica_gpus, max_ongoing), name=APP_NAME,
                  route_prefix="/", blocking=False)
        print(url or f"http://{host}:{port}", flush=True)  # the first stdout line, as `serve` prints it
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        if parent_pid:
            threading.Thread(target=_watch_parent, args=(parent_pid, stopping.set), daemon=True).start()
        while not stopping.wait(0.5):
            pass
    finally:
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        finally:
            ray.shutdown()
    print("medsam-slicer: engine stopped", file=sys.stderr)
    return 0
