"""Annotation-time session log: what the reader did on one case, and when.

One JSON Lines file per (case, reader, mode) in a folder the user chooses, ``<case>.<reader>.<mode>.jsonl``.
Every line is one event, written with a single ``os.write`` on an ``O_APPEND`` descriptor and then ``fsync``-ed,
so a crash (or power loss) loses at most the event being written.  A crash in the middle of that write leaves a
torn last line; :func:`load_log` skips it and reports it, and the next :class:`SessionLog` on the same file starts
on a fresh line so the fragment never corrupts a later event.

An event::

    {"v": 1, "seq": 3, "session": "9f2c41d0", "kind": "propagate", "t": 812.431, "wall": "2025-05-02T09:14:03.120Z",
     "case": "case-3f9a0c1b22e4", "reader": "r1", "mode": "assisted", "slices": 14, "seconds": 9.8,
     "encoder_calls": 14}

- ``t``: the monotonic clock in seconds.  Durations are computed from it only, because the wall clock jumps (NTP,
  daylight saving).  Monotonic clocks of different processes are not comparable, so every :class:`SessionLog`
  stamps its events with a fresh ``session`` id and time between sessions is never counted.
- ``wall``: UTC wall-clock time, for the record (which day, in which order cases were read).
- ``seconds``: on events the software computed (``segment_slice``, ``propagate``), how long that took, ending at
  the event.  The reader was waiting on the tool, so that time is active time even when it exceeds the idle
  threshold.

Active time and idle gaps (:func:`active_time`): within a session, the time between consecutive events counts as
active unless the gap, after removing the software's own computing time, is longer than ``idle_threshold_s``; then
the whole gap is idle (a coffee break is not annotation time).  The default threshold is
:data:`DEFAULT_IDLE_THRESHOLD_S` = 120 s.  Why 120 s: the events are edit-level (boxes, strokes, propagations),
not every mouse move, so a reader who reviews slices between two edits produces no event; reviewing a slice and
drawing one contour take seconds to tens of seconds in published interaction studies (see
``study_simulation.ActionTimes``), so two minutes without any logged action is well beyond one action plus the
thinking around it, and well below a break.  This is a judgement, not a measured constant; every report states the
threshold it used and the idle time it removed, and ``medsam-slicer study report --idle-threshold`` recomputes
everything from the raw timestamps with another value.  A panel that logs throttled ``activity`` events (slice
scrolling, window changes) makes the estimate tighter.

Privacy: the log is private (files are created mode 0600) and local.  ``case`` must not be a patient identifier:
use :func:`case_pseudonym` (a keyed hash of the scan's name, with a random key kept in the log folder, so that the
same scan gets the same pseudonym for every reader and a dictionary of medical record numbers cannot reverse it)
or a pseudonym the user types.  Event fields that usually carry identifiers (:data:`IDENTIFYING_FIELDS`, e.g. a
volume node name, which Slicer takes from the DICOM patient name) are dropped and listed under ``redacted`` unless
the user opted in with ``allow_identifiers=True``.  The log never stores images; the accepted mask may be saved
beside it (:meth:`SessionLog.save_mask`) for the Dice comparisons of the study report.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..atomic import write_bytes_atomically
from ..errors import InputImageError
from ..paths import regular_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_IDLE_THRESHOLD_S = 120.0
MODES = ("assisted", "manual")
EVENT_KINDS = (
    "case_opened",  # slices=<count along the annotation axis>, axis=...
    "box_drawn",  # slice=<index>, box="x0,y0,x1,y1"
    "box_moved",  # slice, box
    "segment_slice",  # slice, seconds
    "propagate",  # slices=<slices segmented>, seconds, encoder_calls, range="k0:k1"
    "key_box_added",  # slice, box
    "undo",
    "manual_edit",  # slices=[indices changed], voxels=<changed voxel count>, tool=...
    "accept",  # mask=<file name from save_mask>
    "case_closed",
    "activity",  # optional, throttled: the reader is looking (slice scrolled, window changed)
    # Review of a correctable object (MedSAMSlicerLogic.object_review):
    "corrective_box",  # slice, box, slices=<slices recomputed>, seconds, encoder_calls, decoder_calls
    "slice_accepted",  # slice: no later correction writes to it
    "slice_rejected",  # slice: "this slice is wrong", listed first for a correction
    "slice_edited",  # slice: a hand edit sent to the engine (locked there)
    "object_cut",  # slice, slices=<slices cleared>: "the object ends here"
    "doubtful_jump",  # slice, score: "next doubtful slice"
)
# Field names that usually hold patient identifiers; dropped unless the user opted in.
IDENTIFYING_FIELDS = frozenset({
    "patient", "patient_name", "patient_id", "patient_birth_date", "birth_date", "accession_number",
    "study_uid", "series_uid", "study_instance_uid", "series_instance_uid", "series_description",
    "volume_name", "node_name", "path", "file", "filename", "image", "dicom",
})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_KEY_FILE = ".pseudonym-key"


def _check_name(what: str, value: str) -> str:
    """Case ids and reader ids become parts of file names: letters, digits, '_' and '-' only."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits, '_' or '-' (no dots, spaces or slashes)")
    return value


def log_path(folder: str | os.PathLike, case_id: str, reader: str, mode: str) -> Path:
    """Where the log of ``case_id`` read by ``reader`` in ``mode`` lives."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} must be one of {', '.join(MODES)}")
    return Path(folder) / f"{_check_name('case id', case_id)}.{_check_name('reader id', reader)}.{mode}.jsonl"


def case_pseudonym(folder: str | os.PathLike, source_name: str) -> str:
    """A stable pseudonym for a scan (``case-`` + 12 hex digits): HMAC-SHA256 of ``source_name`` under a random
    key created once in ``folder`` (``.pseudonym-key``, mode 0600).  Keep the key with the logs to map the same
    scan to the same case id later; without it the pseudonym cannot be recomputed from a guessed name."""
    key_path = Path(folder) / _KEY_FILE
    if os.path.lexists(folder) and not Path(folder).is_dir():
        raise InputImageError(f"log folder {folder} is a file; give a folder")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputImageError(f"cannot create the log folder {folder}: {error.strerror or error}") from None
    if not os.path.lexists(key_path):
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
    regular_file(key_path, "pseudonym key", folder_hint="it must be the file the study created; restore it")
    key = _read_key(key_path)
    for _ in range(100):  # another process created the key a moment ago and is still writing it
        if len(key) == 32:
            break
        time.sleep(0.01)
        key = _read_key(key_path)
    if len(key) < 16:
        raise InputImageError(f"{key_path} is damaged ({len(key)} bytes); restore it from a backup to keep the same "
                              f"case ids")
    digest = hmac.new(key, source_name.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"case-{digest[:12]}"


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()[:1024]
    except OSError as error:
        raise InputImageError(f"cannot read the pseudonym key {path}: {error.strerror or error}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"event field of type {type(value).__name__} is not JSON-serialisable")


def _utc(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write a whole file so that readers see the old or the new content, never a part (temp file + rename)."""
    return write_bytes_atomically(path, data)


# --------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class DamagedLine:
    line: int  # 1-based
    text: str  # the first 80 characters
    last: bool  # the file's last line (a crash mid-write) rather than one in the middle (a crash, then a resume)
    reason: str = "incomplete"  # what is wrong with it


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (strings, null, bool, NaN, infinity and 10**400 are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def whole_number(value: Any, default: int = 0) -> int:
    """``value`` as an int when it is a whole number of sane size (a count, an index), else ``default``."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value if abs(value) < 2 ** 53 else default
    number = finite_number(value)
    if number is None or number != int(number) or abs(number) >= 2 ** 53:
        return default
    return int(number)


def _event_problem(event: Any) -> str | None:
    """Why a parsed line is not an event we can use (None when it is one)."""
    if not isinstance(event, dict):
        return "not a JSON object"
    if not isinstance(event.get("kind"), str):
        return "no 'kind' text"
    if finite_number(event.get("t")) is None:
        return "'t' is not a finite number"
    if "seq" in event and (isinstance(event["seq"], bool) or not isinstance(event["seq"], int)
                           or abs(event["seq"]) >= 2 ** 53):
        return "'seq' is not a whole number"
    return None


@dataclass
class LogFile:
    path: Path
    events: list[dict]
    damaged: list[DamagedLine] = field(default_factory=list)


def load_log(path: str | os.PathLike) -> LogFile:
    """All complete events of a log, in file order, and the lines that are not (torn by a crash, or fields of the
    wrong type: ``t`` a finite number, ``kind`` text, ``seq`` a whole number).  A path that is not a regular file
    (a folder, a FIFO, a dangling link) or cannot be read is an :class:`InputImageError`."""
    path = regular_file(path, "session log", folder_hint="give a .jsonl log file")
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as error:
        raise InputImageError(f"cannot read the session log {path}: {error.strerror or error}") from None
    last_line = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    events, damaged = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line.decode("utf-8"))
            problem = _event_problem(event)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            problem = "incomplete"
        if problem is not None:
            damaged.append(DamagedLine(number, line[:80].decode("utf-8", "replace"), number == last_line, problem))
            continue
        events.append(event)
    for bad in damaged:
        if bad.reason == "incomplete":
            log.warning("%s line %d is incomplete (%s) and was skipped: %r", path.name, bad.line,
                        "cut short by a crash while writing" if bad.last else "left by an earlier crash", bad.text)
        else:
            log.warning("%s line %d is not a usable event (%s) and was skipped: %r", path.name, bad.line,
                        bad.reason, bad.text)
    return LogFile(path, events, damaged)


def read_log(path: str | os.PathLike) -> list[dict]:
    """The complete events of a log; torn lines are skipped with a warning (see :func:`load_log`)."""
    return load_log(path).events


# ------------------------------------------------------------------------------------------------ active time


@dataclass(frozen=True)
class IdleGap:
    session: str
    start_t: float  # monotonic time of the event before the gap
    end_t: float  # monotonic time of the event after it
    seconds: float


@dataclass(frozen=True)
class ActiveTime:
    active_s: float
    idle_s: float
    idle_gaps: tuple[IdleGap, ...]
    sessions: int
    threshold_s: float


def _busy_seconds(event: dict) -> float:
    return max(0.0, finite_number(event.get("seconds")) or 0.0)


def _t(event: dict) -> float:
    return finite_number(event.get("t")) or 0.0


def active_time(events: Iterable[dict], idle_threshold_s: float = DEFAULT_IDLE_THRESHOLD_S) -> ActiveTime:
    """Active and idle seconds of a case's events (see the module docstring for the rule)."""
    by_session: dict[str, list[dict]] = {}
    for event in events:
        by_session.setdefault(str(event.get("session", "")), []).append(event)
    active = idle = 0.0
    gaps: list[IdleGap] = []
    for session, session_events in by_session.items():
        session_events.sort(key=lambda e: (_t(e), whole_number(e.get("seq"))))
        for before, after in zip(session_events, session_events[1:]):
            gap = max(0.0, _t(after) - _t(before))
            busy = min(gap, _busy_seconds(after))  # the tool computing right before ``after``: the reader waits
            if gap - busy > idle_threshold_s:
                idle += gap - busy
                active += busy
                gaps.append(IdleGap(session, _t(before), _t(after), gap - busy))
            else:
                active += gap
    return ActiveTime(active, idle, tuple(gaps), len(by_session), idle_threshold_s)


TABLE_COLUMNS = ("seq", "wall", "t", "kind", "slices", "seconds", "details")
_ENVELOPE = ("v", "seq", "session", "kind", "t", "wall", "case", "reader", "mode")


def events_as_table(events: Iterable[dict]) -> list[list[str]]:
    """Rows of :data:`TABLE_COLUMNS` (all strings) for a table in the GUI, e.g. a Slicer table node of the case."""
    rows = []
    for event in events:
        slices = event.get("slices", event.get("slice", ""))
        details = {k: v for k, v in event.items() if k not in _ENVELOPE and k not in ("slice", "slices", "seconds")}
        rows.append([str(event.get("seq", "")), str(event.get("wall", "")), f"{float(event['t']):.3f}",
                     str(event["kind"]), json.dumps(slices) if isinstance(slices, list) else str(slices),
                     str(event.get("seconds", "")), json.dumps(details, default=_json_default) if details else ""])
    return rows


def changed_slices(before: np.ndarray, after: np.ndarray, np_axis: int) -> list[int]:
    """Indices along ``np_axis`` of the slices where two masks differ (for ``manual_edit`` events)."""
    if before.shape != after.shape:
        raise ValueError(f"mask shapes differ: {before.shape} vs {after.shape}")
    other = tuple(a for a in range(before.ndim) if a != np_axis)
    return [int(i) for i in np.flatnonzero(np.not_equal(before, after).any(axis=other))]


# ----------------------------------------------------------------------------------------------------- writing


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return b""
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


class SessionLog:
    """The log of one case being read by one reader in one mode; append events with :meth:`event`.

    Re-opening the same case (after closing it, or after a crash) appends to the same file under a new session
    id; :meth:`active_seconds` includes the earlier sessions.  Not thread-safe: call it from the GUI thread.
    """

    def __init__(self, folder: str | os.PathLike, case_id: str, reader: str = "anonymous", mode: str = "assisted",
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 idle_threshold_s: float = DEFAULT_IDLE_THRESHOLD_S, allow_identifiers: bool = False) -> None:
        if idle_threshold_s <= 0:
            raise ValueError(f"idle threshold must be positive, got {idle_threshold_s}")
        self.folder = Path(folder)
        self.case_id, self.reader, self.mode = case_id, reader, mode
        self.path = log_path(folder, case_id, reader, mode)
        self.clock, self.wall_clock = clock, wall_clock
        self.idle_threshold_s = idle_threshold_s
        self.allow_identifiers = allow_identifiers
        self.session_id = secrets.token_hex(4)
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = load_log(self.path) if self.path.exists() else None
        self.damaged_lines = list(previous.damaged) if previous else []
        self._earlier_active_s = active_time(previous.events, idle_threshold_s).active_s if previous else 0.0
        self._seq = max((int(e.get("seq", 0)) for e in previous.events), default=0) if previous else 0
        self._events: list[dict] = []  # this session's, for the running active time
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        if _last_byte(self.path) not in (b"", b"\n"):
            self._write(b"\n")  # a crash tore the last line: keep the fragment on its own line

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"the log {self.path.name} is closed")
        written = os.write(self._fd, data)  # one write on O_APPEND: the line lands whole at the end of the file
        if written != len(data):  # regular files do not write short unless the disk is full
            raise OSError(f"only {written} of {len(data)} bytes reached {self.path}; is the disk full?")
        os.fsync(self._fd)

    def event(self, kind: str, **fields: Any) -> dict:
        """Append one event and return it as written."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(EVENT_KINDS)}")
        redacted = sorted(k for k in fields if k.lower() in IDENTIFYING_FIELDS)
        if redacted and not self.allow_identifiers:
            fields = {k: v for k, v in fields.items() if k not in redacted}
            fields["redacted"] = redacted
        record = {"v": FORMAT_VERSION, "seq": self._seq + 1, "session": self.session_id, "kind": kind,
                  "t": round(float(self.clock()), 4), "wall": _utc(self.wall_clock()), "case": self.case_id,
                  "reader": self.reader, "mode": self.mode}
        clash = sorted(set(fields) & set(record))
        if clash:
            raise ValueError(f"event fields {clash} are reserved")
        record.update(fields)
        line = json.dumps(record, default=_json_default, separators=(",", ":"), allow_nan=False) + "\n"
        self._write(line.encode("utf-8"))
        self._seq += 1
        self._events.append(record)
        return record

    def save_mask(self, mask: np.ndarray, name: str = "final") -> str:
        """Save a mask (bool, volume shape) beside the log; returns the file name to put in the ``accept`` event."""
        _check_name("mask name", name)
        from io import BytesIO

        buffer = BytesIO()
        np.savez_compressed(buffer, mask=np.asarray(mask, dtype=bool))
        target = self.path.with_name(f"{self.path.stem}.{name}.npz")
        write_atomically(target, buffer.getvalue())
        return target.name

    def active_seconds(self, now: float | None = None) -> float:
        """Active time of the case so far (earlier sessions included), for a running clock in the panel: the time
        since the last event counts while it is below the idle threshold."""
        current = active_time(self._events, self.idle_threshold_s).active_s
        if self._events:
            since = (self.clock() if now is None else now) - float(self._events[-1]["t"])
            if 0 <= since <= self.idle_threshold_s:
                current += since
        return self._earlier_active_s + current

    def is_idle(self, now: float | None = None) -> bool:
        if not self._events:
            return True
        return (self.clock() if now is None else now) - float(self._events[-1]["t"]) > self.idle_threshold_s

    @property
    def events(self) -> list[dict]:
        """This session's events (a copy)."""
        return list(self._events)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SessionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def replay(events: Iterable[dict], folder: str | os.PathLike, masks_from: str | os.PathLike | None = None,
           idle_threshold_s: float = DEFAULT_IDLE_THRESHOLD_S) -> list[Path]:
    """Write recorded events again through :class:`SessionLog`, session by session, with clocks that return the
    recorded times: what a log would contain had the same actions happened now.  Mask files named by ``accept``
    events are copied from ``masks_from`` when given.  Returns the log files written."""
    written: list[Path] = []
    current: SessionLog | None = None
    recorded: dict = {}
    for event in events:
        key = (event["case"], event["reader"], event["mode"], event.get("session"))
        if current is None or key != recorded.get("key"):
            if current is not None:
                current.close()
            current = SessionLog(folder, event["case"], event["reader"], event["mode"],
                                 clock=lambda: recorded["t"], wall_clock=lambda: recorded["wall"],
                                 idle_threshold_s=idle_threshold_s, allow_identifiers=True)
            recorded["key"] = key
            if current.path not in written:
                written.append(current.path)
        recorded["t"] = float(event["t"])
        recorded["wall"] = datetime.strptime(event["wall"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
        fields = {k: v for k, v in event.items() if k not in _ENVELOPE}
        current.event(event["kind"], **fields)
        if masks_from is not None and event["kind"] == "accept" and event.get("mask"):
            source = Path(masks_from) / str(event["mask"])
            write_atomically(Path(folder) / source.name, source.read_bytes())
    if current is not None:
        current.close()
    return written
