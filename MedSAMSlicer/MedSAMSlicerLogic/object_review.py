"""Review of a propagated object, slice by slice: corrective boxes, accept, "wrong", "ends here", next doubtful.

The engine keeps the object (``MedSAMSlicerLib.engine.corrections.CorrectableObject``, reached through the client's
``start_object`` / ``correct``): a corrective key box recomputes only the stretch it improves, from cached
embeddings; a slice the reader accepted or edited by hand is locked there, so no later correction writes to it.
This module is the MRML side, for every front end (the Slicer panel, the Segment Editor effect, the browser app):

- each engine action is an operation of :class:`~.box_segmentation.BoxSegmentationLogic`, started with its
  ``start_request`` and advanced by its ``poll()`` a short step at a time (no request waits longer than its
  ``POLL_TIMEOUT`` of 50 ms; no thread): the requests below carry their own ``start_job`` and ``finish``
  (``engine_jobs.OwnJob``);
- a correction writes only the slices the engine changed into the object's segment, as one undoable step of the
  logic's undo stack; :meth:`ObjectReview.undo` undoes the last review action in the segment and on the engine;
- "accept this slice" and a hand edit (the manual tools; :meth:`ObjectReview.note_manual_edit` sends the edited
  slices) lock the slice on the engine; "this slice is wrong" marks it for a correction (nothing is sent: a box or
  a hand edit on it follows); "end the object here" cuts the object's range; "next doubtful slice" is local (the
  engine sent the doubtful slices -- low predicted IoU -- with its last answer);
- every action is a time-log event (``study.timelog.EVENT_KINDS``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from MedSAMSlicerLib.errors import BoxError, MedSAMError
from MedSAMSlicerLib.protocol import Box, PropagationResult, axes

from .engine_jobs import Outcome, PendingOperation, Progress, ProgressState, PropagationInput
from .roi_prompts import prompt_from_roi
from .segments import read_segment, segment_exists
from .volume_nodes import VolumeOnGrid



@dataclass
class ReviewState:
    """What the engine said about the object in its last answer."""

    object_id: str = ""
    volume_node_id: str = ""
    grid_key: tuple = ()
    window: str = "auto"
    axis: str = "k"
    np_axis: int = 0
    scores: dict = field(default_factory=dict)  # slice -> predicted IoU
    doubtful: list = field(default_factory=list)  # slices to review first (lowest IoU first)
    locked: list = field(default_factory=list)  # accepted or hand-edited slices
    keys: dict = field(default_factory=dict)  # slice -> [x0, y0, x1, y1]
    slice_range: list = field(default_factory=lambda: [None, None])
    wrong: set = field(default_factory=set)  # slices the reader marked wrong, not corrected yet
    history: list = field(default_factory=list)  # review actions done, for undo: (action, wrote the segment)
    known: Optional[np.ndarray] = None  # the segment as the review last left it: a slice that differs was edited


@dataclass
class ObjectStart:
    """Propagate a new correctable object from the current key boxes (a job on the engine).

    The propagation is the logic's :class:`~.engine_jobs.PropagationInput` as copied out of MRML, held rather than
    inherited: ``engine_jobs`` runs any ``PropagationInput`` as a plain propagation (``isinstance``), while this
    starts and finishes its own job (``engine_jobs.OwnJob``)."""

    review: "ObjectReview"
    propagation: PropagationInput

    # What the logic and its jobs read of any request (OwnJob): the propagation's own.
    grid = property(lambda self: self.propagation.grid)
    grid_key = property(lambda self: self.propagation.grid_key)
    window = property(lambda self: self.propagation.window)
    remote_key = property(lambda self: self.propagation.remote_key)

    def start_job(self, remote, budget: float, request_id: str):
        # The object takes the settings' range, stop and margin (its rule is always ours; the rest does not apply).
        return remote.start_object(self.propagation.key_boxes, self.propagation.settings.to_json(), timeout=budget,
                                   request_id=request_id)

    def finish(self, pending: PendingOperation, result: dict) -> Progress:
        propagation = self.propagation
        changed = [int(i) for i in result.get("changed", [])]
        self.review.state = ReviewState(str(result["object_id"]), pending.volume_node_id, propagation.grid_key,
                                        propagation.window, propagation.axis, propagation.prompts[0].np_axis)
        self.review.take(result)
        return self.review.write(pending, self, result, changed, "Propagate 3D (review)", "propagate")


@dataclass
class ObjectAction:
    """One review action on the engine's object: box, cut, accept, edit or undo."""

    review: "ObjectReview"
    grid: VolumeOnGrid
    grid_key: tuple
    window: str
    axis: str
    action: str
    index: Optional[int] = None
    box: Optional[Box] = None
    mask: Optional[np.ndarray] = None  # "edit": the slice as the reader left it
    log_kind: str = ""

    @property
    def remote_key(self) -> tuple:
        return self.grid_key, self.window, self.axis

    def start_job(self, remote, budget: float, request_id: str):
        box = None if self.box is None else (float(self.box.x0), float(self.box.y0), float(self.box.x1),
                                             float(self.box.y1))
        return remote.correct(self.review.state.object_id, self.action, self.index, box, timeout=budget,
                              request_id=request_id, mask=self.mask)

    def finish(self, pending: PendingOperation, result: dict) -> Progress:
        review = self.review
        logic = review.logic
        review.take(result)
        fields: dict[str, Any] = {"slice": self.index} if self.index is not None else {}
        if self.action in ("box", "cut"):
            review.state.wrong.discard(self.index)
            if self.box is not None:
                fields["box"] = str(self.box)
            title = f"Corrective box on slice {self.index}" if self.action == "box" else \
                f"Object ends at slice {self.index}"
            return review.write(pending, self, result, [int(i) for i in result.get("changed", [])], title,
                                self.log_kind, **fields)
        if self.action == "undo":
            review.state.known = review.segment_now(logic.scene.GetNodeByID(pending.volume_node_id))
            return Progress(ProgressState.DONE, "Undo", 1, 1, "undone on the engine")
        review.state.wrong.discard(self.index)
        review.state.history.append((self.action, False))
        if self.action == "edit" and review.state.known is not None and self.mask is not None:
            axes.put_slice(review.state.known, review.state.np_axis, int(self.index), self.mask)
        if self.log_kind:
            logic.log_event(self.log_kind, **fields)
        return Progress(ProgressState.DONE, pending.title, 1, 1,
                        f"slice {self.index} {self.action}ed; later corrections keep it")


class ObjectReview:
    """The review actions of one object at a time, over a :class:`BoxSegmentationLogic` (which runs them)."""

    def __init__(self, logic) -> None:
        self.logic = logic
        self.state: Optional[ReviewState] = None
        self.queue: list = []  # hand edits waiting for the logic to be free (one engine action at a time)

    # -- reading --------------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state is not None and bool(self.state.object_id)

    def take(self, result: dict) -> None:
        state = self.state
        if state is None:
            return
        state.scores = {int(k): float(v) for k, v in (result.get("scores") or {}).items()}
        state.doubtful = [int(i) for i in result.get("doubtful", [])]
        state.locked = [int(i) for i in result.get("locked", [])]
        state.keys = {int(k): list(v) for k, v in (result.get("keys") or {}).items()}
        state.slice_range = list(result.get("range") or [None, None])

    def next_doubtful(self, current: int) -> Optional[int]:
        """The next slice after ``current`` (wrapping) that is marked wrong or that the engine doubts (and nobody
        accepted or edited); None when none is left.  Logged as a jump."""
        state = self._need_object()
        waiting = sorted(set(state.wrong) | {s for s in state.doubtful if s not in state.locked})
        if not waiting:
            return None
        later = [s for s in waiting if s > current]
        index = later[0] if later else waiting[0]
        self.logic.log_event("doubtful_jump", slice=index, score=round(state.scores.get(index, 0.0), 3))
        return index

    def mark_wrong(self, index: int) -> None:
        """"This slice is wrong": it is listed first for a correction (a box or a hand edit on it)."""
        state = self._need_object()
        state.wrong.add(int(index))
        self.logic.log_event("slice_rejected", slice=int(index))

    # -- engine actions (start; the logic's poll() runs them) ---------------------------------------------------------
    def start(self, volume_node, roi_nodes=None, segmentation_node=None, segment_id=None, window: str = "auto",
              range_mode: str = "auto", stop: bool = True) -> PendingOperation:
        """Propagate the current key boxes as a correctable object (replaces the object under review)."""
        propagation = self.logic.propagation_request(volume_node, roi_nodes, window, range_mode, stop=stop)
        return self.logic.start_request("Propagate 3D", volume_node, ObjectStart(self, propagation),
                                        segmentation_node, segment_id)

    def corrective_box(self, volume_node, roi_node) -> PendingOperation:
        """A box drawn or dragged on a slice of the object: it becomes a key box; only its stretch is recomputed."""
        state = self._need_object()
        prompt = prompt_from_roi(roi_node, self.logic.grid(volume_node))
        if prompt.axis != state.axis:
            raise BoxError(f"the object runs along {state.axis}; draw the box in that view")
        return self._action(volume_node, "box", prompt.index, box=prompt.box, log_kind="corrective_box",
                            title="Corrective box")

    def accept_slice(self, volume_node, index: int) -> PendingOperation:
        """"Accept this slice": no later correction writes to it."""
        return self._action(volume_node, "accept", int(index), log_kind="slice_accepted", title="Accept slice")

    def end_here(self, volume_node, index: int) -> PendingOperation:
        """"The object ends here": this slice and those beyond it (away from the key boxes) are cleared."""
        return self._action(volume_node, "cut", int(index), log_kind="object_cut", title="End the object here")

    def note_manual_edit(self, volume_node, slices) -> None:
        """The reader changed these slices with the manual tools: each is sent to the engine as a hand edit
        (locked there), one action at a time as the logic gets free (:meth:`start_queued`)."""
        state = self.state
        if state is None or not state.object_id:
            return
        for index in sorted({int(s) for s in slices}):
            self.queue.append((volume_node.GetID(), index))

    def undo(self, volume_node) -> Optional[PendingOperation]:
        """Undo the last review action: in the segment (the logic's undo) when it wrote there, and on the engine."""
        state = self._need_object()
        if not state.history:
            raise MedSAMError("no review action to undo")
        action, wrote = state.history.pop()
        if wrote:
            self.logic.undo()
        return self._action(volume_node, "undo", None, title="Undo")

    def start_queued(self) -> Optional[PendingOperation]:
        """Start the next queued hand edit when the logic is free (front ends call this from their timer, before
        the logic's ``poll()``); the started operation, else None."""
        while self.queue and not self.logic.busy:
            node_id, index = self.queue.pop(0)
            node = self.logic.scene.GetNodeByID(node_id)
            if node is not None and self.active:
                started = self._start_edit(node, index)
                if started is not None:
                    return started
        return None

    # -- helpers --------------------------------------------------------------------------------------------------
    def segment_now(self, volume_node) -> Optional[np.ndarray]:
        node = self.logic.scene.GetNodeByID(self.logic.current.segmentation_id) \
            if self.logic.current.segmentation_id else None
        segment_id = self.logic.current.segment_id
        if volume_node is None or node is None or not segment_id or not segment_exists(node, segment_id):
            return None
        return read_segment(node, segment_id, volume_node)

    def _edited_since(self, volume_node, slices) -> list:
        """Of ``slices``, those whose voxels in the segment differ from what the review last wrote there."""
        state = self._need_object()
        now = self.segment_now(volume_node)
        if state.known is None or now is None or now.shape != state.known.shape:
            return []
        return [int(s) for s in slices if not np.array_equal(axes.take_slice(now, state.np_axis, int(s)),
                                                              axes.take_slice(state.known, state.np_axis, int(s)))]

    def _need_object(self) -> ReviewState:
        if self.state is None or not self.state.object_id:
            raise BoxError("no object under review: draw a box and propagate first")
        return self.state

    def _action(self, volume_node, action: str, index: Optional[int], box: Optional[Box] = None,
                mask: Optional[np.ndarray] = None, log_kind: str = "", title: str = "") -> PendingOperation:
        state = self._need_object()
        if volume_node is None or volume_node.GetID() != state.volume_node_id:
            raise BoxError("the object under review is on another volume; propagate on this one first")
        grid = self.logic.grid(volume_node)
        request = ObjectAction(self, grid, state.grid_key, state.window, state.axis, action, index, box, mask,
                               log_kind)
        segmentation = self.logic.scene.GetNodeByID(self.logic.current.segmentation_id) \
            if self.logic.current.segmentation_id else None
        return self.logic.start_request(title or action, volume_node, request, segmentation,
                                        self.logic.current.segment_id or None)

    def _start_edit(self, volume_node, index: int) -> Optional[PendingOperation]:
        state = self._need_object()
        node = self.logic.scene.GetNodeByID(self.logic.current.segmentation_id)
        segment_id = self.logic.current.segment_id
        if node is None or not segment_exists(node, segment_id):
            return None
        plane = axes.take_slice(read_segment(node, segment_id, volume_node), state.np_axis, index)
        return self._action(volume_node, "edit", index, mask=np.ascontiguousarray(plane, dtype=bool),
                     log_kind="slice_edited", title="Hand edit")

    def write(self, pending: PendingOperation, request, result: dict, changed: list, title: str,
              log_kind: str, **fields) -> Progress:
        """Write the slices the engine changed into the object's segment (one undo step) and log the action."""
        state, logic = self._need_object(), self.logic
        mask = np.asarray(result["mask"], dtype=bool)
        volume = logic.scene.GetNodeByID(pending.volume_node_id)
        edited = self._edited_since(volume, changed)
        if edited:  # edited by hand since the review last wrote (the engine did not hear of it): kept, and sent
            changed = [s for s in changed if s not in edited]
            self.queue += [(pending.volume_node_id, s) for s in edited]
        seconds = float(result.get("seconds", time.monotonic() - pending.started))
        outcome = Outcome(seconds, int(result.get("encoder_calls", 0)),
                          propagation=PropagationResult(mask, len(changed), dict(result.get("stopped") or {}),
                                                        dict(result.get("scores") or {})))
        details = {"slices": len(changed), "changed": changed, "axis": state.axis, "np_axis": state.np_axis,
                   "decoder_calls": int(result.get("decoder_calls", 0)), "seconds": round(seconds, 3),
                   "encoder_calls": outcome.encoder_calls}
        operation = logic.write_slices(volume, request, mask, changed, state.np_axis,
                                       f"{title} ({len(changed)} slices)", details, *_target(logic, pending))
        state.known = self.segment_now(volume)
        state.history.append((request.action if isinstance(request, ObjectAction) else "start", True))
        if log_kind:
            logic.log_event(log_kind, slices=len(changed), seconds=round(seconds, 3),
                            encoder_calls=outcome.encoder_calls, decoder_calls=details["decoder_calls"], **fields)
        return Progress(ProgressState.DONE, pending.title, len(changed), len(changed), operation.description,
                        operation, outcome)


def view_slice_index(slice_node, volume_node, slice_count: int) -> int:
    """The k slice a slice view shows (the centre of its plane in the volume's voxels): "this slice" of the review
    actions, for the panel, the effect and the browser app alike."""
    from .geometry import ijk_to_world, world_to_ijk_points

    matrix = slice_node.GetSliceToRAS()
    centre = np.array([[matrix.GetElement(row, 3) for row in range(3)]])
    k = int(round(float(world_to_ijk_points(ijk_to_world(volume_node), centre)[0][2])))
    if not 0 <= k < slice_count:
        raise BoxError(f"the view shows no slice of the volume (slice {k}); scroll into it")
    return k


def _target(logic, pending: PendingOperation) -> tuple:
    segmentation = logic.scene.GetNodeByID(pending.segmentation_id) if pending.segmentation_id else None
    return segmentation, pending.segment_id or None


__all__ = ["view_slice_index", "ObjectAction", "ObjectReview", "ObjectStart", "ReviewState"]
