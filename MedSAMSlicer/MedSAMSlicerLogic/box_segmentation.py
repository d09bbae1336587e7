"""Box-prompted segmentation on MRML nodes, with the model in the engine service: what the buttons do, without Qt.

The model never runs in Slicer's process (PythonQt holds the GIL while Slicer idles, and torch must not share
Slicer's Python): the logic sends the volume to the engine service (``MedSAMSlicerLib.client``) and writes what
comes back.  Every operation has three steps:

1. ``start_segment_slice`` / ``start_propagation`` (caller's thread, fast): check the inputs, copy what the engine
   needs out of MRML (voxels, geometry, boxes) and fix the target segment *now*, when the user clicks;
2. ``poll()`` (called by the front end from its own timer, every 100 ms or so) advances the operation by as many
   short steps as fit in ``POLL_TIMEOUT`` (50 ms) and returns a :class:`Progress`.  Every request it makes carries a
   timeout of at most ``POLL_TIMEOUT``: the engine's health while it starts or loads its model ("waiting"); sending
   the volume (:class:`MedSAMSlicerLib.client.VolumeOpening`: hashing and, for a local engine, writing the hand-over
   file a slab at a time, then the engine reads and windows it as a job); starting the work as a job on the engine
   (a slice too: ``RemoteVolume.start_segment_slice``, so no poll ever waits for an encoder); polling the job; and
   fetching its result.  A request that times out is retried at the next poll (start requests carry a request id,
   so a retry never starts a second job); ``UNREACHABLE_POLLS`` failures in a row, over at least
   ``UNREACHABLE_SECONDS``, end the operation;
3. when the engine has the result, the same ``poll()`` writes it into the target segment, recording one undo step
   and a time-log event.

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

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import slicer

from MedSAMSlicerLib.protocol import axes
from MedSAMSlicerLib.protocol.boxes import Box
from MedSAMSlicerLib.errors import (BoxError, Cancelled, EngineUnavailable, InputImageError, MedSAMError, ServiceError,
                                    first_line)

from .edit_watch import ManualEdit, ManualEditWatcher
from .messages import user_message
from .roi_prompts import (BOX_ATTRIBUTE, SlicePrompt, place_roi_on_view, prompt_from_roi, prompts_from_rois,
                          propagation_range)
from .editor_writes import labelmap_mtime
from .segments import (add_segment, check_segmentation_grid, prepare_segmentation, read_segment, segment_exists,
                       write_segment, write_segment_slice)
from .undo import EditedSince, NothingToUndo, Operation, SegmentSnapshot, UndoStack
from .volume_nodes import VolumeOnGrid, grid_key, volume_from_node

log = logging.getLogger(__name__)

POLL_TIMEOUT = 0.05  # seconds: the longest a poll may keep the GUI waiting (its requests' timeouts, its local work)
MIN_STEP = 0.02  # seconds: a poll starts another step only with this much of its POLL_TIMEOUT left
CANCEL_TIMEOUT = POLL_TIMEOUT  # telling the engine to stop (a click); not delivered = the engine drops unpolled jobs
UNREACHABLE_POLLS = 50  # consecutive failed polls (about 5 s at the panel's 100 ms) before a job is given up...
UNREACHABLE_SECONDS = 5.0  # ...and at least this long without an answer (a busy computer answers late, not never)
PREFETCH_NEIGHBOURS = 3  # slices on each side of a drawn box that the engine encodes ahead
STARTUP_TIMEOUT = 600.0  # seconds an operation waits for the engine to load its model (first use: ONNX export)

# A writer puts a (k, j, i) bool mask into a target segment: the default is segments.write_segment; the Segment
# Editor effect passes an editor_writes.SegmentEditorWriter (editable area, masking, overwrite).  A writer whose
# ``records_history`` is true keeps its own undo history (Segment Editor's): no MedSAM undo step is pushed for it,
# because a snapshot of the target segment cannot restore what an overwrite took from other segments (audit W1).
Writer = Callable[["Target", np.ndarray, Any], None]


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
    prompts: list
    window: str
    options: dict  # the engine's propagation options: rule, slice_range, stop, largest_component, fill_holes

    @property
    def axis(self) -> str:
        return self.prompts[0].axis

    @property
    def slice_range(self):
        return self.options.get("slice_range")


@dataclass
class SliceResult:
    index: int
    box: Box
    mask: np.ndarray  # bool, the slice's shape
    score: float


@dataclass
class PropagationResult:
    mask: np.ndarray  # bool (k, j, i)
    segmented_slices: int
    stopped: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What the engine produced, with what it cost."""

    seconds: float
    encoder_calls: int
    slice_result: Optional[SliceResult] = None
    propagation: Optional[PropagationResult] = None
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

    box_ids: list = field(default_factory=list)
    segmentation_id: str = ""
    segment_id: str = ""


@dataclass
class Progress:
    """What ``poll()`` says.  ``state``: "idle" (nothing pending), "waiting" (engine starting or loading its
    model), "running", then once: "done" (``operation`` and ``outcome`` set), "failed" or "cancelled"
    (``message`` says why; nothing was written)."""

    state: str
    title: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    operation: Optional[Operation] = None
    outcome: Optional[Outcome] = None
    error: Optional[BaseException] = None  # what failed (scripts re-raise it; front ends show ``message``)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def busy(self) -> bool:
        return self.state in ("waiting", "running")


@dataclass
class PendingOperation:
    """An operation between its click and its write."""

    title: str
    volume_node_id: str
    request: Any  # SliceRequest or PropagationRequest
    segmentation_id: str  # target fixed at click time ("" = a new segmentation)
    segment_id: str  # "" = a new segment
    writer: Optional[Writer]
    started: float = field(default_factory=time.monotonic)
    job: Any = None  # RemoteJob once started
    remote: Any = None  # RemoteVolume
    encoder_calls_before: int = 0
    failed_polls: int = 0
    last_answer: float = field(default_factory=time.monotonic)  # when the engine last answered a request
    cancel_requested: bool = False
    engine_ready: bool = False  # the engine said it has its model (no more health checks)
    request_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))  # a retried start is the same job
    message: str = ""  # what the operation is doing now (the last step's words)
    reopened: bool = False  # the engine had lost the volume session once already


@dataclass
class PrefetchWish:
    """Slices to encode ahead on the engine, for the volume session ``key`` = (grid key, window, axis)."""

    key: tuple
    grid: Any
    indices: list
    failures: int = 0
    last_answer: float = field(default_factory=time.monotonic)  # when a step of it last got an answer


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
        self.engine = engine
        self.undo_stack = UndoStack()
        self.current = ObjectState()
        self.time_log = None  # a CaseTimeLog when the user turned logging on
        self.edit_watcher: Optional[ManualEditWatcher] = None
        self.pending: Optional[PendingOperation] = None
        self.prefetch_window = "auto"  # the window boxes are prefetched for: the last one used, or the front end's
        self.prefetch_neighbours = PREFETCH_NEIGHBOURS
        self.idle: Optional[Callable[[], None]] = None  # called between the polls of the blocking ``wait``
        self._grids: dict = {}
        self._remote: dict = {}  # (grid key, window, axis) -> RemoteVolume
        self._openings: dict = {}  # (grid key, window, axis) -> VolumeOpening on its way (shared by ops and prefetch)
        self._fingerprints: dict = {}  # grid key -> content fingerprint (hashed once per volume)
        self._prefetch: Optional[PrefetchWish] = None
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
    def set_engine(self, engine) -> None:
        """Use another engine (the user switched between local and remote): volumes are sent again."""
        self.cancel()
        self.engine = engine
        self._remote = {}
        self._drop_openings()
        self._prefetch = None

    def _require_engine(self):
        if self.engine is None:
            raise EngineUnavailable("no engine: choose 'Local' or enter a server URL under Model, then try again")
        return self.engine

    def remote_volume(self, grid: VolumeOnGrid, key: tuple, window: str, axis: str):
        """The engine's session for this volume, window and slice axis (the voxels are sent once per content)."""
        remote_key = (key, window, axis)
        if remote_key not in self._remote:
            volume = grid.volume
            remote = self._require_engine().open_volume(
                np.asarray(volume.array), volume.spacing, volume.origin, volume.direction, window=window, axis=axis,
                modality=volume.modality)
            self._remote = {k: v for k, v in self._remote.items() if k[0] == key}  # one volume at a time
            self._remote[remote_key] = remote
        return self._remote[remote_key]

    def _open_step(self, grid: VolumeOnGrid, key: tuple, window: str, axis: str, budget: float):
        """:meth:`remote_volume` a step at a time (at most ``budget`` s): the RemoteVolume once open, else None."""
        remote_key = (key, window, axis)
        if remote_key in self._remote:
            return self._remote[remote_key]
        opening = self._openings.get(remote_key)
        if opening is None:
            volume = grid.volume
            opening = self._require_engine().start_opening(
                np.asarray(volume.array), volume.spacing, volume.origin, volume.direction, window=window, axis=axis,
                modality=volume.modality, fingerprint=self._fingerprints.get(key))
            self._drop_openings(keep=key)  # one volume at a time
            self._openings[remote_key] = opening
        remote = opening.step(budget)
        if opening.fingerprint:
            self._fingerprints = {key: opening.fingerprint}
        if remote is None:
            return None
        del self._openings[remote_key]
        self._remote = {k: v for k, v in self._remote.items() if k[0] == key}
        self._remote[remote_key] = remote
        return remote

    def _drop_openings(self, keep: Optional[tuple] = None) -> None:
        for remote_key in [k for k in self._openings if k[0] != keep]:
            self._openings.pop(remote_key).close()  # a half-written hand-over file goes

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
                            stop: bool = True, largest_component: bool = False,
                            fill_holes: bool = False) -> PropagationRequest:
        grid = self.grid(volume_node)
        prompts = prompts_from_rois(roi_nodes if roi_nodes is not None else self.boxes(), grid)
        slice_range = propagation_range(prompts, range_mode)
        options = {"rule": "ours", "slice_range": list(slice_range) if slice_range is not None else None,
                   "stop": bool(stop), "largest_component": bool(largest_component), "fill_holes": bool(fill_holes)}
        return PropagationRequest(grid, grid_key(volume_node), prompts, window, options)

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
        self._require_engine()
        if segmentation_node is not None:
            check_segmentation_grid(segmentation_node, request.grid)  # say it now, before the engine works
        segmentation_id, segment_id = self._fix_target(segmentation_node, segment_id)
        self.pending = PendingOperation(title, volume_node.GetID(), request, segmentation_id, segment_id, writer)
        self.prefetch_window = request.window  # the next boxes are prefetched for the window the user works with
        return self.pending

    @property
    def busy(self) -> bool:
        return self.pending is not None

    @property
    def preparing(self) -> bool:
        """A prefetch is on its way (the volume is being sent first): keep calling ``poll()`` while this is true."""
        return self._prefetch is not None

    def poll(self) -> Progress:
        """Advance the pending operation by short steps (``POLL_TIMEOUT`` in all); call it from the front end's
        timer.  With no operation pending it advances a prefetch (``preparing``) and says "idle"."""
        pending = self.pending
        if pending is None:
            if self._prefetch is not None:
                self._advance_prefetch(POLL_TIMEOUT)
            return Progress("idle")
        try:
            progress = self._advance(pending)
        except Cancelled as error:
            progress = Progress("cancelled", pending.title, message=str(error) or f"{pending.title} cancelled; "
                                "nothing was written", error=error)
        except Exception as error:  # noqa: BLE001 - every failure reaches the user as one line; nothing written
            progress = Progress("failed", pending.title, message=user_message(error), error=error)
        if progress.finished:
            self.pending = None
        return progress

    def _advance(self, pending: PendingOperation) -> Progress:
        """Steps while time is left in this poll: each request's timeout is what is left (``POLL_TIMEOUT`` at most).
        A request that times out ends the poll; the next poll retries it."""
        engine = self._require_engine()
        if pending.cancel_requested:
            self._deliver_cancel(pending)
            raise Cancelled(f"{pending.title} cancelled; nothing was written")
        deadline = time.monotonic() + POLL_TIMEOUT
        first = True
        if not pending.engine_ready:
            waiting = self._engine_waiting(engine, pending)  # one health request; raises when the engine is gone
            if waiting is not None:
                return waiting
            pending.engine_ready, pending.failed_polls, first = True, 0, False
            pending.last_answer = time.monotonic()
        while True:
            budget = min(POLL_TIMEOUT, deadline - time.monotonic())
            if not first and budget < MIN_STEP:
                return self._running(pending)
            try:
                progress = self._step(pending, budget)
            except EngineUnavailable:
                if not first:  # a later step ran out of this poll's time: the next poll retries it in full
                    return self._running(pending)
                pending.failed_polls += 1
                if self._unreachable(pending) or self._local_engine_exited(engine):
                    raise EngineUnavailable(f"the engine stopped answering during '{pending.title}'; nothing was "
                                            "written. Check the engine (Model section) and run it again") from None
                return Progress("running", pending.title, message="waiting for the engine")
            pending.failed_polls, pending.last_answer = 0, time.monotonic()
            if progress is not None:
                return progress
            first = False

    def _step(self, pending: PendingOperation, budget: float) -> Optional[Progress]:
        """One short step (local work or one request of at most ``budget`` s); a Progress when the poll should
        report now, None when the next step can follow at once."""
        request = pending.request
        if pending.remote is None:  # 1. the volume on the engine (sent once per content, opened once per window)
            remote = self._open_step(request.grid, *_remote_key(request), budget)
            if remote is None:
                opening = self._openings.get(_remote_key(request))
                pending.message = opening.message if opening is not None else "sending the volume to the engine"
                return None
            pending.remote = remote
            return None
        if pending.job is None:  # 2. the work starts as a job on the engine (the same request id if repeated)
            if isinstance(request, SliceRequest):
                prompt = request.prompt
                pending.job = self._start_slice_job(pending, prompt, budget)
            else:
                keys = {int(p.index): _box_tuple(p.box) for p in request.prompts}
                pending.job = pending.remote.propagate(keys, request.options, timeout=budget,
                                                       request_id=pending.request_id)
            pending.message = "segmenting" if isinstance(request, SliceRequest) else "propagating"
            return None
        status = pending.job.status
        if not status.finished:  # 3. progress (a long poll for half the time left: a quick job answers now)
            status = pending.job.poll(timeout=budget / 2, request_timeout=budget)
            if status.state == "running":
                return Progress("running", pending.title, status.done, status.total, status.message or
                                pending.message)
            if status.state != "done":
                pending.job.raise_failure()
            return None  # the result at the next step, with the time left
        if isinstance(request, SliceRequest):  # 4. the result, then the write
            return self._finish_slice(pending, pending.job.result(timeout=budget))
        return self._finish_propagation(pending, pending.job.result(timeout=budget))  # a timeout: retried (R10)

    def _start_slice_job(self, pending: PendingOperation, prompt: SlicePrompt, budget: float):
        try:
            return pending.remote.start_segment_slice(int(prompt.index), _box_tuple(prompt.box), timeout=budget,
                                                      request_id=pending.request_id)
        except ServiceError as error:
            if error.code != "not_found" or pending.reopened:
                raise
        # The engine no longer knows the session (it expired while idle, or the engine restarted): open it again.
        self._remote.pop(_remote_key(pending.request), None)
        pending.remote, pending.reopened = None, True
        return None

    def _running(self, pending: PendingOperation) -> Progress:
        if pending.job is not None:
            status = pending.job.status
            return Progress("running", pending.title, status.done, status.total, pending.message)
        opening = self._openings.get(_remote_key(pending.request)) if pending.remote is None else None
        if opening is not None:
            return Progress("running", pending.title, opening.done * 100 // max(opening.total, 1), 100,
                            opening.message)
        return Progress("running", pending.title, message=pending.message)

    @staticmethod
    def _unreachable(pending: PendingOperation) -> bool:
        return pending.failed_polls >= UNREACHABLE_POLLS and \
            time.monotonic() - pending.last_answer >= UNREACHABLE_SECONDS

    def _engine_waiting(self, engine, pending: PendingOperation) -> Optional[Progress]:
        """None when the engine is ready; else a "waiting" progress (model loading), or an error when it is gone."""
        try:
            health = engine.health(timeout=POLL_TIMEOUT)
        except EngineUnavailable:
            if self._local_engine_exited(engine) or time.monotonic() - pending.started > STARTUP_TIMEOUT:
                raise
            pending.failed_polls += 1
            if self._unreachable(pending) and getattr(engine, "process", None) is None:
                raise  # a remote server that does not answer: say so instead of waiting
            return Progress("waiting", pending.title, message="waiting for the engine to answer")
        pending.failed_polls, pending.last_answer = 0, time.monotonic()
        if health.get("ready", True):
            return None
        if time.monotonic() - pending.started > STARTUP_TIMEOUT:
            raise EngineUnavailable("the engine did not finish loading its model in time; see its log (Model "
                                    "section) and try again")
        return Progress("waiting", pending.title, message=f"engine: {health.get('loading') or 'loading the model'}")

    @staticmethod
    def _local_engine_exited(engine) -> bool:
        process = getattr(engine, "process", None)
        return process is not None and process.poll() is not None

    def _finish_slice(self, pending: PendingOperation, result: dict) -> Progress:
        request: SliceRequest = pending.request
        prompt = request.prompt
        outcome = Outcome(float(result.get("seconds", time.monotonic() - pending.started)),
                          int(result.get("encoder_calls", 0)),
                          slice_result=SliceResult(int(prompt.index), prompt.box,
                                                   np.asarray(result["mask"], dtype=bool),
                                                   float(result.get("score", 0.0))),
                          window=_window_text(pending.remote))
        operation = self.apply_slice(self._volume_of(pending), request, outcome, *self._target_of(pending),
                                     writer=pending.writer)
        return Progress("done", pending.title, 1, 1, operation.description, operation, outcome)

    def _finish_propagation(self, pending: PendingOperation, result: dict) -> Progress:
        outcome = Outcome(float(result.get("seconds", time.monotonic() - pending.started)),
                          int(result.get("encoder_calls", 0)),
                          propagation=PropagationResult(np.asarray(result["mask"], dtype=bool),
                                                        int(result.get("segmented_slices", 0)),
                                                        dict(result.get("stopped") or {})),
                          window=_window_text(pending.remote))
        operation = self.apply_propagation(self._volume_of(pending), pending.request, outcome,
                                           *self._target_of(pending), writer=pending.writer)
        total = outcome.propagation.segmented_slices
        return Progress("done", pending.title, total, total, operation.description, operation, outcome)

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
        pending = self.pending
        if pending is None:
            return
        pending.cancel_requested = True
        self._deliver_cancel(pending)

    @staticmethod
    def _deliver_cancel(pending: PendingOperation) -> None:
        job, pending.job = pending.job, None  # at most once per job
        if job is None or job.status.finished:
            return
        try:
            job.cancel(timeout=CANCEL_TIMEOUT)
        except MedSAMError as error:  # the engine is gone or slow: it stops jobs nobody polls by itself
            pending.job = job
            log.info("cancel not delivered: %s", error)

    def reset(self) -> None:
        """The scene is closing (node IDs will be reused by the next scene): forget everything tied to it."""
        pending, self.pending = self.pending, None
        if pending is not None and pending.job is not None:
            self._deliver_cancel(pending)
        self.close_case()
        self.undo_stack.clear()
        self.current = ObjectState()
        self._grids = {}
        self._remote = {}
        self._drop_openings()
        self._fingerprints = {}
        self._prefetch = None

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
        except Exception as error:  # noqa: BLE001 - a box off the volume: the next run reports it, not the prefetch
            log.info("no prefetch for this box: %s", first_line(error))
            return []
        count = int(grid.shape_kji[prompt.np_axis])
        indices = [int(prompt.index)]
        for step in range(1, max(0, int(self.prefetch_neighbours)) + 1):
            indices += [i for i in (prompt.index + step, prompt.index - step) if 0 <= i < count]
        self._prefetch = PrefetchWish(key, grid, indices)  # the latest box wins
        if self.pending is None:
            self._advance_prefetch(POLL_TIMEOUT)
        return indices

    def _advance_prefetch(self, budget: float) -> None:
        """One step of the wished prefetch: send the volume (a step of it), or, once it is there, the request."""
        wish = self._prefetch
        try:
            remote = self._remote.get(wish.key)
            if remote is None:
                self._open_step(wish.grid, *wish.key, budget)  # the request goes at the next poll
                wish.failures, wish.last_answer = 0, time.monotonic()
                return
            remote.prefetch(wish.indices, timeout=budget)
            self._prefetch = None
        except EngineUnavailable as error:  # slow or gone: retried at the next polls, then given up
            wish.failures += 1
            if wish.failures >= UNREACHABLE_POLLS and time.monotonic() - wish.last_answer >= UNREACHABLE_SECONDS:
                log.info("prefetch given up: %s", first_line(error))
                self._prefetch = None
        except Exception as error:  # noqa: BLE001 - a prefetch never reaches the user; the operation reports
            if isinstance(error, ServiceError) and error.code == "not_found":
                self._remote.pop(wish.key, None)  # the session expired: opened again at the next poll
                return
            log.info("prefetch not sent: %s", first_line(error))
            self._prefetch = None

    def wait(self, pending: Optional[PendingOperation] = None, interval: float = 0.05,
             timeout: float = 3600.0) -> Progress:
        """Poll until the pending operation finishes (scripts and tests; front ends poll from a timer)."""
        deadline = time.monotonic() + timeout
        while True:
            progress = self.poll()
            if progress.finished or progress.state == "idle":
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

    def apply_slice(self, volume_node, request: SliceRequest, outcome: Outcome, segmentation_node=None,
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

    def apply_propagation(self, volume_node, request: PropagationRequest, outcome: Outcome, segmentation_node=None,
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
            self.edit_watcher.baseline = self.edit_watcher._read()  # noqa: SLF001 - undo is not a manual edit
        self._log("undo", operation=operation.description)
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
        except Exception:  # noqa: BLE001 - a box dragged off the volume is still a move; the next run reports it
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
        except Exception as error:  # noqa: BLE001 - a full disk must not stop the segmentation; the panel warns
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
    if progress.state == "done":
        return progress.operation, progress.outcome
    if progress.error is not None:
        raise progress.error
    raise MedSAMError(progress.message)


def _mask_digest(mask: np.ndarray) -> str:
    import hashlib

    array = np.ascontiguousarray(mask, dtype=bool)
    return hashlib.blake2b(np.packbits(array).tobytes() + str(array.shape).encode(), digest_size=16).hexdigest()


def _remote_key(request) -> tuple:
    """(grid key, window, axis): the engine session an operation needs."""
    axis = request.prompt.axis if isinstance(request, SliceRequest) else request.axis
    return request.grid_key, request.window, axis


def _box_tuple(box: Box) -> tuple:
    return (float(box.x0), float(box.y0), float(box.x1), float(box.y1))


def _window_text(remote) -> str:
    window = getattr(remote, "window", "") or ""
    reason = getattr(remote, "window_reason", "") or ""
    return f"{window} ({reason})" if reason else str(window)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in text)[:60] or "segment"


__all__ = ["BoxSegmentationLogic", "NothingToUndo", "Outcome", "PendingOperation", "Progress", "PropagationRequest",
           "SliceRequest", "Target"]
