"""Box-prompted segmentation on MRML nodes, with the model in the engine service: what the buttons do, without Qt.

The model never runs in Slicer's process (PythonQt holds the GIL while Slicer idles, and torch must not share
Slicer's Python): the logic sends the volume to the engine service (``MedSAMSlicerLib.client``) and writes what
comes back.  Every operation has three steps:

1. ``start_segment_slice`` / ``start_propagation`` (caller's thread, fast): check the inputs, copy what the engine
   needs out of MRML (voxels, geometry, boxes) and fix the target segment *now*, when the user clicks;
2. ``poll()`` (called by the front end from its own timer, every 100 ms or so) advances the operation by as many
   short steps as fit in ``POLL_TIMEOUT`` (50 ms) and returns a :class:`.engine_jobs.Progress`: the stepping (engine
   health, sending the volume, the job, its result, retries) is :mod:`.engine_jobs`'s, the engine's sessions for the
   volume are :mod:`.remote_volumes`'s;
3. when the engine has the result, the same ``poll()`` writes it into the target segment (:meth:`_finish`, here),
   recording one undo step and a time-log event.

What may keep the GUI longer than 50 ms, and why:

- the click itself (step 1): copying the voxels out of MRML the first time a volume is used (a 512x512x60 int16
  volume is 30 MB: tens of ms), kept for the next operations;
- a remote engine only: the one request that uploads the (compressed) volume, once per volume content -- its
  duration is the network's (seconds for a CT on a slow link); the progress says "sending the volume" first.  A
  local engine gets the volume as a file in its private folder, written over several polls;
- fetching a finished propagation's mask: the engine packed it when the job ended (bounding box, one bit per voxel:
  a few MB at most), so the answer starts at once; like every request its timeout is the poll's budget (a read
  timeout: the whole body may take longer while it keeps coming), and a timed-out fetch is retried;
- writing the result into the segment (step 3): Slicer's own segmentation update, proportional to the volume.

Nothing is written before step 3 succeeds, so a cancelled or failed operation, a killed server or a closed scene
leaves every segment as it was.  ``segment_slice`` and ``propagate`` chain the steps (polling in a loop) for scripts,
tests and the self-test.  The logic holds no thread and no Qt object, so any front end (the Slicer panel, the
Segment Editor effect, the browser app) drives it the same way.

Prefetch: when a box is drawn or moved (``draw_box``, ``note_box_moved``, or a front end calling ``box_changed``)
the logic asks the engine to encode that slice and its neighbours in the background (lowest priority on the engine),
so "Segment slice" and "Propagate" find them cached.  When the volume is not on the engine yet, ``poll()`` sends it
first while no operation is pending: front ends keep polling while ``preparing`` is true.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import slicer

from MedSAMSlicerLib.errors import BoxError, InputImageError, MedSAMError, first_line
from MedSAMSlicerLib.protocol import PropagationSettings, axes

from .edit_watch import ManualEdit, ManualEditWatcher
from .editor_writes import labelmap_mtime
from .engine_jobs import (POLL_TIMEOUT, EngineJobs, Outcome, PendingOperation, Progress, ProgressState,
                          PropagationInput, SliceInput)
from .remote_volumes import RemoteVolumes
from .roi_prompts import (BOX_ATTRIBUTE, SlicePrompt, place_roi_on_view, prompt_from_roi, prompts_from_rois,
                          propagation_range)
from .segments import (add_segment, check_segmentation_grid, prepare_segmentation, read_segment, segment_exists,
                       write_segment, write_segment_slice)
from .undo import EditedSince, NothingToUndo, Operation, SegmentSnapshot, UndoStack
from .volume_nodes import VolumeOnGrid, grid_key, volume_from_node

log = logging.getLogger(__name__)

PREFETCH_NEIGHBOURS = 3  # slices on each side of a drawn box that the engine encodes ahead

# A writer puts a (k, j, i) bool mask into a target segment: the default is segments.write_segment; the Segment
# Editor effect passes an editor_writes.SegmentEditorWriter (editable area, masking, overwrite).  A writer whose
# ``records_history`` is true keeps its own undo history (Segment Editor's): no MedSAM undo step is pushed for it,
# because a snapshot of the target segment cannot restore what an overwrite took from other segments (audit W1).
Writer = Callable[["Target", np.ndarray, Any], None]


@dataclass
class Target:
    """Where a result goes: a segmentation node and one of its segments."""

    segmentation_node: object
    segment_id: str
    created_segment: bool


@dataclass
class ObjectState:
    """The object being segmented: its key boxes and, once written, its segment."""

    box_ids: list = field(default_factory=list)
    segmentation_id: str = ""
    segment_id: str = ""


# Operation.written_digest while a slice write's digest is not taken yet (settle), or could not be taken.
DIGEST_PENDING, DIGEST_UNKNOWN = "pending", "unknown: the segment changed before its digest was taken"


class BoxSegmentationLogic:
    """The MRML side of MedSAMSlicer: boxes, requests to the engine, writes, undo, the time log.

    ``engine``: anything with the :class:`MedSAMSlicerLib.client.EngineClient` interface (``health``, ``info``,
    ``open_volume``), usually an :class:`.engine_link.EngineLink`'s client; ``set_engine`` changes it later.
    """

    # True: "Segment slice" writes its slice alone and the undo check's digest is taken later (``settle``); the
    # browser app turns it on and settles after each result's frame.  False: the whole segment, digested at once.
    slice_writes = False

    def __init__(self, scene=None, engine=None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.undo_stack = UndoStack()
        self.current = ObjectState()
        self.time_log = None  # a CaseTimeLog when the user turned logging on
        self.edit_watcher: Optional[ManualEditWatcher] = None
        self.prefetch_window = "auto"  # the window boxes are prefetched for: the last one used, or the front end's
        self.prefetch_neighbours = PREFETCH_NEIGHBOURS
        self.idle: Optional[Callable[[], None]] = None  # called between the polls of the blocking ``wait``
        self._grids: dict = {}
        self.volumes = RemoteVolumes(engine)  # the engine's sessions for the volume in use
        self.jobs = EngineJobs(self.volumes, self._finish)  # the pending operation and the prefetch, stepped
        # Scene close (File > Close Scene, or a test's Clear): node IDs are reused by the next scene, so the undo
        # stack, the current object and a pending job must go, whichever front end is open.
        self._close_observer = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_close)

    def _on_scene_close(self, caller=None, event=None) -> None:
        self.reset()

    def detach(self) -> None:
        """Stop observing the scene (a logic that is thrown away)."""
        if self._close_observer is not None:
            self.scene.RemoveObserver(self._close_observer)
            self._close_observer = None

    # -- engine ---------------------------------------------------------------------------------------------------
    @property
    def engine(self):
        return self.volumes.engine

    @engine.setter
    def engine(self, engine) -> None:
        self.volumes.engine = engine

    @property
    def pending(self) -> Optional[PendingOperation]:
        return self.jobs.pending

    def set_engine(self, engine) -> None:
        """Use another engine (the user switched between local and remote): volumes are sent again."""
        self.cancel()
        self.volumes.set_engine(engine)
        self.jobs.prefetch_wish = None

    def remote_volume(self, grid: VolumeOnGrid, key: tuple, window: str, axis: str):
        """The engine's session for this volume, window and slice axis (the voxels are sent once per content)."""
        return self.volumes.open(grid, key, window, axis)

    # -- inputs (at click time) -------------------------------------------------------------------------------------
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

    def slice_request(self, volume_node, roi_node=None, window: str = "auto") -> SliceInput:
        """Segment the slice of ``roi_node`` (default: the box drawn last)."""
        grid = self.grid(volume_node)
        if roi_node is None:
            boxes = self.boxes()
            if not boxes:
                raise BoxError("no box: click 'Draw box' and drag the box's handles around the object")
            roi_node = boxes[-1]
        return SliceInput(grid, grid_key(volume_node), prompt_from_roi(roi_node, grid), window)

    def propagation_request(self, volume_node, roi_nodes=None, window: str = "auto", range_mode: str = "auto",
                            stop: bool = True, largest_component: bool = False,
                            fill_holes: bool = False) -> PropagationInput:
        grid = self.grid(volume_node)
        prompts = prompts_from_rois(roi_nodes if roi_nodes is not None else self.boxes(), grid)
        slice_range = propagation_range(prompts, range_mode)
        settings = PropagationSettings("ours", slice_range, bool(stop), bool(largest_component), bool(fill_holes))
        return PropagationInput(grid, grid_key(volume_node), prompts, window, settings)

    def _fix_target(self, segmentation_node, segment_id) -> tuple:
        """The target as the user sees it when clicking: the picked segment, else the object's own segment."""
        segmentation_id = segmentation_node.GetID() if segmentation_node is not None else self.current.segmentation_id
        if not segment_id and segmentation_id and segmentation_id == self.current.segmentation_id:
            segment_id = self.current.segment_id
        if segment_id and segmentation_id:
            node = self.scene.GetNodeByID(segmentation_id)
            if node is None or not segment_exists(node, segment_id):
                raise InputImageError(f"segment {segment_id} is not in the segmentation; pick another")
        return segmentation_id or "", segment_id or ""

    # -- operations (front ends: start, then poll from a timer) -----------------------------------------------------
    def start_segment_slice(self, volume_node, roi_node=None, segmentation_node=None, segment_id=None,
                            window: str = "auto", writer: Optional[Writer] = None) -> PendingOperation:
        return self._start("Segment slice", volume_node, self.slice_request(volume_node, roi_node, window),
                           segmentation_node, segment_id, writer)

    def start_propagation(self, volume_node, roi_nodes=None, segmentation_node=None, segment_id=None,
                          window: str = "auto", range_mode: str = "auto", writer: Optional[Writer] = None,
                          **options) -> PendingOperation:
        request = self.propagation_request(volume_node, roi_nodes, window, range_mode, **options)
        return self._start("Propagate 3D", volume_node, request, segmentation_node, segment_id, writer)

    def _start(self, title, volume_node, request, segmentation_node, segment_id, writer) -> PendingOperation:
        if self.pending is not None:
            raise MedSAMError(f"{self.pending.title} is still running; wait for it or cancel it first")
        self.volumes.require_engine()
        if segmentation_node is not None:
            check_segmentation_grid(segmentation_node, request.grid)  # say it now, before the engine works
        segmentation_id, segment_id = self._fix_target(segmentation_node, segment_id)
        pending = self.jobs.start(PendingOperation(title, volume_node.GetID(), request, segmentation_id, segment_id,
                                                   writer))
        self.prefetch_window = request.window  # the next boxes are prefetched for the window the user works with
        return pending

    def start_request(self, title, volume_node, request, segmentation_node=None, segment_id=None) -> PendingOperation:
        """Start an operation whose request starts and finishes its own engine job (``engine_jobs.OwnJob``: the
        review actions of :mod:`.object_review`); polled like the others."""
        return self._start(title, volume_node, request, segmentation_node, segment_id, None)

    def write_slices(self, volume_node, request, mask: np.ndarray, slices, np_axis: int, description: str,
                     details: dict, segmentation_node=None, segment_id: Optional[str] = None) -> Operation:
        """Only ``slices`` of the target segment take ``mask``'s voxels (one undo step); the others keep theirs."""
        self._check_unchanged(volume_node, request)
        target = self.target(volume_node, request.grid, segmentation_node, segment_id)
        current = np.zeros(request.grid.shape_kji, dtype=bool) if target.created_segment else \
            read_segment(target.segmentation_node, target.segment_id, volume_node)
        for index in slices:
            axes.put_slice(current, np_axis, int(index), axes.take_slice(mask, np_axis, int(index)))
        return self._write(target, current, volume_node, description, details)

    def log_event(self, kind: str, **fields) -> None:
        """A time-log event (when the log is on); a failed write is a warning, never a stop."""
        self._log(kind, **fields)

    @property
    def busy(self) -> bool:
        return self.pending is not None

    @property
    def preparing(self) -> bool:
        """A prefetch is on its way (the volume is being sent first): keep calling ``poll()`` while this is true."""
        return self.jobs.prefetch_wish is not None

    def poll(self) -> Progress:
        """Advance the pending operation by short steps (``POLL_TIMEOUT`` in all); call it from the front end's
        timer.  With no operation pending it advances a prefetch (``preparing``) and says "idle"."""
        return self.jobs.poll()

    def _finish(self, pending: PendingOperation, outcome: Outcome) -> Operation:
        """The engine's result is in: write it (called by ``self.jobs`` inside a poll)."""
        volume_node = self._volume_of(pending)
        if isinstance(pending.request, SliceInput):
            return self.apply_slice(volume_node, pending.request, outcome, *self._target_of(pending),
                                    writer=pending.writer)
        return self.apply_propagation(volume_node, pending.request, outcome, *self._target_of(pending),
                                      writer=pending.writer)

    def _volume_of(self, pending: PendingOperation):
        node = self.scene.GetNodeByID(pending.volume_node_id)
        if node is None:
            raise InputImageError("the volume was closed while segmenting; nothing was written")
        return node

    def _target_of(self, pending: PendingOperation) -> tuple:
        segmentation = self.scene.GetNodeByID(pending.segmentation_id) if pending.segmentation_id else None
        if pending.segmentation_id and segmentation is None:
            raise InputImageError("the target segmentation was deleted while segmenting; nothing was written")
        return segmentation, pending.segment_id or None

    def cancel(self) -> None:
        """Stop the pending operation: the next ``poll`` reports "cancelled" (nothing is written) and the engine is
        told to stop (between two slices; one short request, retried once by that poll)."""
        self.jobs.cancel()

    def reset(self) -> None:
        """The scene is closing (node IDs will be reused by the next scene): forget everything tied to it."""
        self.jobs.reset()
        self.close_case()
        self.undo_stack.clear()
        self.current = ObjectState()
        self._grids = {}
        self.volumes.clear()

    # -- prefetch -------------------------------------------------------------------------------------------------
    def box_changed(self, volume_node, roi_node, window: Optional[str] = None) -> list:
        """A box was drawn or moved: ask the engine to encode its slice and ``prefetch_neighbours`` slices on each
        side now, in the background, so that "Segment slice" and "Propagate" find them cached.  ``window``: the one
        the user will segment with (default ``prefetch_window``, the last one used).

        Never blocks and never raises: at most one short request here (a failure is logged); when the volume is not
        on the engine yet, ``poll()`` sends it first while no operation is pending (``preparing``).  Returns the
        slices asked for (nearest first), [] when there is no engine or the box is not on the volume."""
        if self.engine is None or volume_node is None or roi_node is None:
            return []
        try:
            grid = self.grid(volume_node)
            prompt = prompt_from_roi(roi_node, grid)
            key = (grid_key(volume_node), window or self.prefetch_window, prompt.axis)
        except MedSAMError as error:  # a box off the volume: the next run reports it, not the prefetch
            log.info("no prefetch for this box: %s", first_line(error))
            return []
        except Exception:  # an unexpected failure must not break the drag either; its traceback goes to the log
            log.warning("no prefetch for this box", exc_info=True)
            return []
        count = int(grid.shape_kji[prompt.np_axis])
        indices = [int(prompt.index)]
        for step in range(1, max(0, int(self.prefetch_neighbours)) + 1):
            indices += [i for i in (prompt.index + step, prompt.index - step) if 0 <= i < count]
        self.jobs.wish_prefetch(key, grid, indices)  # the latest box wins
        return indices

    def wait(self, pending: Optional[PendingOperation] = None, interval: float = 0.05,
             timeout: float = 3600.0) -> Progress:
        """Poll until the pending operation finishes (scripts and tests; front ends poll from a timer)."""
        deadline = time.monotonic() + timeout
        while True:
            progress = self.poll()
            if progress.finished or progress.state == ProgressState.IDLE:
                return progress
            if time.monotonic() > deadline:
                self.cancel()
                raise MedSAMError("timed out waiting for the engine")
            if self.idle is not None:
                self.idle()  # Slicer's self-test: slicer.app.processEvents, so the GUI stays alive (R14)
            time.sleep(interval)

    # -- results ------------------------------------------------------------------------------------------------------
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

    def _write(self, target: Target, mask: Optional[np.ndarray], volume_node, description: str, details: dict,
               writer: Optional[Writer] = None) -> Operation:
        """``mask`` None: ``writer`` writes a part of the segment (a slice); the undo check's digest of the whole
        segment is taken later (``settle``)."""
        self.settle()  # the previous step's digest, while its segment is still as it wrote it
        snapshot = SegmentSnapshot.take(target.segmentation_node, target.segment_id, target.created_segment)
        watcher = self._watch(target, volume_node, details.get("np_axis", 0))
        write = writer or (lambda t, m, v: write_segment(t.segmentation_node, t.segment_id, m, v))
        try:
            if watcher is not None:
                with watcher.suspended():
                    write(target, mask, volume_node)
            else:
                write(target, mask, volume_node)
        except Exception:
            snapshot.restore(self.scene)  # a failed write leaves the segment as it was
            raise
        operation = Operation(description, snapshot, details)
        if getattr(writer, "records_history", False):
            operation.details["undo"] = "segment_editor"
            return operation  # Segment Editor's history has it; MedSAM's Undo must not half-undo it
        operation.details["volume_node_id"] = volume_node.GetID()
        operation.written_mtime = labelmap_mtime(target.segmentation_node, target.segment_id)
        operation.written_digest = _mask_digest(mask) if mask is not None else DIGEST_PENDING
        self.undo_stack.push(operation)
        return operation

    def settle(self) -> None:
        """Take what a slice write left for later: the digest of the segment as written, which Undo compares with
        when the labelmap's MTime moved.  Taken only while the MTime still equals the written one; otherwise the
        segment changed before it could be taken, and Undo refuses (the safe side).  One whole read of the
        segment: the browser app calls this after the result's frame went out, not before it (issue 21)."""
        operation = self.undo_stack.last
        if operation is None or operation.written_digest != DIGEST_PENDING:
            return
        node = self.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
        volume = self.scene.GetNodeByID(operation.details.get("volume_node_id", ""))
        segment_id = operation.snapshot.segment_id
        if node is None or volume is None or not segment_exists(node, segment_id) or \
                labelmap_mtime(node, segment_id) != operation.written_mtime:
            operation.written_digest = DIGEST_UNKNOWN
            return
        operation.written_digest = _mask_digest(read_segment(node, segment_id, volume))

    def _check_not_edited_since(self, operation: Operation) -> None:
        """Refuse an Undo that would throw away an edit made after ``operation`` (paint, erase, Segment Editor's own
        undo): first the labelmap's MTime (free), then, when it moved, the voxels themselves."""
        if operation is self.undo_stack.last:
            self.settle()
        snapshot = operation.snapshot
        node = self.scene.GetNodeByID(snapshot.segmentation_node_id)
        if node is None or not segment_exists(node, snapshot.segment_id) or not operation.written_digest:
            if node is not None and operation.written_digest:
                raise EditedSince(f"the segment of '{operation.description}' was deleted after it; nothing was "
                                  "undone (use Segment Editor's Undo)")
            return
        if labelmap_mtime(node, snapshot.segment_id) == operation.written_mtime:
            return
        volume = self.scene.GetNodeByID(operation.details.get("volume_node_id", ""))
        if volume is not None and _mask_digest(read_segment(node, snapshot.segment_id, volume)) == \
                operation.written_digest:
            return
        raise EditedSince(f"the segment was edited after '{operation.description}'; MedSAM's Undo would discard that "
                          "edit, so nothing was undone; use Segment Editor's Undo (Ctrl+Z) instead")

    def apply_slice(self, volume_node, request: SliceInput, outcome: Outcome, segmentation_node=None,
                    segment_id: Optional[str] = None, writer: Optional[Writer] = None) -> Operation:
        """Replace the prompted slice of the target segment with the result; other slices keep their voxels."""
        self._check_unchanged(volume_node, request)
        target = self.target(volume_node, request.grid, segmentation_node, segment_id)
        result = outcome.slice_result
        np_axis = request.prompt.np_axis
        details = {"slice": result.index, "axis": request.prompt.axis, "np_axis": np_axis, "box": str(result.box),
                   "score": round(result.score, 3), "seconds": round(outcome.seconds, 3),
                   "encoder_calls": outcome.encoder_calls}
        if self.slice_writes and writer is None:  # the slice alone; the undo digest later (settle)
            def write_slice(t, _mask, v) -> None:
                write_segment_slice(t.segmentation_node, t.segment_id, np_axis, result.index, result.mask, v)

            operation = self._write(target, None, volume_node, f"Segment slice {result.index}", details,
                                    write_slice)
        else:
            if target.created_segment:
                mask = np.zeros(request.grid.shape_kji, dtype=bool)
            else:
                mask = read_segment(target.segmentation_node, target.segment_id, volume_node)
            axes.put_slice(mask, np_axis, result.index, result.mask)
            operation = self._write(target, mask, volume_node, f"Segment slice {result.index}", details, writer)
        self._log("segment_slice", slice=result.index, box=str(result.box), seconds=round(outcome.seconds, 3),
                  encoder_calls=outcome.encoder_calls)
        return operation

    def apply_propagation(self, volume_node, request: PropagationInput, outcome: Outcome, segmentation_node=None,
                          segment_id: Optional[str] = None, writer: Optional[Writer] = None) -> Operation:
        """The target segment becomes the propagated mask (Undo brings back what it was)."""
        self._check_unchanged(volume_node, request)
        target = self.target(volume_node, request.grid, segmentation_node, segment_id)
        result = outcome.propagation
        if tuple(result.mask.shape) != tuple(request.grid.shape_kji):
            raise MedSAMError(f"the engine returned a mask of shape {result.mask.shape} for a volume of "
                              f"{request.grid.shape_kji}; nothing was written")
        low, high = request.slice_range or (0, request.grid.shape_kji[request.prompts[0].np_axis] - 1)
        details = {"slices": result.segmented_slices, "range": f"{low}:{high}", "axis": request.axis,
                   "np_axis": request.prompts[0].np_axis, "keys": sorted(p.index for p in request.prompts),
                   "stopped": dict(result.stopped), "seconds": round(outcome.seconds, 3),
                   "encoder_calls": outcome.encoder_calls}
        operation = self._write(target, result.mask, volume_node,
                                f"Propagate 3D ({result.segmented_slices} slices)", details, writer)
        self._log("propagate", slices=result.segmented_slices, seconds=round(outcome.seconds, 3),
                  encoder_calls=outcome.encoder_calls, range=f"{low}:{high}")
        return operation

    def undo(self) -> Operation:
        """Undo the last whole operation (a slice or a propagation)."""
        if self.pending is not None:
            raise MedSAMError(f"{self.pending.title} is running; cancel it before undoing")
        operation = self.undo_stack.undo(self.scene, check=self._check_not_edited_since)
        snapshot = operation.snapshot
        if snapshot.copy is None and snapshot.segment_id == self.current.segment_id:
            self.current.segment_id = ""  # the object's segment was created by that operation and is gone
        if self.edit_watcher is not None and self.edit_watcher.segment_id == snapshot.segment_id:
            self.edit_watcher.rebase()  # undo is not a manual edit
        self._log("undo", operation=operation.description)
        return operation

    # -- fill between slices (Segment Editor's tool, without Qt) -------------------------------------------------
    def fill_between_slices(self, volume_node, segmentation_node=None, segment_id: Optional[str] = None,
                            np_axis: Optional[int] = None, writer: Optional[Writer] = None) -> Operation:
        """Fill the empty slices between the slices drawn in a segment (the picked one, else the current object's),
        by morphological contour interpolation (:mod:`.fill_between`); one undo step, like a MedSAM write, and a
        ``manual_edit`` event with ``tool=fill_between_slices`` in the time log (the reader's tool, not the model)."""
        from .fill_between import NothingToFill, drawn_slices, fill_between_slices, gap_axis

        if self.pending is not None:
            raise MedSAMError(f"{self.pending.title} is running; wait for it or cancel it first")
        grid = self.grid(volume_node)
        if segmentation_node is None and self.current.segmentation_id:
            segmentation_node = self.scene.GetNodeByID(self.current.segmentation_id)
        if not segment_id and segmentation_node is not None and \
                segmentation_node.GetID() == self.current.segmentation_id:
            segment_id = self.current.segment_id
        if segmentation_node is None or not segment_id or not segment_exists(segmentation_node, segment_id):
            raise InputImageError("pick the segment to fill first (draw it on two or more slices)")
        check_segmentation_grid(segmentation_node, grid)
        self.collect_manual_edits()  # strokes drawn before the fill are logged as the reader's own edits first
        drawn = read_segment(segmentation_node, segment_id, volume_node)
        axis = gap_axis(drawn) if np_axis is None else int(np_axis)
        if axis is None:
            raise NothingToFill("draw the object on at least two slices with empty slices between them; nothing to "
                                "fill")
        filled = fill_between_slices(drawn, axis)
        added = filled & ~drawn
        slices = drawn_slices(added, axis)
        details = {"slices": slices, "voxels": int(added.sum()), "np_axis": axis, "tool": "fill_between_slices"}
        target = Target(segmentation_node, segment_id, False)
        operation = self._write(target, filled, volume_node, f"Fill between slices ({len(slices)} slices)", details,
                                writer)
        self.current.segmentation_id, self.current.segment_id = segmentation_node.GetID(), segment_id
        self._log("manual_edit", slices=slices, voxels=int(added.sum()), tool="fill_between_slices")
        return operation

    # -- boxes --------------------------------------------------------------------------------------------------------
    def draw_box(self, volume_node, slice_node, new_object: bool = True,
                 corners_world=None) -> tuple[object, SlicePrompt, str]:
        """A flat ROI on the slice ``slice_node`` shows.  ``new_object``: replace the current boxes (first box of a
        new object); else add a key box on another slice of the same object.  ``corners_world``: two opposite
        corners of a box dragged in the view (else the box is centred in the view, for the user to resize)."""
        grid = self.grid(volume_node)
        if new_object:
            self.remove_boxes()
        roi, prompt, note = place_roi_on_view(self.scene, slice_node, volume_node, grid, corners_world=corners_world)
        others = [prompt_from_roi(box, grid) for box in self.boxes()]
        clash = [p for p in others if p.axis == prompt.axis and p.index == prompt.index]
        if clash:
            self.scene.RemoveNode(roi)
            raise BoxError(f"box {clash[0].roi_name} is already on slice {prompt.index}; scroll to another slice to "
                           "add a key box, or move that box")
        self.current.box_ids.append(roi.GetID())
        kind = "box_drawn" if len(self.current.box_ids) == 1 else "key_box_added"
        self._log(kind, slice=prompt.index, box=str(prompt.box))
        self.box_changed(volume_node, roi)  # the engine encodes this slice and its neighbours meanwhile
        return roi, prompt, note

    def note_box_moved(self, roi_node, volume_node) -> None:
        """The user dragged a box's handles (the panel calls this, throttled, from the ROI's modified event)."""
        try:
            prompt = prompt_from_roi(roi_node, self.grid(volume_node))
        except MedSAMError:  # a box dragged off the volume is still a move; the next run reports it
            self._log("box_moved")
            return
        except Exception:  # the same, for an unexpected failure (its traceback goes to the log)
            log.warning("box move not understood", exc_info=True)
            self._log("box_moved")
            return
        self._log("box_moved", slice=prompt.index, box=str(prompt.box))
        self.box_changed(volume_node, roi_node)

    def remove_boxes(self) -> None:
        for box in self.boxes():
            if box.GetAttribute(BOX_ATTRIBUTE) == "1":
                self.scene.RemoveNode(box)
        self.current.box_ids = []

    def accept(self, volume_node=None) -> str:
        """The current object is done: its boxes go, the next box starts a new segment.  Returns the segment ID."""
        if self.pending is not None:
            raise MedSAMError(f"{self.pending.title} is running; wait for it or cancel it before accepting")
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

    def open_case(self, volume_node, folder: str, reader: str = "anonymous", mode: str = "assisted",
                  case_id: Optional[str] = None):
        """Start the time log of this volume (a case); closes the previous one.  ``case_id``: a study plan's id
        for the case (default: the pseudonym of the volume's name)."""
        from .timelog_table import CaseTimeLog

        self.close_case()
        grid = self.grid(volume_node)
        self.time_log = CaseTimeLog(self.scene, folder, volume_node.GetName(), reader, mode, case_id)
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
        except (OSError, ValueError, TypeError) as error:  # a full disk must not stop the segmentation; panel warns
            log.warning("time log event %s not written: %s", kind, error)

    # -- conveniences for scripts and tests: start, then poll until done ----------------------------------------------
    def segment_slice(self, volume_node, roi_node=None, segmentation_node=None, segment_id=None,
                      window="auto") -> tuple:
        self.start_segment_slice(volume_node, roi_node, segmentation_node, segment_id, window)
        return _outcome_of(self.wait())

    def propagate(self, volume_node, roi_nodes=None, segmentation_node=None, segment_id=None, window="auto",
                  range_mode="auto", **options) -> tuple:
        self.start_propagation(volume_node, roi_nodes, segmentation_node, segment_id, window, range_mode, **options)
        return _outcome_of(self.wait())


def _outcome_of(progress: Progress) -> tuple:
    if progress.state == ProgressState.DONE:
        return progress.operation, progress.outcome
    if progress.error is not None:
        raise progress.error
    raise MedSAMError(progress.message)


def _mask_digest(mask: np.ndarray) -> str:
    array = np.ascontiguousarray(mask, dtype=bool)
    return hashlib.blake2b(np.packbits(array).tobytes() + str(array.shape).encode(), digest_size=16).hexdigest()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in text)[:60] or "segment"


__all__ = ["POLL_TIMEOUT", "BoxSegmentationLogic", "NothingToUndo", "ObjectState", "Outcome", "PendingOperation",
           "Progress", "ProgressState", "PropagationInput", "SliceInput", "Target"]
