"""The HTTP API of the engine server (FastAPI; the OpenAPI page is at ``/docs``).

Routes only translate between HTTP and :class:`~.engine.Engine`; they hold no state.  Every error, whoever raises
it (the engine's errors.py classes, request validation, an unknown route, a bug), goes out as
``{"error": {"code": ..., "message": one line}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Optional

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from starlette.exceptions import HTTPException

from .. import __version__, protocol
from ..errors import BoxError, CacheError, Cancelled, CheckpointError, MedSAMError, ServiceError, first_line
from ..protocol import ACTIONS, Box, JobState, ObjectAction, ObjectStart, SessionSpec, SliceRequest, wire
from .auth import Guard
from .engine import Engine
from .volumes import checked_fingerprint

log = logging.getLogger(__name__)

Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
RequestId = Optional[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Startable(Strict):
    """``"async": true``: answer at once with a job (poll ``/jobs/{id}``, then fetch ``/jobs/{id}/result``), so a GUI
    never waits on the work.  ``request_id``: the same id again returns the same job (a retried start)."""

    run_async: StrictBool = Field(False, alias="async")
    request_id: RequestId = None


class SessionRequest(Startable):
    fingerprint: Fingerprint
    spacing: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=3, max_length=3)
    origin: list[Finite] = Field(min_length=3, max_length=3)
    direction: list[Finite] = Field(min_length=9, max_length=9)
    window: str = Field("auto", max_length=64)
    axis: str = Field("axial", max_length=16)
    modality: Optional[str] = Field(None, max_length=32)
    already_normalized: StrictBool = False

    def to_protocol(self) -> SessionSpec:
        return SessionSpec.from_json(self.model_dump())


class SegmentRequest(Startable):
    index: StrictInt
    box: list[float] = Field(min_length=4, max_length=4)  # NaN reaches checked_box, which names the problem
    allow_degenerate: StrictBool = False

    def to_protocol(self) -> SliceRequest:
        return SliceRequest.from_json(self.model_dump())


class PrefetchRequest(Strict):
    indices: list[StrictInt] = Field(max_length=4096)


class PropagationSettings(Strict):
    rule: str = Field("ours", pattern="^(ours|official)$")
    slice_range: Optional[tuple[StrictInt, StrictInt]] = None
    stop: StrictBool = True
    largest_component: StrictBool = False
    fill_holes: StrictBool = False
    margin: StrictInt = Field(3, ge=0, le=64)

    def to_protocol(self) -> protocol.PropagationSettings:
        return protocol.PropagationSettings.from_json(self.model_dump())


class KeyBoxesRequest(Strict):
    """Key boxes by slice, as JSON gives them: integer slice keys (JSON keys are strings), four numbers each."""

    key_boxes: dict[str, list[float]] = Field(min_length=1, max_length=1024)
    request_id: RequestId = None

    @field_validator("key_boxes")
    @classmethod
    def _keys(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for key, box in value.items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"key slice {key!r} is not an integer")
            if len(box) != 4:
                raise ValueError(f"the box of key slice {key} has {len(box)} numbers, not 4")
        return value


class PropagateRequest(KeyBoxesRequest):
    options: PropagationSettings = PropagationSettings()

    def to_protocol(self) -> dict[int, Box]:
        """The key boxes by slice; the settings convert on their own (``options.to_protocol()``)."""
        return {int(k): Box.from_json(v) for k, v in self.key_boxes.items()}


class ObjectSettings(Strict):
    slice_range: Optional[tuple[Optional[StrictInt], Optional[StrictInt]]] = None  # one end null: one-sided
    stop: StrictBool = True
    margin: StrictInt = Field(3, ge=0, le=64)


class ObjectRequest(KeyBoxesRequest):
    """A correctable object: its first key boxes and range."""

    options: ObjectSettings = ObjectSettings()

    def to_protocol(self) -> ObjectStart:
        return ObjectStart.from_json(self.model_dump(include={"key_boxes", "options"}))


class SliceMask(Strict):
    """A hand-edited slice mask as ``wire.pack_mask`` packs it (bounded: the page that sends it is untrusted)."""

    shape: tuple[Annotated[StrictInt, Field(ge=1, le=16384)], Annotated[StrictInt, Field(ge=1, le=16384)]]
    lo: Optional[tuple[Annotated[StrictInt, Field(ge=0)], Annotated[StrictInt, Field(ge=0)]]] = None
    hi: Optional[tuple[Annotated[StrictInt, Field(ge=0)], Annotated[StrictInt, Field(ge=0)]]] = None
    bits: str = Field("", max_length=44_739_244)  # base64 of 16384^2 bits

    def to_array(self):
        """The bool mask; a crop outside the shape or bits of the wrong length is a BoxError (400)."""
        if (self.lo is None) != (self.hi is None) or (self.lo is not None and self.hi is not None and not all(
                0 <= a < b <= n for a, b, n in zip(self.lo, self.hi, self.shape))):
            raise BoxError("the edited mask's crop lies outside its shape")
        try:
            return wire.unpack_mask(self.model_dump())
        except ValueError as error:
            raise BoxError(f"the edited mask is not packed as wire.pack_mask does ({first_line(error)})") from None


class ActionRequest(Strict):
    action: str = Field(pattern="^(" + "|".join(ACTIONS) + ")$")
    index: Optional[StrictInt] = None
    box: Optional[list[float]] = Field(None, min_length=4, max_length=4)
    mask: Optional[SliceMask] = None  # "edit": the slice's hand-edited mask
    request_id: RequestId = None

    def to_protocol(self) -> ObjectAction:
        return ObjectAction(self.action, self.index, Box.from_json(self.box) if self.box is not None else None,
                            self.mask.to_array() if self.mask is not None else None)


class FileRequest(Startable):
    name: str = Field(max_length=255)


def status_of(error: MedSAMError) -> int:
    if isinstance(error, ServiceError):
        return error.status
    if isinstance(error, Cancelled):
        return 409
    if isinstance(error, CheckpointError):
        return 500
    if isinstance(error, CacheError):
        return 507
    return 400


def create_app(engine: Engine, tokens: list[str]) -> FastAPI:
    config = engine.config
    app = FastAPI(title="MedSAMSlicer engine", version=__version__,
                  description="Box-prompted MedSAM / LiteMedSAM segmentation as a service. Every route but "
                              "/health needs 'Authorization: Bearer <token>'.")

    @app.exception_handler(MedSAMError)
    async def _medsam_error(request: Request, error: MedSAMError) -> JSONResponse:
        return JSONResponse(wire.error_body(error), status_code=status_of(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": {"code": "bad_request", "message": "the request body is not valid JSON"}},
                                status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        message = f"{where}: {first_line(Exception(first.get('msg', 'invalid value')))}"
        return JSONResponse({"error": {"code": "bad_request", "message": message}}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
        return JSONResponse({"error": {"code": code, "message": first_line(Exception(error.detail))}},
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(wire.error_body(error, "internal"), status_code=500)

    def owner(request: Request) -> str:
        return request.state.owner

    @app.get("/health")
    def health() -> dict:
        """Open to all: is the server up, is the model loaded."""
        return {"status": "ok", "ready": engine.ready.is_set(), "loading": engine.loading,
                "error": engine.load_error, "version": __version__}

    @app.get("/info")
    def info() -> dict:
        """Model, device, backend, cache figures, encoder calls, limits."""
        return engine.info()

    @app.get("/volumes/{fingerprint}")
    def volume_present(fingerprint: str) -> dict:
        return {"present": engine.has_volume(fingerprint)}

    @app.put("/volumes/{fingerprint}")
    async def upload_volume(fingerprint: str, request: Request) -> dict:
        """Body: zlib-compressed .npy of the (k, j, i) array; named by the sha256 of shape, dtype and voxels."""
        checked_fingerprint(fingerprint)  # validates the name before reading anything (no engine call: async route)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_upload_bytes:  # chunked uploads have no Content-Length to refuse early
                raise ServiceError(f"the upload exceeds this server's limit of {config.max_upload_bytes >> 20} MiB "
                                   f"(serve --max-upload-mb)", "too_large", 413)
            chunks.append(chunk)
        data = b"".join(chunks)
        del chunks
        array = await run_in_threadpool(wire.decompress_volume, data, config.memory_bytes // 2)
        await run_in_threadpool(engine.add_volume, fingerprint, array)
        return {"present": True, "fingerprint": fingerprint}

    @app.post("/volumes/{fingerprint}/from-file")
    def volume_from_file(fingerprint: str, body: FileRequest, request: Request) -> dict:
        """Local mode: read a .npy the client wrote into the server's private folder (``info.local_dir``)."""
        engine.has_volume(fingerprint)
        if body.run_async:
            return engine.start_volume_from_file(owner(request), fingerprint, body.name, body.request_id)
        return engine.volume_from_file(fingerprint, body.name)

    @app.post("/sessions")
    def open_session(body: SessionRequest, request: Request) -> dict:
        """A session on an uploaded volume; with ``async`` a job whose result is the session's description."""
        if body.run_async:
            return engine.start_open_session(owner(request), body.request_id, body.fingerprint, body.to_protocol())
        return engine.open_session(owner(request), body.fingerprint, body.to_protocol())

    @app.get("/sessions/{session_id}")
    def session_info(session_id: str, request: Request) -> dict:
        return engine.session(owner(request), session_id).describe()

    @app.delete("/sessions/{session_id}")
    def close_session(session_id: str, request: Request) -> dict:
        engine.close_session(owner(request), session_id)
        return {"closed": session_id}

    @app.post("/sessions/{session_id}/segment")
    def segment(session_id: str, body: SegmentRequest, request: Request) -> dict:
        """One box on one slice: the mask as packed bits of its bounding box, and the predicted IoU.  With
        ``async``: a job at once, whose result has the mask and the score (the encoder runs meanwhile)."""
        if body.run_async:
            return engine.start_segment(owner(request), session_id, body.to_protocol(), body.request_id)
        mask, score = engine.segment(owner(request), session_id, body.to_protocol())
        return {"mask": wire.pack_mask(mask), "score": score if math.isfinite(score) else 0.0}

    @app.post("/sessions/{session_id}/prefetch")
    def prefetch(session_id: str, body: PrefetchRequest, request: Request) -> dict:
        engine.prefetch(owner(request), session_id, body.indices)
        return {"queued": len(body.indices)}

    @app.post("/sessions/{session_id}/propagate")
    def start_propagation(session_id: str, body: PropagateRequest, request: Request) -> dict:
        return engine.start_job(owner(request), session_id, body.to_protocol(), body.options.to_protocol(),
                                body.request_id)

    @app.post("/sessions/{session_id}/objects")
    def start_object(session_id: str, body: ObjectRequest, request: Request) -> dict:
        return engine.start_object(owner(request), session_id, body.to_protocol(), body.request_id)

    @app.post("/sessions/{session_id}/objects/{object_id}/actions")
    def object_action(session_id: str, object_id: str, body: ActionRequest, request: Request) -> dict:
        return engine.start_object_action(owner(request), session_id, object_id, body.to_protocol(),
                                          body.request_id)

    @app.get("/jobs/{job_id}")
    def job_status(job_id: str, request: Request, wait: float = Query(0.0, ge=0, le=10)) -> dict:
        """Progress; ``wait`` seconds of long poll for a change.  A job nobody polls is cancelled."""
        return engine.job(owner(request), job_id, wait if math.isfinite(wait) else 0.0).describe()

    @app.delete("/jobs/{job_id}")
    def cancel_job(job_id: str, request: Request) -> dict:
        return engine.cancel_job(owner(request), job_id)

    @app.get("/jobs/{job_id}/result")
    def job_result(job_id: str, request: Request) -> dict:
        """A finished job's result, packed for the wire when the job ended (this answer only serialises it)."""
        job = engine.job(owner(request), job_id)
        if job.state != JobState.DONE or job.result is None:
            raise ServiceError(f"the job is {job.state}, it has no result", "not_ready", 409)
        return job.result

    app.add_middleware(Guard, tokens=tokens, max_body=config.max_upload_bytes)  # outermost: before any body read
    return app
