"""The requests and results that cross between a front end, the client and the engine server, typed once.

Each type has ``to_json()`` (plain dicts, lists and numbers, as they travel) and ``from_json()`` (the inverse; it
accepts what ``to_json`` writes, and the looser dicts older callers still pass).  The server's pydantic models
validate untrusted input first and convert to these; the client builds these and sends ``to_json()``.

- :class:`SliceRequest`: one slice's prompt (the slice index and its box; the place for any further prompt field).
- :class:`SessionSpec`: how to open a session on an uploaded volume (geometry in LPS on the wire, window, slice axis).
- :class:`PropagationSettings`: what a propagation job should do (the wire's form of the engine's
  ``PropagationOptions``: ``stop`` is a yes/no here; the engine picks the rule).
- :class:`ObjectStart`, :class:`ObjectAction`: a correctable object's first key boxes and range, and one undoable
  step on it (a corrective box, a cut, an accept, an undo).
- :class:`JobState`: a job's state (a ``str`` enum: it compares equal to the strings older code uses).
- :class:`SliceResult`, :class:`PropagationResult`: what the engine produced; masks travel packed
  (:func:`.wire.pack_mask`), score keys as strings (JSON object keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .boxes import Box
from .volume import Frame, Volume, other_frame
from .wire import pack_mask, unpack_mask

Json = dict[str, Any]


class JobState(str, Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # "done", not "JobState.DONE", in messages and f-strings
        return self.value

    @property
    def finished(self) -> bool:
        return self is not JobState.RUNNING


@dataclass(frozen=True)
class SessionSpec:
    """A session's volume geometry (ITK order; in ``frame``), intensity window and slice axis."""

    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)  # 3 numbers (the server checks the counts)
    origin: tuple[float, ...] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    window: str = "auto"
    axis: str = "axial"
    modality: str | None = None
    already_normalized: bool = False
    frame: Frame = "LPS"

    @classmethod
    def of_volume(cls, volume: Volume, window: str = "auto", axis: str = "axial") -> SessionSpec:
        return cls(volume.spacing, volume.origin, volume.direction, window, axis, volume.modality,
                   volume.already_normalized, volume.frame)

    def volume(self, array: NDArray[Any], path: str = "") -> Volume:
        """The Volume this spec describes, on ``array`` (in the spec's frame)."""
        return Volume(array, _triple(self.spacing), _triple(self.origin), self.direction, path, self.modality,
                      self.already_normalized, frame=self.frame)

    def key(self) -> tuple[Any, ...]:
        """Everything that makes two prepared volumes differ (with the content fingerprint)."""
        return (self.spacing, self.origin, self.direction, self.window, self.axis, self.modality,
                self.already_normalized)

    def in_frame(self, frame: Frame) -> SessionSpec:
        if frame == self.frame:
            return self
        origin, direction = other_frame(self.origin, self.direction)
        return replace(self, origin=origin, direction=direction, frame=frame)

    def to_json(self) -> Json:
        """The wire form: geometry always in LPS (the server's frame)."""
        lps = self.in_frame("LPS")
        return {"spacing": [float(v) for v in lps.spacing], "origin": [float(v) for v in lps.origin],
                "direction": [float(v) for v in np.ravel(lps.direction)], "window": str(lps.window),
                "axis": str(lps.axis), "modality": lps.modality, "already_normalized": bool(lps.already_normalized)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SessionSpec:
        return cls(_floats(body.get("spacing", cls.spacing), 3), _floats(body.get("origin", cls.origin), 3),
                   _floats(body.get("direction", cls.direction), 9), str(body.get("window", "auto")),
                   str(body.get("axis", "axial")), body.get("modality"), bool(body.get("already_normalized", False)))


@dataclass(frozen=True)
class SliceRequest:
    """The prompt for one slice: a box on slice ``index`` (along the session's axis)."""

    index: int
    box: Box
    allow_degenerate: bool = False  # a box thinner than a voxel (the evaluation's simulated boxes)

    def to_json(self) -> Json:
        return {"index": int(self.index), "box": self.box.to_json(), "allow_degenerate": bool(self.allow_degenerate)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SliceRequest:
        return cls(int(body["index"]), Box.from_json(body["box"]), bool(body.get("allow_degenerate", False)))


def _end(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class PropagationSettings:
    rule: str = "ours"  # "ours" or "official"
    # inclusive; None: the whole volume; a None end is open on that side (that side keeps the stop rule)
    slice_range: tuple[int | None, int | None] | None = None
    stop: bool = True  # ours: stop where the object ends (the engine picks the rule for a range or none)
    largest_component: bool = False
    fill_holes: bool = False
    margin: int = 3  # pixels at model scale around the previous slice's mask

    def to_json(self) -> Json:
        return {"rule": self.rule, "slice_range": list(self.slice_range) if self.slice_range is not None else None,
                "stop": self.stop, "largest_component": self.largest_component, "fill_holes": self.fill_holes,
                "margin": self.margin}

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | PropagationSettings | None) -> PropagationSettings:
        if isinstance(body, PropagationSettings):
            return body
        body = body or {}
        return cls(str(body.get("rule", "ours")), _range(body.get("slice_range")), bool(body.get("stop", True)),
                   bool(body.get("largest_component", False)), bool(body.get("fill_holes", False)),
                   int(body.get("margin", 3)))


def _range(found: Any) -> tuple[int | None, int | None] | None:
    return None if found is None else (_end(found[0]), _end(found[1]))


def _key_boxes_json(key_boxes: Mapping[int, Box]) -> dict[str, list[float]]:
    return {str(int(k)): b.to_json() for k, b in key_boxes.items()}


@dataclass(frozen=True)
class ObjectStart:
    """A correctable object's first key boxes (slice -> box) and how far it may reach: ``slice_range`` (inclusive;
    a None end is open on that side), ``stop`` (stop where the object ends) and ``margin`` as in
    :class:`PropagationSettings` (the rule is always ``ours``)."""

    key_boxes: dict[int, Box]
    slice_range: tuple[int | None, int | None] | None = None
    stop: bool = True
    margin: int = 3

    def to_json(self) -> Json:
        return {"key_boxes": _key_boxes_json(self.key_boxes), "options": {
            "slice_range": list(self.slice_range) if self.slice_range is not None else None, "stop": self.stop,
            "margin": self.margin}}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ObjectStart:
        options = body.get("options") or {}
        return cls({int(k): Box.from_json(v) for k, v in body["key_boxes"].items()},
                   _range(options.get("slice_range")), bool(options.get("stop", True)), int(options.get("margin", 3)))


ACTIONS = ("box", "cut", "accept", "edit", "undo")


@dataclass(frozen=True, eq=False)
class ObjectAction:
    """One undoable step on a correctable object: ``box`` (a corrective key box on slice ``index``), ``cut`` (the
    object ends before ``index``), ``accept`` (lock slice ``index``), ``edit`` (slice ``index`` takes the
    hand-edited bool ``mask``, slice-shaped, and is locked) or ``undo`` (no index).  Compared by value, mask too."""

    action: str  # one of ACTIONS
    index: int | None = None
    box: Box | None = None
    mask: NDArray[np.bool_] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectAction):
            return NotImplemented
        same_mask = (self.mask is None and other.mask is None) or (
            self.mask is not None and other.mask is not None and np.array_equal(self.mask, other.mask))
        return (self.action, self.index, self.box) == (other.action, other.index, other.box) and same_mask

    def to_json(self) -> Json:
        return {"action": self.action, **({"index": int(self.index)} if self.index is not None else {}),
                **({"box": self.box.to_json()} if self.box is not None else {}),
                **({"mask": pack_mask(self.mask)} if self.mask is not None else {})}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ObjectAction:
        index, box, mask = body.get("index"), body.get("box"), body.get("mask")
        return cls(str(body["action"]), None if index is None else int(index),
                   None if box is None else Box.from_json(box), None if mask is None else _mask(mask))


@dataclass
class SliceResult:
    index: int
    mask: NDArray[np.bool_]  # the slice's shape
    score: float  # the decoder's predicted IoU
    box: Box

    def to_json(self) -> Json:
        return {"index": int(self.index), "mask": pack_mask(self.mask), "score": _finite(self.score),
                "box": self.box.to_json()}

    @classmethod
    def from_json(cls, body: Mapping[str, Any], index: int = -1, box: Box | None = None) -> SliceResult:
        """``index`` and ``box``: the request's, for answers that do not repeat them."""
        return cls(int(body.get("index", index)), _mask(body["mask"]), float(body.get("score", 0.0)),
                   Box.from_json(body["box"]) if "box" in body else box or Box(0.0, 0.0, 0.0, 0.0))


@dataclass
class PropagationResult:
    mask: NDArray[np.bool_]  # (k, j, i)
    segmented_slices: int
    stopped: dict[str, str] = field(default_factory=dict)  # direction -> why it stopped before the range end
    scores: dict[int, float] = field(default_factory=dict)  # slice -> predicted IoU

    def to_json(self) -> Json:
        return {"mask": pack_mask(self.mask), "segmented_slices": int(self.segmented_slices),
                "stopped": dict(self.stopped), "scores": {str(k): float(v) for k, v in self.scores.items()}}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PropagationResult:
        return cls(_mask(body["mask"]), int(body.get("segmented_slices", 0)), dict(body.get("stopped") or {}),
                   {int(k): float(v) for k, v in (body.get("scores") or {}).items()})


def decode_result(body: Json) -> Json:
    """A job's result as the server sent it, with its mask unpacked and its score keys back to ints (in place)."""
    if isinstance(body.get("mask"), dict):
        body["mask"] = unpack_mask(body["mask"])
    if "scores" in body:
        body["scores"] = {int(k): float(v) for k, v in body["scores"].items()}
    return body


def _mask(value: object) -> NDArray[np.bool_]:
    if isinstance(value, dict):
        return unpack_mask(value)
    return np.asarray(value, dtype=bool)


def _finite(value: float) -> float:
    value = float(value)
    return value if np.isfinite(value) else 0.0


def _floats(values: Any, count: int) -> tuple[float, ...]:
    result = tuple(float(v) for v in np.ravel(values))
    if len(result) != count:
        raise ValueError(f"expected {count} numbers, got {len(result)}")
    return result


def _triple(values: tuple[float, ...]) -> tuple[float, float, float]:
    a, b, c = _floats(values, 3)
    return (a, b, c)
