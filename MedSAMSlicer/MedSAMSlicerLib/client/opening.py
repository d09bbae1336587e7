"""Opening a volume on the engine in short steps, for a GUI that polls from a timer and may not wait (no threads).

:meth:`EngineClient.open_volume` does everything in one call, which takes seconds for a CT (hashing 30 MB, writing
or compressing it, the server reading and windowing it).  :meth:`VolumeOpening.step` does at most ``budget`` seconds
of local work (one slab of 1 MiB at least) or one request with that timeout, and returns the
:class:`~.engine_client.RemoteVolume` once the session is open:

1. fingerprint: sha256 of shape, dtype and voxels (as :func:`.wire.content_fingerprint`), a slab per step;
2. ask whether the server already holds that content (then skip 3);
3. a loopback server whose private folder we can write: write the ``.npy`` there a slab per step, then ask the
   server to take it as a job (it reads and checks it) and poll that job.  Any other server: compress a slab per
   step, then send it in ONE upload request -- the one step that takes as long as the network needs (its timeout is
   ``upload_timeout``); it happens once per volume content;
4. open the session as a job (it waits for the model and windows the volume), poll it, read its description.

A request that times out raises :class:`EngineUnavailable` and leaves the state as it was, so the next ``step``
retries it; start requests carry a request id, so a retry never starts a second job.  The caller decides when too
many failures mean the engine is gone.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import logging
import os
import secrets
import tempfile
import time
import zlib
from pathlib import Path
from typing import IO, Any, Optional, Sequence, cast
from urllib.parse import urlparse

import numpy as np

from ..errors import EngineUnavailable, InputImageError, ServiceError
from ..protocol import SessionSpec

log = logging.getLogger(__name__)

SLAB = 1 << 20  # bytes of local work between two looks at the clock
UPLOAD_TIMEOUT = 600.0  # seconds for the one upload request to a remote server


class VolumeOpening:
    """One volume being opened on the engine, step by step.  ``message``, ``done`` and ``total`` say where it is."""

    def __init__(self, client, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
                 window: str = "auto", axis: str = "axial", modality: Optional[str] = None,
                 already_normalized: bool = False, fingerprint: Optional[str] = None,
                 upload_timeout: float = UPLOAD_TIMEOUT) -> None:
        array = np.asarray(array)
        if array.ndim != 3:
            raise InputImageError(f"the volume has {array.ndim} dimensions; give a 3D array")
        self.client = client
        self.array = np.ascontiguousarray(array)  # the logic's copies are contiguous already: no copy then
        self._bytes = memoryview(cast(Any, self.array.reshape(-1).view(np.uint8)))  # numpy arrays are buffers
        self.session_body = SessionSpec(
            tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
            tuple(float(v) for v in np.ravel(direction)), str(window), str(axis), modality,
            bool(already_normalized)).to_json()
        self.upload_timeout = upload_timeout
        self.fingerprint = fingerprint
        self.stage = "hash" if fingerprint is None else "check"
        self.message = "checking the volume"
        self.done, self.total = 0, len(self._bytes)
        self._digest = hashlib.sha256()
        self._digest.update(repr((tuple(int(n) for n in self.array.shape), self.array.dtype.str)).encode())
        self._offset = 0
        self._file: Optional[tuple[IO[bytes], str]] = None  # (stream, path) of the hand-over file being written
        self._compressor: Optional[Any] = None  # a zlib compressor (its type is private to zlib)
        self._compressed: list[bytes] = []
        self._job: Any = None  # RemoteJob of the server's part (hand-over or session opening)
        self._request_ids = {"file": secrets.token_urlsafe(12), "open": secrets.token_urlsafe(12)}
        self.remote = None

    @property
    def finished(self) -> bool:
        return self.remote is not None

    def step(self, budget: float = 0.05):
        """One bounded piece of work; the RemoteVolume once open, else None."""
        if self.remote is not None:
            return self.remote
        handler = getattr(self, f"_{self.stage}")
        return handler(budget)

    def run(self, timeout: float = 600.0):
        """Every step in a row (scripts): the RemoteVolume."""
        deadline = time.monotonic() + timeout
        while self.step(budget=1.0) is None:
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"opening the volume on the engine took more than {timeout:g} s")
        return self.remote

    def close(self) -> None:
        """Give up (the caller no longer needs the volume): remove a half-written hand-over file."""
        self._drop_file()

    # -- local work, a slab at a time -----------------------------------------------------------------------------
    def _slabs(self, budget: float):
        """Offsets of slabs to process until ``budget`` seconds are spent (one slab at least)."""
        start = time.perf_counter()
        while self._offset < len(self._bytes):
            begin, self._offset = self._offset, min(self._offset + SLAB, len(self._bytes))
            self.done = self._offset
            yield self._bytes[begin:self._offset]
            if time.perf_counter() - start >= budget:
                return

    def _hash(self, budget: float):
        for slab in self._slabs(budget):
            self._digest.update(slab)
        self.message = f"checking the volume ({self._percent()}%)"
        if self._offset >= len(self._bytes):
            self.fingerprint = self._digest.hexdigest()
            self.stage, self._offset = "check", 0
        return None

    def _check(self, budget: float):
        self.message = "asking the engine for the volume"
        if self.client.request("GET", f"/volumes/{self.fingerprint}", timeout=budget)["present"]:
            self.stage = "open"
        else:
            self.stage = "route"
        return None

    def _route(self, budget: float):
        """Hand-over file (a loopback server whose private folder we can write) or upload."""
        info = self.client.known_info or self.client.info(timeout=budget)
        client_dir = self.client.local_dir
        if client_dir is None:
            client_dir = info["local_dir"] if shares_files(self.client.url, info.get("local_dir")) else ""
            self.client.local_dir = client_dir
        self.done, self.total = 0, len(self._bytes)
        self.stage = "write" if client_dir else "compress"
        return None

    def _write(self, budget: float):
        try:
            if self._file is None:
                handle, path = tempfile.mkstemp(suffix=".npy", dir=self.client.local_dir)
                stream: IO[bytes] = os.fdopen(handle, "wb")
                self._file = (stream, path)
                np.lib.format.write_array_header_1_0(stream, np.lib.format.header_data_from_array_1_0(self.array))
            stream = self._file[0]
            for slab in self._slabs(budget):
                stream.write(slab)
            self.message = f"handing the volume to the engine ({self._percent()}%)"
            if self._offset >= len(self._bytes):
                stream.close()
                self.stage = "take"
        except OSError as error:  # the folder is not ours after all (another user, another machine): upload
            log.info("cannot hand the volume over as a file (%s); uploading it", error)
            self._drop_file()
            self.client.local_dir = ""
            self.stage, self._offset = "compress", 0
        return None

    def _take(self, budget: float):
        self.message = "the engine is reading the volume"
        if self._job is None:
            assert self._file is not None, "the hand-over file was written at the previous stage"
            body = self.client.request("POST", f"/volumes/{self.fingerprint}/from-file", timeout=budget, json={
                "name": os.path.basename(self._file[1]), "async": True, "request_id": self._request_ids["file"]})
            self._job = self._job_of(body)
            return None
        if self._job_done(budget):
            self._file, self._job = None, None  # the server removed the file once read
            self.stage = "open"
        return None

    def _compress(self, budget: float):
        if self._compressor is None:
            self._compressor = zlib.compressobj(1)  # as wire.compress_volume: level 1
            self._compressed = [self._compressor.compress(_npy_header(self.array))]
        for slab in self._slabs(budget):
            self._compressed.append(self._compressor.compress(slab))
        self.message = f"compressing the volume ({self._percent()}%)"
        if self._offset >= len(self._bytes):
            self._compressed.append(self._compressor.flush())
            self.stage = "upload"  # at the next step: the caller shows this message before the long request
            self.message = f"sending the volume ({sum(map(len, self._compressed)) / (1 << 20):.1f} MB)"
        return None

    def _upload(self, budget: float):
        """The one long request (remote servers only): its duration is the network's."""
        body = b"".join(self._compressed)
        limit = int((self.client.known_info or {}).get("max_upload_bytes", 0))
        if limit and len(body) > limit:
            raise ServiceError(f"the compressed volume is {len(body) >> 20} MiB; this server accepts at most "
                               f"{limit >> 20} MiB (serve --max-upload-mb)", "too_large", 413)
        self.client.request("PUT", f"/volumes/{self.fingerprint}", data=body, timeout=self.upload_timeout,
                            headers={"Content-Type": "application/octet-stream"})
        self._compressed = []
        self.stage = "open"
        return None

    def _open(self, budget: float):
        self.message = "the engine is preparing the volume"
        if self._job is None:
            self.client.remember(self.fingerprint, self.array)  # a scaled-out engine may ask for it again
            body = self.client.request("POST", "/sessions", timeout=budget, json={
                "fingerprint": self.fingerprint, **self.session_body, "async": True,
                "request_id": self._request_ids["open"]})
            self._job = self._job_of(body)
            return None
        if not self._job.status.finished:
            self._job_done(budget)  # the description is fetched at the next step, with a budget of its own
            return None
        self.remote = self.client.volume_of(self._job.result(timeout=budget))
        self._job = None
        return self.remote

    # -- helpers ------------------------------------------------------------------------------------------------
    def _job_of(self, body: dict):
        return self.client.job_of(body)

    def _job_done(self, budget: float) -> bool:
        """Poll the server's part once; raise its error when it failed."""
        status = self._job.poll(timeout=budget / 2, request_timeout=budget)  # a job ending meanwhile answers now
        if not status.finished:
            return False
        if status.state != "done":
            job, self._job = self._job, None
            job.raise_failure()
        return True

    def _drop_file(self) -> None:
        if self._file is not None:
            stream, path = self._file
            self._file = None
            try:
                stream.close()
            finally:
                Path(path).unlink(missing_ok=True)

    def _percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 100


def shares_files(url: str, local_dir: object) -> bool:
    """A loopback server whose private folder we can write: hand volumes over as files instead of uploads."""
    if not isinstance(local_dir, str) or not local_dir:
        return False
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return loopback and os.path.isdir(local_dir) and os.access(local_dir, os.W_OK)


def _npy_header(array: np.ndarray) -> bytes:
    """The .npy header of ``array`` (what ``np.save`` writes before the voxels)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue()
