"""Talking to an engine server (``medsam-slicer serve``): open a volume, segment slices, run propagation jobs.

Blocking calls over one keep-alive HTTP connection pool (``requests``).  Every failure raises a
:class:`~MedSAMSlicerLib.errors.MedSAMError` subclass with one line: the class the server raised (BoxError, ...),
a :class:`ServiceError` for refusals (401, 404, 413, ...), or :class:`EngineUnavailable` when the server cannot be
reached.  Each client carries a random id (``X-MedSAM-Client``); the server lets it see only its own sessions.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import requests

from ..errors import Cancelled, EngineUnavailable, InputImageError, MedSAMError, ServiceError, first_line
from ..protocol import (
    Box,
    JobState,
    ObjectAction,
    ObjectStart,
    PropagationSettings,
    SessionSpec,
    SliceRequest,
    box_values,
    decode_result,
    wire,
)
from .opening import VolumeOpening, shares_files

log = logging.getLogger(__name__)

CLIENT_HEADER = "X-MedSAM-Client"
MODEL_TIMEOUT = 600.0  # a first request may wait for the model to load and a slice to be encoded
# A replica of a scaled-out engine (serve --ray) that lacks the volume asks for it again with this error code
# (409, plus the fingerprint); the client sends it and repeats the request, at most RESENDS times per request.
RESEND_VOLUME = "resend_volume"
RESENDS = 3
# Its object actions can also fail with 410 and one line (raised as ServiceError with this code, never retried):
# the object is gone (its replica was lost, or its session expired there; start the object again), or an action's
# answer was lost (it may have been applied: review the object before the next action; it is never applied twice).
OBJECT_GONE = "object_gone"
ANSWER_LOST = "answer_lost"


@dataclass(frozen=True)
class JobStatus:
    state: JobState  # a str enum: compares equal to "running", "done", "failed", "cancelled"
    done: int
    total: int
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state is not JobState.RUNNING


def read_token_file(path: str | os.PathLike) -> str:
    try:
        token = Path(path).expanduser().read_text().strip().splitlines()
    except OSError as error:
        raise ServiceError(f"cannot read the token file {path}: {first_line(error)}", "unauthorized", 401) from None
    if not token or not token[0].strip():
        raise ServiceError(f"the token file {path} is empty", "unauthorized", 401)
    return token[0].strip()


class EngineClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ServiceError(f"server URL {url!r} must look like http://HOST:PORT", "bad_request", 400)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.client_id = secrets.token_hex(16)
        self.process = None  # the child server when started by start_local
        self._local_dir: str | None = None  # the server's private upload folder when it shares our file system
        self._http = requests.Session()
        self._http.headers[CLIENT_HEADER] = self.client_id
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._info: dict | None = None
        # fingerprint -> the array sent under it, while someone holds it (each RemoteVolume does), to send it again
        self._sent: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.resent = 0  # volumes sent again because an engine replica asked

    # -- plumbing -----------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, timeout: float | None = None, **kwargs) -> dict:
        """One call; JSON answer as a dict, or the server's error re-raised as its errors.py class.  When a
        scaled-out engine answers "resend_volume" for a volume sent from here, send it again and repeat the call."""
        for attempt in range(RESENDS + 1):
            try:
                return self._request_once(method, path, timeout, **kwargs)
            except _VolumeWanted as wanted:
                if attempt == RESENDS:
                    raise wanted.error from None
                self._resend(wanted.fingerprint, wanted.error)
        raise AssertionError("unreachable")

    def remember(self, fingerprint: str, array: np.ndarray) -> None:
        """Keep a weak reference to ``array``, sent under ``fingerprint``, to send it again on request."""
        try:
            self._sent[fingerprint] = array
        except TypeError:  # not weakly referenceable: then it cannot be re-sent
            pass

    def sent_array(self, fingerprint: str) -> np.ndarray | None:
        """The array sent under ``fingerprint`` if someone still holds it."""
        return self._sent.get(fingerprint)

    def _resend(self, fingerprint: str, error: MedSAMError) -> None:
        array = self._sent.get(fingerprint)
        if array is None:
            raise error
        log.info("the engine asked for volume %s again; sending it", fingerprint[:12])
        self._request_once("PUT", f"/volumes/{fingerprint}", MODEL_TIMEOUT, data=wire.compress_volume(array),
                           headers={"Content-Type": "application/octet-stream"})
        self.resent += 1

    def _request_once(self, method: str, path: str, timeout: float | None = None, **kwargs) -> dict:
        try:
            response = self._http.request(method, self.url + path, timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout:
            raise EngineUnavailable(f"the engine at {self.url} did not answer {method} {path} within "
                                    f"{timeout or self.timeout:g} s") from None
        except requests.RequestException as error:
            raise EngineUnavailable(f"the engine at {self.url} cannot be reached: {_reason(error)}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            refusal = wire.error_from_body(response.status_code, body, f"HTTP {response.status_code} from {path}")
            wanted = body.get("error", {}).get("fingerprint") if isinstance(body, dict) else None
            if getattr(refusal, "code", "") == RESEND_VOLUME and isinstance(wanted, str) and wanted in self._sent:
                raise _VolumeWanted(wanted, refusal)
            raise refusal
        if not isinstance(body, dict):
            raise EngineUnavailable(f"the engine at {self.url} sent a non-JSON answer to {path}")
        return body

    @property
    def known_info(self) -> dict | None:
        """The last ``/info`` answer (no request), or None before the first."""
        return self._info

    @property
    def local_dir(self) -> str | None:
        """The server's private folder when it shares our file system ("" once known not to; None: not yet known)."""
        return self._local_dir

    @local_dir.setter
    def local_dir(self, folder: str | None) -> None:
        self._local_dir = folder

    # -- server ---------------------------------------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict:
        return self.request("GET", "/health", timeout=timeout)

    def info(self, timeout: float | None = None) -> dict:
        self._info = self.request("GET", "/info", timeout=timeout)
        return self._info

    def wait_ready(self, timeout: float = 300.0) -> dict:
        """Block until the model is loaded (``health()['ready']``); the first call after a start loads it."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health(timeout=10)
            if health.get("ready"):
                return health
            if health.get("error"):
                raise EngineUnavailable(f"the engine could not load its model: {health['error']}")
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"the engine was still loading ({health.get('loading')}) after {timeout:g} s")
            time.sleep(0.2)

    # -- volumes --------------------------------------------------------------------------------------------------
    def upload(self, array: np.ndarray) -> str:
        """Make the server hold ``array`` (once per content); returns its fingerprint."""
        array = np.ascontiguousarray(array)
        fingerprint = wire.content_fingerprint(array)
        self.remember(fingerprint, array)
        if self.request("GET", f"/volumes/{fingerprint}")["present"]:
            return fingerprint
        info = self._info or self.info()
        if self._local_dir is None and shares_files(self.url, info.get("local_dir")):
            self._local_dir = info["local_dir"]
        if self._local_dir:
            try:
                return self._hand_over_path(array, fingerprint)
            except OSError as error:  # the folder is not ours after all (another user, another machine)
                log.info("cannot hand the volume over as a file (%s); uploading it", error)
                self._local_dir = ""
        body = wire.compress_volume(array)
        limit = int(info.get("max_upload_bytes", 0))
        if limit and len(body) > limit:
            raise ServiceError(f"the compressed volume is {len(body) >> 20} MiB; this server accepts at most "
                               f"{limit >> 20} MiB (serve --max-upload-mb)", "too_large", 413)
        self.request("PUT", f"/volumes/{fingerprint}", data=body, timeout=MODEL_TIMEOUT,
                     headers={"Content-Type": "application/octet-stream"})
        return fingerprint

    def _hand_over_path(self, array: np.ndarray, fingerprint: str) -> str:
        """Local mode: write a 0600 .npy into the server's private folder and pass its name (no copy over HTTP)."""
        handle, name = tempfile.mkstemp(suffix=".npy", dir=self._local_dir)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, array, allow_pickle=False)
            self.request("POST", f"/volumes/{fingerprint}/from-file", json={"name": os.path.basename(name)},
                         timeout=MODEL_TIMEOUT)
        finally:
            Path(name).unlink(missing_ok=True)  # the server removes it too once read
        return fingerprint

    def open_volume(self, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    origin: Sequence[float] = (0.0, 0.0, 0.0),
                    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1), window: str = "auto",
                    axis: str = "axial", modality: str | None = None,
                    already_normalized: bool = False) -> "RemoteVolume":
        """A session on ``array`` (numpy order (k, j, i)); geometry in ITK order and LPS, as in :class:`Volume`
        (a :class:`SessionSpec` in :meth:`open_spec` may be in either frame)."""
        spec = SessionSpec(_floats(spacing), _floats(origin), _floats(direction), str(window), str(axis), modality,
                           bool(already_normalized))
        return self.open_spec(array, spec)

    def open_spec(self, array: np.ndarray, spec: SessionSpec) -> "RemoteVolume":
        """:meth:`open_volume` with the session described by one :class:`SessionSpec`."""
        array = np.asarray(array)
        if array.ndim != 3:
            raise InputImageError(f"the volume has {array.ndim} dimensions; give a 3D array")
        array = np.ascontiguousarray(array)  # the very array upload() remembers (kept alive by the RemoteVolume)
        fingerprint = self.upload(array)
        body = self.request("POST", "/sessions", timeout=MODEL_TIMEOUT,
                            json={"fingerprint": fingerprint, **spec.to_json()})
        return RemoteVolume(self, body)

    def start_opening(self, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      origin: Sequence[float] = (0.0, 0.0, 0.0),
                      direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1), window: str = "auto",
                      axis: str = "axial", modality: str | None = None, already_normalized: bool = False,
                      fingerprint: str | None = None) -> VolumeOpening:
        """:meth:`open_volume` in short steps for a GUI timer: a :class:`~.opening.VolumeOpening`, whose ``step()``
        returns the RemoteVolume once open.  ``fingerprint``: the content's, when known from an earlier opening."""
        return VolumeOpening(self, array, spacing, origin, direction, window, axis, modality, already_normalized,
                             fingerprint)

    def volume_of(self, body: dict) -> "RemoteVolume":
        """The RemoteVolume a session description stands for (the result of an opening job)."""
        return RemoteVolume(self, body)

    def job_of(self, body: dict) -> "RemoteJob":
        """The RemoteJob of a job description the server answered a start request with."""
        return RemoteJob(None, body["job_id"], int(body.get("total", 0)), client=self)

    # -- lifetime -------------------------------------------------------------------------------------------------
    @classmethod
    def start_local(cls, python: str | None = None, args: Sequence[str] = ("--device", "cpu"),
                    startup_timeout: float = 120.0) -> "EngineClient":
        from .local import start_local_server

        return start_local_server(cls, python, args, startup_timeout)

    def stop(self) -> None:
        """Stop the child server started by :meth:`start_local` (no-op for a remote server)."""
        from .local import stop_process

        self._http.close()
        if self.process is not None:
            stop_process(self.process)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RemoteVolume:
    """A volume session on the server: the remote twin of :class:`~MedSAMSlicerLib.engine.session.VolumeSession`."""

    def __init__(self, client: EngineClient, body: dict) -> None:
        self.client = client
        self.session_id: str = body["session_id"]
        self.fingerprint: str = body["fingerprint"]
        self.slice_count: int = int(body["slice_count"])
        self.slice_shape: tuple[int, int] = tuple(body["slice_shape"])
        self.shape: tuple[int, int, int] = tuple(body["shape"])
        self.np_axis: int = int(body["np_axis"])
        self.window: str = body["window"]
        self.window_reason: str = body["window_reason"]
        self.axis_name: str = body["axis"]
        self._array = client.sent_array(self.fingerprint)  # alive while the session is, to send again on request

    def _path(self, suffix: str = "") -> str:
        return f"/sessions/{self.session_id}{suffix}"

    def segment_slice(self, index: int, box: Sequence[float], timeout: float = MODEL_TIMEOUT,
                      allow_degenerate: bool = False) -> tuple[np.ndarray, float]:
        """Mask (bool, slice shape) and predicted IoU for ``box`` = (x0, y0, x1, y1) on slice ``index``; waits for
        the encoder when the slice is not cached (scripts, the CLI; a GUI uses :meth:`start_segment_slice`)."""
        return self.segment(_slice_request(index, box, allow_degenerate), timeout)

    def segment(self, prompt: SliceRequest, timeout: float = MODEL_TIMEOUT) -> tuple[np.ndarray, float]:
        """:meth:`segment_slice` for one typed prompt (every field of it travels)."""
        body = self.client.request("POST", self._path("/segment"), timeout=timeout, json=prompt.to_json())
        return wire.unpack_mask(body["mask"]), float(body["score"])

    def start_segment_slice(self, index: int, box: Sequence[float], allow_degenerate: bool = False,
                            timeout: float | None = None, request_id: str | None = None) -> "RemoteJob":
        """:meth:`segment_slice` as a job on the server: answers at once; ``job.result()`` has ``mask`` (bool,
        slice shape), ``score``, ``encoder_calls`` and ``seconds``.  ``request_id``: the same id again (a start
        whose answer timed out) returns the same job."""
        return self.start_segment(_slice_request(index, box, allow_degenerate), timeout, request_id)

    def start_segment(self, prompt: SliceRequest, timeout: float | None = None,
                      request_id: str | None = None) -> "RemoteJob":
        """:meth:`start_segment_slice` for one typed prompt (every field of it travels)."""
        body = self.client.request("POST", self._path("/segment"), timeout=timeout, json={
            **prompt.to_json(), "async": True, **({"request_id": request_id} if request_id else {})})
        return RemoteJob(self, body["job_id"], int(body.get("total", 1)))

    def prefetch(self, indices: Sequence[int], timeout: float | None = None) -> None:
        """Ask the server to embed these slices in the background (replaces this session's previous request)."""
        self.client.request("POST", self._path("/prefetch"), timeout=timeout,
                            json={"indices": [int(i) for i in indices]})

    def propagate(self, key_boxes: dict, options: PropagationSettings | dict | None = None,
                  timeout: float = MODEL_TIMEOUT, request_id: str | None = None) -> "RemoteJob":
        """Start a propagation job.  ``options``: :class:`PropagationSettings` (or a dict of its fields: rule,
        slice_range (K0, K1), stop (bool), largest_component, fill_holes, margin).  ``request_id`` as for
        :meth:`start_segment_slice`."""
        settings = PropagationSettings.from_json(options)
        body = self.client.request("POST", self._path("/propagate"), timeout=timeout, json={
            "key_boxes": {str(int(k)): box_values(b) for k, b in key_boxes.items()}, "options": settings.to_json(),
            **({"request_id": request_id} if request_id else {})})
        return RemoteJob(self, body["job_id"], int(body.get("total", 0)))

    def start_object(self, key_boxes: dict, options: dict | None = None, timeout: float = MODEL_TIMEOUT,
                     request_id: str | None = None) -> "RemoteJob":
        """Propagate a correctable object (a job); its result has ``object_id``, ``mask``, ``scores``, ``keys``,
        ``locked``, ``range``.  ``options``: slice_range (K0, K1; either may be None), stop, margin."""
        start = ObjectStart.from_json({"key_boxes": key_boxes, "options": options})
        body = self.client.request("POST", self._path("/objects"), timeout=timeout, json={
            **start.to_json(), **({"request_id": request_id} if request_id else {})})
        return RemoteJob(self, body["job_id"], int(body.get("total", 0)))

    def correct(self, object_id: str, action: str, index: int | None = None, box=None,
                timeout: float = MODEL_TIMEOUT, request_id: str | None = None, mask=None) -> "RemoteJob":
        """One undoable step on an object (a job): ``box`` (a corrective key box on slice ``index``), ``cut``,
        ``accept``, ``edit`` (slice ``index`` takes the hand-edited bool ``mask`` and is locked) or ``undo``; the
        result is the whole object plus ``changed``, ``decoder_calls`` and ``doubtful`` (slices to review first)."""
        step = ObjectAction(action, None if index is None else int(index), None if box is None else Box.from_json(box),
                            None if mask is None else np.asarray(mask, dtype=bool))
        body = self.client.request("POST", self._path(f"/objects/{object_id}/actions"), timeout=timeout, json={
            **step.to_json(), **({"request_id": request_id} if request_id else {})})
        return RemoteJob(self, body["job_id"], int(body.get("total", 1)))

    def info(self) -> dict:
        return self.client.request("GET", self._path())

    def close(self) -> None:
        self.client.request("DELETE", self._path())


class RemoteJob:
    """Work running on the server: a propagation, one slice (:meth:`RemoteVolume.start_segment_slice`), a volume
    being taken or a session being opened.  Poll it (the server cancels a job nobody polls any more)."""

    def __init__(self, volume: RemoteVolume | None, job_id: str, total: int = 0,
                 client: EngineClient | None = None) -> None:
        self.volume = volume
        if client is None:
            if volume is None:
                raise ValueError("a RemoteJob needs its volume or its client")
            client = volume.client
        self.client: EngineClient = client
        self.job_id = job_id
        self.status = JobStatus(JobState.RUNNING, 0, total)
        self._error: dict | None = None  # {"code", "message"} of a failed job

    def poll(self, timeout: float = 0.05, request_timeout: float | None = None) -> JobStatus:
        """The job's state; waits up to ``timeout`` s on the server for progress (long poll, at most 10 s).
        ``request_timeout``: the most the request may take (default: the client's timeout plus ``timeout``); a GUI
        polls with ``timeout=0`` and a short ``request_timeout``."""
        body = self.client.request("GET", f"/jobs/{self.job_id}", params={"wait": f"{max(0.0, timeout):g}"},
                                   timeout=request_timeout or self.client.timeout + timeout)
        self.status = JobStatus(JobState(body["state"]), int(body["done"]), int(body["total"]),
                                body.get("message", ""))
        self._error = body.get("error")
        return self.status

    def wait(self, progress=None, poll_interval: float = 1.0) -> JobStatus:
        """Block until the job ends; ``progress(done, total)`` after each change."""
        while True:
            status = self.poll(timeout=poll_interval)
            if progress is not None:
                progress(status.done, status.total)
            if status.finished:
                return status

    def cancel(self, timeout: float | None = None) -> None:
        self.client.request("DELETE", f"/jobs/{self.job_id}", timeout=timeout)

    def raise_failure(self) -> None:
        """Raise what ended the job (after a poll said "cancelled" or "failed")."""
        status = self.status
        if status.state is JobState.CANCELLED:
            raise Cancelled(status.message or "cancelled on the engine; nothing was written")
        if status.state is JobState.FAILED:
            error = self._error or {}
            raise wire.error_from_body(int(error.get("status", 400)), {"error": self._error},
                                       status.message or "the engine failed")

    def result(self, progress=None, timeout: float = MODEL_TIMEOUT) -> dict:
        """Wait for the job (no wait when the last poll said it ended) and fetch its result: for a propagation
        dict(mask=bool (k, j, i), segmented_slices, stopped, scores, encoder_calls, seconds); for a slice
        dict(mask=bool slice, score, encoder_calls, seconds).  ``timeout``: of the fetch request (the server packed
        the result when the job ended, so the answer starts at once).

        A failed job raises its error; a cancelled one raises :class:`Cancelled`."""
        status = self.status if self.status.finished else self.wait(progress)
        if status.state is not JobState.DONE:
            self.raise_failure()
        return decode_result(self.client.request("GET", f"/jobs/{self.job_id}/result", timeout=timeout))


class _VolumeWanted(Exception):
    """An engine replica asked for a volume this client sent (and still holds)."""

    def __init__(self, fingerprint: str, error: MedSAMError) -> None:
        super().__init__(fingerprint)
        self.fingerprint, self.error = fingerprint, error


def _slice_request(index: int, box: object, allow_degenerate: bool) -> SliceRequest:
    return SliceRequest(int(index), Box.from_json(box), bool(allow_degenerate))


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    """As given (the server names a wrong count in its one-line answer)."""
    return tuple(float(v) for v in np.ravel(values))


def _reason(error: BaseException) -> str:
    """The root cause of a requests error in a few words (urllib3 nests the socket error several levels deep)."""
    cause = error
    while (parent := cause.__cause__ or cause.__context__) is not None:
        cause = parent
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is `medsam-slicer serve` running?)"
    if isinstance(cause, (ConnectionResetError, BrokenPipeError)):
        return "the connection was closed by the server (it stopped or crashed)"
    text = first_line(cause, 160)
    if "RemoteDisconnected" in type(cause).__name__ or "closed connection" in text:
        return "the server closed the connection without answering (it stopped or crashed)"
    return text


__all__ = ["EngineClient", "RemoteVolume", "RemoteJob", "JobStatus", "EngineUnavailable", "MedSAMError",
           "read_token_file"]
