"""From boxes on a few slices to a 3D mask.

Two rules share one loop:

- ``official``: the CVPR 2024 LiteMedSAM 3D inference.  Start on the key slice with the key box; then up and then
  down, each slice's box is the previous slice's mask bounding box plus 3 pixels at the model's 256 scale; when
  the previous mask is empty, fall back to the key box.  It runs over the whole given range and never stops early.
- ``ours``: the same box rule, plus several key boxes (each slice is prompted from its nearest key, keys win on
  their own slice), a stop rule (empty mask, area collapse, low predicted IoU) so that a range need not be known,
  and optional 3D clean-up (largest connected component, hole filling).

Embeddings come from the session's cache, so re-prompting or re-propagating never re-encodes a slice.  With a
runtime that runs requests side by side (OpenVINO), the next slices in processing order are encoded ahead of the
decoder (:class:`~.prefetch.EncodeAhead`); the masks are those of the sequential loop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from ..errors import ApiTypeError, BoxError, Cancelled, OptionError
from ..protocol import Box, axes, checked_box
from .prefetch import EncodeAhead
from .session import VolumeSession, check_box_type, check_index_type

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (slices done, slices planned)


@dataclass(frozen=True)
class SliceObservation:
    """What the stop rule sees of a freshly segmented slice, relative to the slice before it and the key."""

    area: int
    previous_area: int
    score: float  # decoder's predicted IoU
    overlap: float  # in-plane IoU with the previous slice's mask
    intensity_shift: float  # |mean - key mean| / key std of the windowed image under the mask


@dataclass(frozen=True)
class StopRule:
    """When propagation away from a key slice ends (``ours`` only).  0 disables a criterion."""

    stop_on_empty: bool = True
    min_area_ratio: float = 0.1  # smaller than this fraction of the previous slice's mask: the object ended
    min_score: float = 0.0  # decoder's predicted IoU below this
    min_overlap: float = 0.0  # in-plane IoU with the previous mask below this: the mask jumped elsewhere
    max_intensity_shift: float = 0.0  # region brightness this many key standard deviations away: another tissue

    def reason(self, seen: SliceObservation) -> str | None:
        if seen.area == 0:
            return "empty mask" if self.stop_on_empty else None
        if seen.previous_area > 0 and seen.area < self.min_area_ratio * seen.previous_area:
            return f"area collapsed to {seen.area / seen.previous_area:.0%} of the previous slice"
        if seen.score < self.min_score:
            return f"predicted IoU {seen.score:.2f} below {self.min_score:.2f}"
        if seen.overlap < self.min_overlap:
            return f"overlap with the previous slice {seen.overlap:.2f} below {self.min_overlap:.2f}"
        if self.max_intensity_shift and seen.intensity_shift > self.max_intensity_shift:
            return f"intensity moved {seen.intensity_shift:.1f} key standard deviations"
        return None


# Tuned on the real cases of ../shared/data by bench/tune_stop_rule.py (README: "Stop rule").  With a range the
# user already said where the object ends, so only a clear failure stops (the mask collapsed or jumped away while
# the decoder itself doubts it); without one, the rule must find the ends: a mask that no longer overlaps the
# previous slice's, or sits on tissue of another brightness than the key slice's, ends the object.
BOUNDED_STOP = StopRule(min_area_ratio=0.25, min_score=0.3, min_overlap=0.2)
OPEN_STOP = StopRule(min_area_ratio=0.1, min_overlap=0.4, max_intensity_shift=2.5)
AUTO = "auto"


@dataclass(frozen=True)
class PropagationOptions:
    rule: str = "ours"  # "ours" or "official"
    # inclusive; None = whole volume (ours stops by the stop rule); one end None = that side open (one-sided range:
    # the given end is bounded, the open side keeps the open stop rule)
    slice_range: tuple[int | None, int | None] | None = None
    margin: int = 3  # pixels at model scale added around the previous mask's box
    stop: StopRule | str | None = AUTO  # AUTO: BOUNDED_STOP with a range, OPEN_STOP without; None: never stop
    largest_component: bool = False
    fill_holes: bool = False

    def stop_rule(self, direction: int = +1) -> StopRule | None:
        """The rule that ends the walk outward from the outermost key in ``direction`` (+1 up, -1 down)."""
        if self.rule == "official" or self.stop is None:
            return None
        if self.stop == AUTO:
            return BOUNDED_STOP if self.bounded(direction) else OPEN_STOP
        return self.stop

    def bounded(self, direction: int) -> bool:
        """Whether the user gave the range end on this side."""
        if self.slice_range is None:
            return False
        return self.slice_range[1 if direction > 0 else 0] is not None

    def ends(self, slice_count: int) -> tuple[int, int]:
        low, high = self.slice_range if self.slice_range is not None else (None, None)
        return (0 if low is None else low), (slice_count - 1 if high is None else high)


@dataclass
class PropagationResult:
    mask: np.ndarray  # bool, volume shape
    scores: dict[int, float]
    boxes: dict[int, str]
    stopped: dict[str, str]  # direction -> why it stopped before the range end
    segmented_slices: int
    cancelled: bool = False


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def plan_order(keys: list[int], low: int, high: int) -> list[tuple[int, int, int]]:
    """(slice, its key, step) in processing order: each key, then outward until the range end or the midpoint
    to the neighbouring key, first upward then downward, as the official rule orders them."""
    keys = sorted(keys)
    order = []
    for n, key in enumerate(keys):
        upper = high if n == len(keys) - 1 else (key + keys[n + 1]) // 2
        lower = low if n == 0 else (keys[n - 1] + key) // 2 + 1
        order.append((key, key, 0))
        order.extend((index, key, +1) for index in range(key + 1, upper + 1))
        order.extend((index, key, -1) for index in range(key - 1, lower - 1, -1))
    return order


def _check_propagate_arguments(session: object, key_boxes: object, options: object, progress: object,
                               cancel: object) -> None:
    """Say what was expected when the Python API is called with the wrong kinds of objects."""
    if not isinstance(session, VolumeSession):
        raise ApiTypeError(f"propagate: session must be a VolumeSession, got {type(session).__name__}; open one with "
                           f"VolumeSession(segmenter, volume)")
    if not isinstance(key_boxes, dict):
        raise ApiTypeError(f"propagate: key_boxes must be a dict {{slice index: Box}}, got "
                           f"{type(key_boxes).__name__}")
    for index, box in key_boxes.items():
        check_index_type(index, "propagate: key_boxes")
        check_box_type(box, f"propagate: key_boxes[{index}]")
    if not isinstance(options, PropagationOptions):
        raise ApiTypeError(f"propagate: options must be a PropagationOptions, got {type(options).__name__} "
                           f"{options!r}; e.g. PropagationOptions(rule='ours')")
    if progress is not None and not callable(progress):
        raise ApiTypeError(f"propagate: progress must be a callable (done, total) or None, got "
                           f"{type(progress).__name__}")
    if cancel is not None and not isinstance(cancel, CancelToken):
        raise ApiTypeError(f"propagate: cancel must be a CancelToken or None, got {type(cancel).__name__}")


def propagate(session: VolumeSession, key_boxes: dict[int, Box], options: PropagationOptions = PropagationOptions(),
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> PropagationResult:
    """Segment the volume from key boxes; raises :class:`Cancelled` (nothing returned) if cancelled."""
    _check_propagate_arguments(session, key_boxes, options, progress, cancel)
    if not key_boxes:
        raise BoxError("propagation needs at least one key box")
    if options.rule not in ("ours", "official"):
        raise OptionError(f"unknown propagation rule {options.rule!r}; use ours or official")
    if options.rule == "official" and len(key_boxes) > 1:
        raise OptionError("the official rule takes one key box; use rule 'ours' for several")
    keys = {session.check_index(int(k)): checked_box(b, session.slice_shape) for k, b in key_boxes.items()}
    low, high = options.ends(session.slice_count)
    if low > high:
        raise BoxError(f"slice range {low}:{high} is reversed; give K0:K1 with K0 <= K1")
    session.check_index(low)
    session.check_index(high)
    outside = [k for k in keys if not low <= k <= high]
    if outside:
        raise BoxError(f"key slice {outside[0]} lies outside the range {low}:{high}")
    # The stop rule ends only the walks outward from the outermost keys: between two keys the user has bounded
    # the object on both sides, and a stop there would empty slices they asked for (issue 18, cause b).
    stop = {(max(keys), +1): options.stop_rule(+1), (min(keys), -1): options.stop_rule(-1)}

    order = plan_order(list(keys), low, high)
    depth = getattr(session.segmenter, "ahead_depth", 0) if len(order) > 1 else 0
    ahead = EncodeAhead(session, depth) if depth > 0 else None
    try:
        return _walk(session, keys, order, options, stop, progress, cancel, ahead)
    finally:
        if ahead is not None:
            ahead.close()


def upcoming(order: list[tuple[int, int, int]], start: int, stopped: set[tuple[int, int]], count: int) -> list[int]:
    """The next ``count`` slices the walk will visit from position ``start``, skipping directions that stopped
    (a direction that stops later wastes at most ``count - 1`` encodes, which stay in the cache)."""
    found = []
    for index, key, step in order[start:]:
        if step == 0 or (key, step) not in stopped:
            found.append(index)
            if len(found) == count:
                break
    return found


def _walk(session: VolumeSession, keys: dict[int, Box], order: list[tuple[int, int, int]],
          options: PropagationOptions, stop: dict[tuple[int, int], StopRule | None], progress: ProgressCallback | None,
          cancel: CancelToken | None, ahead: EncodeAhead | None) -> PropagationResult:
    result = PropagationResult(session.empty_mask(), {}, {}, {}, 0)
    previous_mask: dict[tuple[int, int], np.ndarray] = {}  # (key, step) -> last mask in that direction
    previous_area: dict[tuple[int, int], int] = {}
    stopped: set[tuple[int, int]] = set()
    key_stats: dict[int, RegionStats] = {}
    for done, (index, key, step) in enumerate(order):
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"propagation cancelled after {done} of {len(order)} slices; nothing was written")
        if step != 0 and (key, step) in stopped:
            continue
        if ahead is not None:
            ahead.want(upcoming(order, done, stopped, ahead.depth))
            embedding = ahead.embedding(index)
        else:
            embedding = session.embedding(index)
        if step == 0:
            mask, score = session.segmenter.predict(embedding, keys[key])
            key_stats[key] = RegionStats.of(axes.take_slice(session.image, session.np_axis, index), mask)
            result.boxes[index] = str(keys[key])
            for direction in (+1, -1):
                previous_mask[(key, direction)], previous_area[(key, direction)] = mask, int(mask.sum())
        else:
            model_box = session.segmenter.pipeline.box_from_previous_mask(previous_mask[(key, step)],
                                                                          embedding.geometry, options.margin)
            if model_box is None:  # previous mask empty: fall back to the key box, as the official rule does
                mask, score = session.segmenter.predict(embedding, keys[key])
                result.boxes[index] = f"key {keys[key]}"
            else:
                mask, score = session.segmenter.predict_model_box(embedding, model_box)
                result.boxes[index] = "model " + ",".join(f"{v:g}" for v in model_box)
            area = int(mask.sum())
            why = None
            rule = stop.get((key, step))
            if rule is not None:
                plane = axes.take_slice(session.image, session.np_axis, index)
                why = rule.reason(SliceObservation(area, previous_area[(key, step)], score,
                                                   _iou(mask, previous_mask[(key, step)]),
                                                   key_stats[key].shift(plane, mask)))
            if why is not None:
                stopped.add((key, step))
                result.stopped[f"key {key} {'up' if step > 0 else 'down'}"] = f"stopped at slice {index}: {why}"
                if progress is not None:
                    progress(done + 1, len(order))
                continue
            previous_mask[(key, step)], previous_area[(key, step)] = mask, area
        axes.put_slice(result.mask, session.np_axis, index, mask)
        result.scores[index] = score
        result.segmented_slices += 1
        if progress is not None:
            progress(done + 1, len(order))
    result.mask = clean_up(result.mask, options.largest_component, options.fill_holes)
    return result


@dataclass(frozen=True)
class RegionStats:
    mean: float
    std: float

    @staticmethod
    def of(plane: np.ndarray, mask: np.ndarray) -> "RegionStats":
        values = plane[mask].astype(np.float64)
        if values.size == 0:
            return RegionStats(0.0, 0.0)
        return RegionStats(float(values.mean()), float(values.std()))

    def shift(self, plane: np.ndarray, mask: np.ndarray) -> float:
        if not mask.any():
            return 0.0
        return abs(float(plane[mask].mean()) - self.mean) / max(self.std, 1.0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def clean_up(mask: np.ndarray, largest_component: bool, fill_holes: bool) -> np.ndarray:
    if largest_component and mask.any():
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
            mask = labels == (int(np.argmax(sizes)) + 1)
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask
