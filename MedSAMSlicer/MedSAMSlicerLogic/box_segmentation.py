"""Box-prompted segmentation on MRML nodes: what the panel's buttons do, without any Qt.

Every operation has three steps, so that the slow middle one can run on a worker thread:

1. ``*_request`` (GUI thread): check the inputs and copy what the engine needs out of MRML (voxels, geometry, boxes);
2. ``run_*`` (any thread): the engine only, no MRML, cancellable, with progress;
3. ``apply_*`` (GUI thread): write the result into one segment, recording an undo step and a time-log event.

Nothing is written before step 3 succeeds, so a cancelled or failed operation leaves every segment as it was.
``segment_slice`` and ``propagate`` chain the three steps for scripts and tests; ``start_*`` runs step 2 in a
:class:`BackgroundTask` for the panel.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import slicer

from MedSAMSlicerLib.engine import axes
from MedSAMSlicerLib.engine.cache import EmbeddingCache
from MedSAMSlicerLib.errors import BoxError, InputImageError
from MedSAMSlicerLib.engine.propagation import AUTO, CancelToken, PropagationOptions, PropagationResult, StopRule, propagate
from MedSAMSlicerLib.engine.session import SliceResult, VolumeSession

from .edit_watch import ManualEdit, ManualEditWatcher
from .roi_prompts import (BOX_ATTRIBUTE, SlicePrompt, place_roi_on_view, prompt_from_roi, prompts_from_rois,
                          propagation_range)
from .segments import add_segment, prepare_segmentation, read_segment, segment_exists, write_segment
from .undo import NothingToUndo, Operation, SegmentSnapshot, UndoStack
from .volume_nodes import VolumeOnGrid, grid_key, volume_from_node
from .worker import BackgroundTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    name: str = "litemedsam"
    device: str = "auto"  # "auto", "cpu", "cuda"
    backend: str = "auto"  # "auto", "pytorch", "onnx"
    checkpoint: str | None = None


@dataclass
class SliceRequest:
    grid: VolumeOnGrid
    grid_key: tuple
    prompt: SlicePrompt
    window: str


@dataclass
class PropagationRequest:
    grid: VolumeOnGrid
    grid_key: tuple
    prompts: list[SlicePrompt]
    window: str
    options: PropagationOptions

    @property
    def axis(self) -> str:
        return self.prompts[0].axis


@dataclass
class Outcome:
    """What the engine produced, with what it cost."""

    seconds: float
    encoder_calls: int
    slice_result: SliceResult | None = None
    propagation: PropagationResult | None = None
    window: str = ""  # the window actually used, for the user


@dataclass
class Target:
    """Where a result goes: a segmentation node and one of its segments."""

    segmentation_node: object
    segment_id: str
    created_segment: bool


@dataclass
class ObjectState:
    """The object being segmented: its key boxes and, once written, its segment."""

    box_ids: list[str] = field(default_factory=list)
    segmentation_id: str = ""
    segment_id: str = ""


class BoxSegmentationLogic:
    def __init__(self, scene=None, cache: EmbeddingCache | None = None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.cache = cache if cache is not None else EmbeddingCache()
        self.undo_stack = UndoStack()
        self.current = ObjectState()
        self.time_log = None  # a CaseTimeLog when the user turned logging on
        self.edit_watcher: ManualEditWatcher | None = None
        self._segmenters: dict[ModelChoice, object] = {}
        self._sessions: dict[tuple, VolumeSession] = {}
        self._grids: dict[tuple, VolumeOnGrid] = {}
        self._lock = threading.Lock()

    # -- model ------------------------------------------------------------------------------------------------------
    def segmenter(self, choice: ModelChoice = ModelChoice()):
        """The loaded model (memoised; any thread).  Slow the first time: weights, checksum, ONNX export."""
        with self._lock:
            if choice not in self._segmenters:
                from MedSAMSlicerLib.engine.backends import make_segmenter

                self._segmenters[choice] = make_segmenter(choice.name, choice.checkpoint, choice.device,
                                                          choice.backend)
            return self._segmenters[choice]

    def use_segmenter(self, segmenter, choice: ModelChoice = ModelChoice()) -> None:
        """Use an already loaded model (tests share one across files)."""
        with self._lock:
            self._segmenters[choice] = segmenter

    @staticmethod
    def describe(segmenter) -> str:
        return f"{segmenter.model.describe()}; encoder runtime: {segmenter.backend_name}"

    # -- inputs (GUI thread) ----------------------------------------------------------------------------------------
    def grid(self, volume_node) -> VolumeOnGrid:
        key = grid_key(volume_node) if volume_node is not None else None
        if key is None or key not in self._grids:
            grid = volume_from_node(volume_node)  # raises the user-facing error for a missing or 2D volume
            self._grids = {key: grid}  # keep one: a copy of a large CT is hundreds of MB
        return self._grids[key]

    def boxes(self) -> list:
        """The current object's ROI nodes that still exist, in the order they were drawn."""
        nodes = [self.scene.GetNodeByID(node_id) for node_id in self.current.box_ids]
        self.current.box_ids = [n.GetID() for n in nodes if n is not None]
        return [n for n in nodes if n is not None]

    def slice_request(self, volume_node, roi_node=None, window: str = "auto") -> SliceRequest:
        """Segment the slice of ``roi_node`` (default: the box drawn last)."""
        grid = self.grid(volume_node)
        if roi_node is None:
            boxes = self.boxes()
            if not boxes:
                raise BoxError("no box: click 'Draw box' and drag the box's handles around the object")
            roi_node = boxes[-1]
        return SliceRequest(grid, grid_key(volume_node), prompt_from_roi(roi_node, grid), window)

    def propagation_request(self, volume_node, roi_nodes=None, window: str = "auto", range_mode: str = "auto",
                            stop: StopRule | str | None = AUTO, largest_component: bool = False,
                            fill_holes: bool = False) -> PropagationRequest:
        grid = self.grid(volume_node)
        prompts = prompts_from_rois(roi_nodes if roi_nodes is not None else self.boxes(), grid)
        options = PropagationOptions(rule="ours", slice_range=propagation_range(prompts, range_mode), stop=stop,
                                     largest_component=largest_component, fill_holes=fill_holes)
        return PropagationRequest(grid, grid_key(volume_node), prompts, window, options)

    # -- engine (any thread) ----------------------------------------------------------------------------------------
    def session(self, grid: VolumeOnGrid, window: str, axis: str, segmenter) -> VolumeSession:
        # id(grid.volume) is stable while the cached session (which holds that volume) lives.
        key = (id(grid.volume), window, axis, id(segmenter))
        with self._lock:
            session = self._sessions.get(key)
        if session is None:
            session = VolumeSession(segmenter, grid.volume, window, axis, self.cache)
            with self._lock:
                self._sessions = {k: v for k, v in self._sessions.items() if k[0] == id(grid.volume)}
                self._sessions[key] = session
        return session

    def run_slice(self, request: SliceRequest, segmenter, progress=None, cancel: CancelToken | None = None) -> Outcome:
        start, calls = time.perf_counter(), segmenter.encoder.calls
        session = self.session(request.grid, request.window, request.prompt.axis, segmenter)
        if progress is not None:
            progress(0, 1)
        result = session.segment_slice(request.prompt.index, request.prompt.box)
        if progress is not None:
            progress(1, 1)
        return Outcome(time.perf_counter() - start, segmenter.encoder.calls - calls, slice_result=result,
                       window=session.window.describe())

    def run_propagation(self, request: PropagationRequest, segmenter, progress=None,
                        cancel: CancelToken | None = None) -> Outcome:
        start, calls = time.perf_counter(), segmenter.encoder.calls
        session = self.session(request.grid, request.window, request.axis, segmenter)
        keys = {p.index: p.box for p in request.prompts}
        result = propagate(session, keys, request.options, progress=progress, cancel=cancel)
        return Outcome(time.perf_counter() - start, segmenter.encoder.calls - calls, propagation=result,
                       window=session.window.describe())

    # -- results (GUI thread) ---------------------------------------------------------------------------------------
    def target(self, volume_node, grid: VolumeOnGrid, segmentation_node=None, segment_id: str | None = None) -> Target:
        """Where the current object is written: the segment picked by the user, else the object's own segment,
        else a new segment (in a new segmentation when none is picked)."""
        if segmentation_node is None and self.current.segmentation_id:
            segmentation_node = self.scene.GetNodeByID(self.current.segmentation_id)
        if segmentation_node is None:
            segmentation_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                            f"{volume_node.GetName()} MedSAM")
        prepare_segmentation(segmentation_node, volume_node, grid)
        if not segment_id and self.current.segmentation_id == segmentation_node.GetID():
            segment_id = self.current.segment_id
        if segment_id and segment_exists(segmentation_node, segment_id):
            created = False
        elif segment_id:
            raise InputImageError(f"segment {segment_id} is not in {segmentation_node.GetName()}; pick another")
        else:
            segment_id, created = add_segment(segmentation_node), True
        self.current.segmentation_id, self.current.segment_id = segmentation_node.GetID(), segment_id
        return Target(segmentation_node, segment_id, created)

    def _check_unchanged(self, volume_node, request) -> None:
        if volume_node is None or self.scene.GetNodeByID(volume_node.GetID()) is None:
            raise InputImageError("the volume was closed while segmenting; nothing was written")
        if grid_key(volume_node) != request.grid_key:
            raise InputImageError(f"{volume_node.GetName()} changed while segmenting; nothing was written, run again")

    def _write(self, target: Target, mask: np.ndarray, volume_node, description: str, details: dict) -> Operation:
        snapshot = SegmentSnapshot.take(target.segmentation_node, target.segment_id, target.created_segment)
        watcher = self._watch(target, volume_node, details.get("np_axis", 0))
        try:
            if watcher is not None:
                with watcher.suspended():
                    write_segment(target.segmentation_node, target.segment_id, mask, volume_node)
            else:
                write_segment(target.segmentation_node, target.segment_id, mask, volume_node)
        except Exception:
            snapshot.restore(self.scene)  # a failed write leaves the segment as it was
            raise
        operation = Operation(description, snapshot, details)
        self.undo_stack.push(operation)
        return operation

    def apply_slice(self, volume_node, request: SliceRequest, outcome: Outcome, segmentation_node=None,
                    segment_id: str | None = None) -> Operation:
        """Replace the prompted slice of the target segment with the result; other slices keep their voxels."""
        self._check_unchanged(volume_node, request)
        target = self.target(volume_node, request.grid, segmentation_node, segment_id)
        result = outcome.slice_result
        np_axis = request.prompt.np_axis
        if target.created_segment:
            mask = np.zeros(request.grid.shape_kji, dtype=bool)
        else:
            mask = read_segment(target.segmentation_node, target.segment_id, volume_node)
        axes.put_slice(mask, np_axis, result.index, result.mask)
        details = {"slice": result.index, "axis": request.prompt.axis, "np_axis": np_axis, "box": str(result.box),
                   "score": round(result.score, 3), "seconds": round(outcome.seconds, 3),
                   "encoder_calls": outcome.encoder_calls}
        operation = self._write(target, mask, volume_node, f"Segment slice {result.index}", details)
        self._log("segment_slice", slice=result.index, box=str(result.box), seconds=round(outcome.seconds, 3),
                  encoder_calls=outcome.encoder_calls)
        return operation

    def apply_propagation(self, volume_node, request: PropagationRequest, outcome: Outcome, segmentation_node=None,
                          segment_id: str | None = None) -> Operation:
        """The target segment becomes the propagated mask (Undo brings back what it was)."""
        self._check_unchanged(volume_node, request)
        target = self.target(volume_node, request.grid, segmentation_node, segment_id)
        result = outcome.propagation
        low, high = request.options.slice_range or (0, request.grid.shape_kji[request.prompts[0].np_axis] - 1)
        details = {"slices": result.segmented_slices, "range": f"{low}:{high}", "axis": request.axis,
                   "np_axis": request.prompts[0].np_axis, "keys": sorted(p.index for p in request.prompts),
                   "stopped": dict(result.stopped), "seconds": round(outcome.seconds, 3),
                   "encoder_calls": outcome.encoder_calls}
        operation = self._write(target, result.mask, volume_node,
                                f"Propagate 3D ({result.segmented_slices} slices)", details)
        self._log("propagate", slices=result.segmented_slices, seconds=round(outcome.seconds, 3),
                  encoder_calls=outcome.encoder_calls, range=f"{low}:{high}")
        return operation

    def undo(self) -> Operation:
        """Undo the last whole operation (a slice or a propagation)."""
        operation = self.undo_stack.undo(self.scene)
        snapshot = operation.snapshot
        if snapshot.copy is None and snapshot.segment_id == self.current.segment_id:
            self.current.segment_id = ""  # the object's segment was created by that operation and is gone
        if self.edit_watcher is not None and self.edit_watcher.segment_id == snapshot.segment_id:
            self.edit_watcher.baseline = self.edit_watcher._read()  # noqa: SLF001 - undo is not a manual edit
        self._log("undo", operation=operation.description)
        return operation

    # -- boxes --------------------------------------------------------------------------------------------------------
    def draw_box(self, volume_node, slice_node, new_object: bool = True) -> tuple[object, SlicePrompt, str]:
        """A flat ROI on the slice ``slice_node`` shows.  ``new_object``: replace the current boxes (first box of a
        new object); else add a key box on another slice of the same object."""
        grid = self.grid(volume_node)
        if new_object:
            self.remove_boxes()
        roi, prompt, note = place_roi_on_view(self.scene, slice_node, volume_node, grid)
        others = [prompt_from_roi(box, grid) for box in self.boxes()]
        clash = [p for p in others if p.axis == prompt.axis and p.index == prompt.index]
        if clash:
            self.scene.RemoveNode(roi)
            raise BoxError(f"box {clash[0].roi_name} is already on slice {prompt.index}; scroll to another slice to "
                           "add a key box, or move that box")
        self.current.box_ids.append(roi.GetID())
        kind = "box_drawn" if len(self.current.box_ids) == 1 else "key_box_added"
        self._log(kind, slice=prompt.index, box=str(prompt.box))
        return roi, prompt, note

    def note_box_moved(self, roi_node, volume_node) -> None:
        """The user dragged a box's handles (the panel calls this, throttled, from the ROI's modified event)."""
        try:
            prompt = prompt_from_roi(roi_node, self.grid(volume_node))
        except Exception:  # a box dragged off the volume is still a move; the next run reports the problem
            self._log("box_moved")
            return
        self._log("box_moved", slice=prompt.index, box=str(prompt.box))

    def remove_boxes(self) -> None:
        for box in self.boxes():
            if box.GetAttribute(BOX_ATTRIBUTE) == "1":
                self.scene.RemoveNode(box)
        self.current.box_ids = []

    def accept(self, volume_node=None) -> str:
        """The current object is done: its boxes go, the next box starts a new segment.  Returns the segment ID."""
        segment_id = self.current.segment_id
        fields = {}
        segmentation = self.scene.GetNodeByID(self.current.segmentation_id) if self.current.segmentation_id else None
        if segmentation is not None and segment_id and volume_node is not None and \
                segment_exists(segmentation, segment_id):
            mask = read_segment(segmentation, segment_id, volume_node)
            fields["voxels"] = int(mask.sum())
            if self.time_log is not None:
                fields["mask"] = self.time_log.session.save_mask(mask, f"segment-{_safe(segment_id)}")
        self._log("accept", **fields)
        self.remove_boxes()
        self.stop_watching()
        self.current = ObjectState(segmentation_id=self.current.segmentation_id)
        self.undo_stack.clear()  # accepted work is final; Segment Editor's own undo still has it
        return segment_id

    # -- manual edits and the time log ------------------------------------------------------------------------------
    def _watch(self, target: Target, volume_node, np_axis: int) -> ManualEditWatcher | None:
        if self.time_log is None:
            return None
        watcher = self.edit_watcher
        if watcher is None or watcher.segment_id != target.segment_id or \
                watcher.segmentation_node is not target.segmentation_node:
            self.stop_watching()
            watcher = self.edit_watcher = ManualEditWatcher(target.segmentation_node, target.segment_id,
                                                            volume_node, np_axis)
        return watcher

    def collect_manual_edits(self) -> ManualEdit | None:
        """Report edits made with other tools since the last call (the panel calls this on a timer)."""
        if self.edit_watcher is None:
            return None
        edit = self.edit_watcher.collect()
        if edit is not None:
            self._log("manual_edit", slices=edit.slices, voxels=edit.voxels)
        return edit

    def stop_watching(self) -> None:
        if self.edit_watcher is not None:
            self.edit_watcher.stop()
            self.edit_watcher = None

    def open_case(self, volume_node, folder: str, reader: str = "anonymous", mode: str = "assisted"):
        """Start the time log of this volume (a case); closes the previous one."""
        from .timelog_table import CaseTimeLog

        self.close_case()
        grid = self.grid(volume_node)
        self.time_log = CaseTimeLog(self.scene, folder, volume_node.GetName(), reader, mode)
        self._log("case_opened", slices=int(grid.shape_kji[0]), axis="k")
        return self.time_log

    def close_case(self) -> None:
        self.stop_watching()
        if self.time_log is not None:
            self.time_log.close()
            self.time_log = None

    def _log(self, kind: str, **fields) -> None:
        if self.time_log is None:
            return
        try:
            self.time_log.event(kind, **fields)
        except Exception as error:  # a full disk must not stop the segmentation; the panel shows the warning
            log.warning("time log event %s not written: %s", kind, error)

    # -- conveniences: the three steps in the calling thread, or step 2 on a worker ---------------------------------
    def segment_slice(self, volume_node, roi_node=None, segmentation_node=None, segment_id=None, window="auto",
                      choice: ModelChoice = ModelChoice()) -> tuple[Operation, Outcome]:
        request = self.slice_request(volume_node, roi_node, window)
        outcome = self.run_slice(request, self.segmenter(choice))
        return self.apply_slice(volume_node, request, outcome, segmentation_node, segment_id), outcome

    def propagate(self, volume_node, roi_nodes=None, segmentation_node=None, segment_id=None, window="auto",
                  range_mode="auto", choice: ModelChoice = ModelChoice(), progress=None,
                  cancel: CancelToken | None = None, **options) -> tuple[Operation, Outcome]:
        request = self.propagation_request(volume_node, roi_nodes, window, range_mode, **options)
        outcome = self.run_propagation(request, self.segmenter(choice), progress, cancel)
        return self.apply_propagation(volume_node, request, outcome, segmentation_node, segment_id), outcome

    def start(self, title: str, request, choice: ModelChoice = ModelChoice()) -> BackgroundTask:
        """Step 2 of ``request`` (a SliceRequest or PropagationRequest) on a worker thread; loads the model there."""
        run = self.run_slice if isinstance(request, SliceRequest) else self.run_propagation

        def work(progress, cancel):
            return run(request, self.segmenter(choice), progress, cancel)

        return BackgroundTask(title, work)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in text)[:60] or "segment"


__all__ = ["BoxSegmentationLogic", "ModelChoice", "NothingToUndo", "Outcome", "PropagationRequest", "SliceRequest"]
