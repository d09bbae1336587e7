"""The browser app: three slice views and a 3D view of real Slicer (trame-slicer), and the MedSAM panel.

Every action goes through the shared logic (``MedSAMSlicerLogic.box_segmentation.BoxSegmentationLogic``): this module
only wires buttons, keys and mouse drags to it, polls it from the server's event loop (every ``POLL_SECONDS``) and
shows what it says.  The model runs in the engine service (a local child, or ``--server``), never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .display import show_scan, show_surfaces, surface_points
from .security import PageGate, StateGate, save_target
from .state import SAVE_FORMATS, VIEW_TAGS, ControlsState, PanelState, client_checks, state_names

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # the idle poll: the prefetch started when a box is drawn, the clock (one short request at most)
STEP_SECONDS = 0.02  # between two steps of a running operation when no job is out to wait on (the volume is sent)
JOB_WAIT_SECONDS = 0.3  # one long poll of a running job in the worker thread (the server answers when it ends)
FIRST_VIEW_SECONDS = 0.05  # after a result, the view it was asked in gets this head start over the other views
CLOCK_SECONDS = 1.0  # the time log's running active time, manual-edit detection
EXPIRY_CHECK_SECONDS = 5.0  # how often open websockets of expired sessions are closed
# Prefetch ahead (issue 18, the simulated reader's wait): until an object is propagated, the engine encodes the slices
# around the one the red view shows, outwards in both directions, while the reader looks and draws the first box, so
# the propagation finds them cached.  Slices on each side (33 in all: ~10 s of encoder at 0.3 s per 512² slice; the
# engine caps a prefetch at half its cache and pauses it while any job runs).
AHEAD_SLICES = 16
END_SLICES = 3  # after a propagation: the slices just past each end of the object (a corrective box there extends it)


class WebApp:
    """One trame server with one Slicer scene: one annotator per process (a ward runs several processes).

    ``sessions`` (``security.Sessions``) turns the login on; without it the page is open to whoever reaches the
    address, which the CLI allows on loopback only.  ``out_folder``: where saves go (the admin's choice; None: no
    saving).
    """

    def __init__(self, engine, images: list[str], log_folder: Optional[str] = None, reader: str = "anonymous",
                 out_folder: Optional[str] = None, volume_rendering: bool = False, sessions=None,
                 ssl_context=None, owner: Optional[str] = None, pacs=None, study=None) -> None:
        from trame.app import get_server
        from trame_server.utils.typed_state import TypedState
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
        from undo_stack import UndoStack

        from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic

        from .scene_bridge import install_slicer_globals

        self.engine = engine
        self.log_folder = log_folder
        self.reader = reader
        # Never the process's working folder: the admin names the folder at start (or the log folder is used).
        folder = out_folder or log_folder
        self.out_folder = Path(os.path.realpath(Path(folder).expanduser())) if folder else None
        self.ssl_context = ssl_context
        self.gate = PageGate(sessions, secure=ssl_context is not None, owner=owner)
        self._wslink = None
        self.gate.on_owner = self._owner_logged_in
        self._empty_warned = None  # (name, actions so far) when the reader was warned of an empty segmentation
        self.volume_rendering = volume_rendering
        self.server = get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        from .keys import MODULE as KEYS_MODULE

        self.server.enable_module(KEYS_MODULE)  # the shortcuts' key listener
        self.state, self.ctrl = self.server.state, self.server.controller
        # The page's state, typed (state.py): what the page may set, each value checked by the gate before trame
        # applies it; and what only the server sets.
        self.controls = TypedState(self.state, ControlsState)
        self.panel = TypedState(self.state, PanelState)
        self._control_names = {f.name for f in dataclasses.fields(ControlsState)}
        from .review_panel import ReviewPanelState

        self.review_state = TypedState(self.state, ReviewPanelState)  # the review's lists: shown, server-only
        self.state_gate = StateGate(self.server, client_checks(self.controls),
                                    server_only=state_names(self.panel) | state_names(self.review_state))
        self.server.add_protocol_to_configure(lambda root: root.registerLinkProtocol(self.gate.link_protocol))
        self.ctrl.on_server_bind.add(self._on_bind)
        self.slicer_app = SlicerApp()
        install_slicer_globals(self.slicer_app)
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=_marked_slice_ui,
                               three_d_view_ui_f=_marked_threed_ui)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        red, green, yellow, three_d = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                                       ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.threed_view())
        self.layout_manager.register_layout("FourUp", Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [red, yellow]), Layout(LayoutDirection.Vertical, [three_d, green])]))
        self.layout_manager.set_layout("FourUp")
        self.editor = self.slicer_app.segmentation_editor
        self.editor.set_undo_stack(UndoStack(undo_limit=20))  # the manual tools' own undo (Segment Editor's)
        self.logic = BoxSegmentationLogic(self.slicer_app.scene, engine)
        self.logic.slice_writes = True  # a result writes its slice only; the undo digest after the frame (_drive)
        from .review_panel import ReviewActions, ReviewHost

        self.review = ReviewActions(self.logic, ReviewHost(
            volume=lambda: self.volume, segmentation=lambda: self.segmentation, say=self._say, start=self._start,
            show_slice=self.show_slice, slice_node=lambda tag: self._slice_view(tag).get_view_node()),
            self.review_state.data)
        self.volume = None
        self.loaded_path = ""
        self.segmentation = None
        self.study = study  # MedSAMSlicerLib.study.arms.StudyMode (--study): the plan's rows are the worklist
        self._study_mode = None  # its MedSAMSlicerLogic.study_mode.StudySession (the logic the Slicer panel shares)
        if study is not None:
            images = [case.image for case in study.cases]
        self.images = list(images)  # the worklist (--cases, or the images given): the page picks by number only
        self.case_index = -1
        self._saved_cases: set[int] = set()
        self.pacs = pacs  # MedSAMSlicerLib.pacs.dicomweb.Pacs (--dicomweb): all PACS work is in that library class
        self.dicom_volume = None  # the series opened from the PACS (its UIDs, for the SEG); None for files
        self.edited = False  # a refine tool was used since the volume was opened (the SEG's provenance says so)
        self._pacs_folder = None  # private temporary folder for the fetched series' voxels
        self._drag = None
        self._ticks = 0
        self._ahead = True  # no object propagated yet: the shown slice's neighbours are prefetched (_prefetch_ahead)
        self._ahead_at = None  # (remote key, slice) the last prefetch went out for
        self.actions = 0  # actions finished (or failed) so far: a script waits for this to grow
        self._show(out_folder=str(self.out_folder) if self.out_folder else "", reader=self.reader_id(),
                   log_folder=log_folder or "", study=study is not None, pacs=pacs is not None)
        self._build_ui()
        self._register_triggers()
        self.ctrl.on_server_ready.add(self._on_ready)

    # -- data -----------------------------------------------------------------------------------------------------
    def load(self, path: str) -> None:
        """Load a volume (replacing the current one) and show it in the three views and the 3D view."""
        from MedSAMSlicerLogic.volume_nodes import check_volume_node

        nodes = self.slicer_app.io_manager.load_volumes(str(path))
        if not nodes:
            raise ValueError(f"could not read {path}")
        node = nodes[0]
        check_volume_node(node)
        if self.volume is not None:
            self._stop_prefetch()  # the previous case's slices are of no use any more
            self.logic.reset()
            for old in (self.volume, self.segmentation):
                if old is not None:
                    self.slicer_app.scene.RemoveNode(old)
        self.volume = node
        self._follow(True)  # a new case: its shown slice's neighbours are encoded while the reader looks
        self.loaded_path = str(path)  # its file's header is the one a saved label gets (``save``)
        self.dicom_volume = None
        self.edited = False
        show_scan(self.slicer_app, node, self.volume_rendering)
        self.segmentation = self.editor.create_empty_segmentation_node()
        self.segmentation.SetName(f"{node.GetName()} MedSAM")
        self.editor.set_active_segmentation(self.segmentation, node)
        self.editor.show_3d(True)
        self._apply_display_window(self.controls.data.window)
        stem = Path(str(path)).name.split(".")[0]
        self._show(volume_name=node.GetName(), save_name=f"{stem}-medsam{SAVE_FORMATS[0]}",
                   save_overwrite=False, warning="")
        self._refresh()

    # -- the worklist ---------------------------------------------------------------------------------------------
    def _case_status(self, index: int) -> str:
        """Done: a segmentation of the case saved (this session, or ``STEM-medsam*`` already in the output folder);
        in progress: the case open now; else not started.  The output folder is the reader's own (one per app)."""
        if self.study is not None:  # the plan's row is done when its log holds an accept
            status = self._session().status(index)
            return "in progress" if status == "not started" and index == self.case_index else status
        stem = Path(self.images[index]).name.split(".")[0]
        saved = index in self._saved_cases or (self.out_folder is not None and any(
            (self.out_folder / f"{stem}-medsam{suffix}").exists() for suffix in SAVE_FORMATS))
        return "done" if saved else "in progress" if index == self.case_index else "not started"

    def _show_cases(self) -> None:
        self.panel.data.cases = [dict(name=Path(image).name + (f" ({self.study.cases[n].mode})" if self.study else ""),
                                 status=self._case_status(n)) for n, image in enumerate(self.images)]
        self.panel.data.case_index = self.case_index

    def open_case(self, index) -> None:
        """Open case number ``index`` of the worklist (the time log, if running, moves to it)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.images):
            raise ValueError("no such case in the worklist")
        if self.logic.busy:
            raise ValueError("wait for the running operation (or cancel it) first")
        if self.study is not None:
            self._open_study_case(index)
            return
        logging_on = self.logic.time_log is not None
        if logging_on:
            self.logic.close_case()
            self.panel.data.log_running = False
        self.case_index = index
        self.load(self.images[index])
        if logging_on:
            self.toggle_time_log()
        self._show_cases()
        self._say(f"case {index + 1} of {len(self.images)}: {Path(self.images[index]).name}", action="case_opened")

    # -- study mode (--study): MedSAMSlicerLogic.study_mode runs it (shared with the Slicer panel); this loads and shows
    def _session(self):
        """The reader's StudySession on this app's logic (the reader is the logged-in one once logged in)."""
        from MedSAMSlicerLogic.study_mode import StudySession

        if self._study_mode is None:
            self._study_mode = StudySession(self.logic, self.study, self.reader_id())
        self._study_mode.reader = self.reader_id()
        return self._study_mode

    def arm(self) -> str:
        """The arm of the open study case ("" outside study mode)."""
        return self._session().arm if self.study is not None else ""

    def _check_arm(self, action: str) -> None:
        if self.study is not None:
            self._session().check(action)

    def _open_study_case(self, index: int) -> None:
        """Open the plan's next row (no other: the plan's order is the protocol), start its time log under the
        plan's case id and arm; the manual arm starts with an empty segment for the Segment Editor tools."""
        session = self._session()
        session.check_order(index)
        self.logic.close_case()
        self.case_index = index
        self.load(session.image(index))
        case = session.open(index, self.volume, self.segmentation)
        self._show(arm=case.mode, log_running=True, log_path=str(self.logic.time_log.path))
        self._show_cases()
        self._say(f"study case {index + 1} of {len(self.images)} ({case.mode} arm)", action="case_opened")

    def finish_case(self) -> None:
        """Study mode: accept the case's object, stop its time log, open the plan's next row."""
        if self.study is None or self.logic.time_log is None:
            raise ValueError("no study case is open")
        if self.logic.busy:
            raise ValueError("wait for the running operation (or cancel it) first")
        following = self._session().finish(self.volume)  # accept (the final mask), time log stopped
        self._show(log_running=False, tool="none")
        self.editor.deactivate_effect()
        if following is None:
            self.panel.data.arm = ""
            self._show_cases()
            self._say("study done: every case of the plan is finished", action="study_done")
            return
        self.open_case(following)

    def next_case(self) -> None:
        """The next case that is not done (after the current one, then from the top)."""
        if self.study is not None:
            following = self._session().next_index()
            if following is None:
                raise ValueError("the study is done")
            self.open_case(following)
            return
        order = [(self.case_index + step) % len(self.images) for step in range(1, len(self.images) + 1)]
        following = next((n for n in order if self._case_status(n) != "done" and n != self.case_index), None)
        if following is None:
            raise ValueError("every case of the worklist is done")
        self.open_case(following)

    def _apply_display_window(self, window: str) -> None:
        from MedSAMSlicerLogic.volume_nodes import show_window

        show_window(self.volume, window)  # the Slicer panel's own: the display W/L of the engine's window

    # -- actions (buttons, keys and triggers) ----------------------------------------------------------------------
    def draw_box(self, new_object: bool = True) -> None:
        """Arm the drag: the next press-drag-release in a slice view is the box."""
        self._need_volume()
        self._check_arm("draw_box" if new_object else "key_box")
        self.editor.deactivate_effect()
        self.controls.data.tool = "none"
        self._new_object = new_object and not self.review.taking_boxes  # review: a box on the object corrects it
        if self._new_object:
            self._follow(True)
        self._drag.arm()
        self.panel.data.drawing = True
        self._say("drag a box around the object in a slice view" if new_object
                  else "drag a key box on another slice of the same object")

    def _on_box(self, slice_node, corner0, corner1) -> None:
        self._box_view_node = slice_node  # the view the reader works in: its frame comes first after a result
        with self.state:
            self.panel.data.drawing = False
            with self._reporting():  # a failure: one line to the user, nothing kept
                roi, prompt, note = self.logic.draw_box(self.volume, slice_node, self._new_object,
                                                        corners_world=(corner0, corner1))
                roi.GetDisplayNode().SetFillOpacity(0.0)  # outline only: the mask under it stays visible
                if self.review.taking_boxes:
                    self.review.corrective_box(roi)
                else:
                    self._say(f"{note}: {prompt.box}", action="box_drawn")
            self._refresh()

    def segment_slice(self) -> None:
        self._need_volume()
        self._check_arm("segment_slice")
        self._start(lambda: self.logic.start_segment_slice(
            self.volume, None, self.segmentation, None, self.controls.data.window))

    def propagate(self) -> None:
        self._need_volume()
        self._check_arm("propagate")
        self._follow(False)  # the propagation encodes what it still needs; the prefetch stops following the view
        if self.review_state.data.review_mode:
            self.review.propagate(self.controls.data.window, self.controls.data.range_mode,
                                  bool(self.controls.data.stop_rule))
            return
        self._start(lambda: self.logic.start_propagation(
            self.volume, None, self.segmentation, None, self.controls.data.window, self.controls.data.range_mode,
            stop=bool(self.controls.data.stop_rule), largest_component=bool(self.controls.data.largest_component),
            fill_holes=bool(self.controls.data.fill_holes)))

    def _start(self, start) -> None:
        self.editor.deactivate_effect()
        self.controls.data.tool = "none"
        with self._reporting():
            pending = start()
            self._show(busy=True, progress_title=pending.title, progress_done=0, progress_total=0, error="")
            self._say(f"{pending.title}: sending to the engine")
            self._driver = asyncio.ensure_future(self._drive())

    def cancel(self) -> None:
        self.logic.cancel()
        self._say("cancelling...")

    def undo(self) -> None:
        if self.review.handles_undo:
            with self._reporting():
                self.review.undo()
            return
        with self._reporting():
            operation = self.logic.undo()
            self._say(f"undone: {operation.description}", action="undo")
        self._refresh()

    def accept(self) -> None:
        with self._reporting():
            if self.arm() == "manual":
                raise ValueError("in the manual arm, Finish case accepts what you drew")
            segment_id = self.logic.accept(self.volume)
            self.review.end()
            self._follow(True)  # the next object: prefetch around the slice the reader goes to
            self._say(f"accepted {segment_id or 'nothing'}; the next box starts a new object", action="accept")
        self._refresh()

    def next_object(self) -> None:
        """Accept the current object and arm the drag for the next one."""
        self.accept()
        if not self.panel.data.error:
            self.draw_box(new_object=True)

    def set_tool(self, tool: str) -> None:
        """The Segment Editor's manual tools on the current object's segment (its undo is Segment Editor's)."""
        from trame_slicer.segmentation import (SegmentationEffectDraw, SegmentationEffectErase,
                                               SegmentationEffectPaint, SegmentationEffectScissors)

        effects = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase,
                   "draw": SegmentationEffectDraw, "scissors": SegmentationEffectScissors}
        if not isinstance(tool, str) or tool not in effects:  # "none", or anything else a page sends
            self.editor.deactivate_effect()
            self.controls.data.tool = "none"
            return
        segment_id = self.logic.current.segment_id
        if not segment_id:
            self._fail(ValueError("nothing to refine yet: segment a slice or propagate first"))
            return
        self.edited = True
        self._drag.disarm()
        self.panel.data.drawing = False
        self.editor.set_active_segment_id(segment_id)
        self.editor.set_active_effect_type(effects[tool])
        self.controls.data.tool = tool
        self._say(f"{tool}: draw in a slice view")

    def fill_between(self) -> None:
        """Segment Editor's "Fill between slices" on the current object's segment (in both arms of a study: it is
        a reader's tool): the empty slices between drawn slices, by morphological contour interpolation
        (``MedSAMSlicerLogic.fill_between``); one undo step."""
        self._need_volume()
        self.editor.deactivate_effect()
        self.controls.data.tool = "none"
        with self._reporting():
            operation = self.logic.fill_between_slices(self.volume, self.segmentation)
            self.edited = True
            self._say(operation.description, action="fill_between")
        self._refresh()

    def _owner_logged_in(self, reader: str) -> None:
        with self.state:
            self.panel.data.reader = reader

    def reader_id(self) -> str:
        """Who is annotating: the logged-in reader (the login decides, not the page), else ``--reader``."""
        return self.gate.owner or self.reader or "anonymous"

    def save(self) -> Optional[str]:
        """The segmentation as a label file (every segment, 1..n), through the checked atomic writers, into the
        output folder under the file name the reader typed (``security.save_target``).  An empty segmentation is
        not written on the first press: the reader is warned and a second press (nothing changed) writes it."""
        from MedSAMSlicerLib.volumeio.files import on_file_grid, write_label
        from MedSAMSlicerLogic.segments import read_segment

        self._need_volume()
        if self.dicom_volume is not None:
            return self.store_in_pacs()
        overwrite = self.controls.data.save_overwrite is True
        try:
            path = save_target(self.out_folder, self.controls.data.save_name, SAVE_FORMATS, self.images, overwrite)
        except Exception:
            self.controls.data.save_overwrite = False  # one confirmation, one attempt
            raise
        grid = self.logic.grid(self.volume)
        label = np.zeros(grid.shape_kji, dtype=np.uint8)
        segmentation = self.segmentation.GetSegmentation()
        for number in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(number)
            label[read_segment(self.segmentation, segment_id, self.volume) & (label == 0)] = number + 1
        if not label.any() and self._empty_warned != (path.name, self.actions):
            self.panel.data.warning = ("The segmentation is empty: nothing saved. Press Save again to save an empty "
                                       "mask.")
            self._say("empty segmentation: not saved", action="save_empty_warned")
            self._empty_warned = (path.name, self.actions)  # the very next action, if it is Save, writes it
            return None
        self._empty_warned = None
        self._show(warning="", save_overwrite=False)  # one confirmation, one save
        # on the input file's own header (Slicer may hold a file's grid with an axis the other way round)
        label, reference = on_file_grid(label, _lps_reference(grid), self.loaded_path)
        written = write_label(path, label, reference, provenance=self._provenance())
        self._saved_cases.add(self.case_index)
        self._show_cases()
        self._say(f"saved {written.name} in the output folder", action="saved")
        return str(written)

    # -- PACS (--dicomweb): listing, opening and storing go through MedSAMSlicerLib.pacs --------------------------
    def pacs_list_studies(self) -> None:
        studies = self.pacs.studies()  # the patient id is shown as the PACS gives it; nothing is logged here
        self.panel.data.pacs_studies = [dict(title=" ".join(x for x in (s["patient_id"], s["date"], s["description"])
                                                       if x) or s["study"], value=s["study"]) for s in studies]
        self._say(f"{len(studies)} studies in the PACS", action="pacs_listed")

    def pacs_list_series(self, study: str) -> None:
        series = [s for s in self.pacs.series(study) if s["modality"] not in ("SEG", "SR", "RTSTRUCT", "PR")]
        self.panel.data.pacs_series_items = [
            dict(title=f"{s['modality']} {s['description']} ({s['instances']})".strip(), value=s["series"])
            for s in series]

    def pacs_open(self, study: Optional[str] = None, series: Optional[str] = None) -> None:
        import tempfile

        from MedSAMSlicerLib.pacs.dicomweb import private_image_copy

        study, series = study or self.controls.data.pacs_study, series or self.controls.data.pacs_series
        if not study or not series:
            raise ValueError("choose a study and a series first")
        volume = self.pacs.open_series(study, series)
        if self._pacs_folder is None:
            self._pacs_folder = tempfile.TemporaryDirectory(prefix="medsam-pacs-")
        self.load(str(private_image_copy(volume, self._pacs_folder.name)))
        self.dicom_volume = volume
        name = volume.source.description or f"series {series[-12:]}"  # never the patient's name
        self.volume.SetName(name)
        self.volume.SetAttribute("DICOM.Modality", volume.modality or "")  # feeds the auto window
        self._show(volume_name=name, save_name="")  # Save stores in the PACS
        self._say(f"opened {name} from the PACS", action="pacs_opened")

    def store_in_pacs(self) -> str:
        """The segmentation (every segment, as one) as DICOM SEG, stored next to its series and found again."""
        from MedSAMSlicerLogic.segments import read_segment

        grid = self.logic.grid(self.volume)
        mask = np.zeros(grid.shape_kji, dtype=bool)
        for segment_id in self._segment_ids():
            mask |= read_segment(self.segmentation, segment_id, self.volume)
        uid = self.pacs.store_segmentation(mask.astype(np.uint8), self.dicom_volume, self._provenance())
        self._say(f"stored DICOM SEG {uid} in the PACS", action="saved")
        return uid

    def _provenance(self):
        """What a saved segmentation says about its making: the engine's model and weights, the boxes, edits."""
        from MedSAMSlicerLib.volumeio.provenance import Provenance

        info = self.engine.info()
        return Provenance(model=str(info.get("model")), weights_sha256=str(info.get("checkpoint_sha256")),
                          prompts={"boxes": self.app_state()["boxes"]}, edited_after=self.edited)

    def toggle_time_log(self) -> None:
        if self.study is not None:
            raise ValueError("in study mode the time log starts and stops with each case")
        if self.logic.time_log is not None:
            self.logic.close_case()
            self.panel.data.log_running = False
            self._say("time log stopped", action="log_stopped")
            return
        self._need_volume()
        folder = self.log_folder  # the admin's, never the page's
        if not folder:
            raise ValueError("the app was started without a time-log folder (--log-folder)")
        Path(folder).mkdir(parents=True, exist_ok=True)
        time_log = self.logic.open_case(self.volume, folder, self.reader_id())
        self._show(log_running=True, log_path=str(time_log.path))
        self._say(f"time log: {time_log.path.name}", action="log_started")  # the page shows no server path

    def export_report(self) -> str:
        from MedSAMSlicerLogic.study_report import export_report

        if not self.log_folder:
            raise ValueError("the app was started without a time-log folder (--log-folder)")
        where = export_report(self.log_folder)
        self._say(f"report: {Path(str(where)).name}", action="report")
        return where

    # -- polling ----------------------------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self._tick()
            except Exception:  # the loop must survive; the logic reports its own failures (logged with its traceback)
                log.exception("poll failed")

    def _tick(self) -> None:
        self._ticks += 1
        if self._ahead and self.volume is not None and not self.logic.busy:
            self._prefetch_ahead()
        if self.logic.preparing and not self.logic.busy:
            self.logic.poll()  # sends the volume / advances the prefetch started when the box was drawn
        self.review.start_queued()  # a review action queued while another operation ran
        if self._ticks % round(CLOCK_SECONDS / POLL_SECONDS) == 0 and self.logic.time_log is not None:
            with self.state:
                if not self.logic.busy:
                    edit = self.logic.collect_manual_edits()
                    if edit is not None:
                        self.review.manual_edit(edit.slices)  # under review: sent to the engine, locked there
                    self._show_surface()  # after paint, erase or scissors
                seconds = int(self.logic.time_log.active_seconds())
                self.panel.data.active_time = f"{seconds // 60}:{seconds % 60:02d}"

    # -- a running operation: pushed to the page the moment the engine answers ------------------------------------
    async def _drive(self) -> None:
        """Carry the pending operation to its end (issue 21, click-to-mask).  Each step of the shared logic runs
        here on the event loop (steps write MRML, which only this thread may touch; each is short,
        ``POLL_TIMEOUT``).  While the engine works on the job, a worker thread waits on the job's long poll, so the
        loop stays free for frames and clicks and the next step runs the moment the engine answers, not at the
        next tick of a timer.  A thread, not an asyncio HTTP call: the engine client (requests) is the one place
        that knows the wire; the thread only waits (no MRML, no trame state), and the loop sends no engine request
        of its own while an operation runs (the idle poll and Save wait for it)."""
        try:
            answered = True  # the engine said the job ended (the first step: a cached slice may end in one step)
            while self.logic.busy:
                held = self._hold_other_views() if answered else []
                try:
                    with self.state:
                        progress = self.logic.poll()
                        self._show_progress(progress)
                    if progress.finished:
                        await asyncio.sleep(FIRST_VIEW_SECONDS)  # the reader's view renders and goes out first
                        with self.state:
                            self._refresh()  # the surface in 3D, the counts: after that frame
                finally:
                    for view, was_held in held:  # unblocking schedules their render
                        view.set_render_blocked(was_held)
                if progress.finished:
                    self.logic.settle()  # the undo check's digest of what was written, after the frames too
                    self._prefetch_after(progress)
                    return
                job = getattr(self.logic.pending, "job", None)
                if job is not None and not job.status.finished and not self.logic.pending.cancel_requested:
                    answered = await asyncio.to_thread(_wait_for_job, job)
                else:
                    answered = job is not None
                    await asyncio.sleep(STEP_SECONDS)
        except Exception:  # the page must not hang on "busy": the logic reports its own failures in progress
            log.exception("the operation's driver failed")
            with self.state:
                self.panel.data.busy = self.logic.busy

    def _show_progress(self, progress) -> None:
        self._show(progress_done=progress.done, progress_total=progress.total)
        if progress.message and not progress.finished:
            self._say(progress.message)
        if not progress.finished:
            return
        self.panel.data.busy = False
        if progress.state == "done":
            self.editor.set_active_segment_id(self.logic.current.segment_id)
            # a review action that writes nothing (accept a slice) has no operation, only its message
            self._say(progress.operation.description if progress.operation else progress.message,
                      action=progress.title)
        elif progress.state == "cancelled":
            self._say(progress.message, action="cancelled")
        else:
            self._say(progress.message, action="failed")
            self.panel.data.error = progress.message  # after _say, which clears the error line
        self.review.refresh()

    def _hold_other_views(self) -> list:
        """While a step may write the result: every view but the one the box was drawn in stops rendering, so that
        the reader's view renders first (the views render one after the other on this loop); the caller lets them
        go after the result's frame and the surface.  Returns (view, was it held before) pairs."""
        views = [view for view in [*self.slicer_app.view_manager.get_slice_views(),
                                   *self.slicer_app.view_manager.get_threed_views()]
                 if view.get_view_node() is not getattr(self, "_box_view_node", None)]
        return [(view, view.set_render_blocked(True)) for view in views]

    # -- prefetch ahead: the engine encodes what the next propagation or correction needs while the reader thinks --
    def _follow(self, on: bool) -> None:
        """Prefetch around the shown slice (``on``: no object propagated yet) or not.  A box drawn meanwhile asks
        for as many slices (the logic's ``prefetch_neighbours``).  Once the object is propagated a box asks for its
        own slice only: the object's slices are cached and those past its ends are asked for after the propagation
        (``_prefetch_after``); a neighbour encoded then would hold up the correction the box starts (an encoder
        call cannot be interrupted: the correction waited for one, or two before the engine's prefetch waited for
        jobs)."""
        self._ahead = on
        self._ahead_at = None
        self.logic.prefetch_neighbours = AHEAD_SLICES if on else 0

    def _remote_key(self) -> tuple:
        """The engine session a propagation from the red view will use: (grid key, the panel's window, "k")."""
        from MedSAMSlicerLogic.volume_nodes import grid_key

        return grid_key(self.volume), self.controls.data.window, "k"

    def _prefetch_ahead(self) -> None:
        """From the idle poll: when the red view shows another slice (or the window changed), ask the engine to
        encode that slice and ``AHEAD_SLICES`` on each side, nearest first (the latest request replaces the
        previous one on the engine; cached slices cost nothing).  The first request sends the volume."""
        from MedSAMSlicerLib.errors import MedSAMError
        from MedSAMSlicerLogic.object_review import view_slice_index

        try:
            grid = self.logic.grid(self.volume)
            count = int(grid.shape_kji[0])
            k = view_slice_index(self._slice_view("Red").get_view_node(), self.volume, count)
            key = self._remote_key()
        except MedSAMError:  # the view is off the volume: nothing to encode around
            return
        if (key, k) == self._ahead_at:
            return
        self._ahead_at = (key, k)
        self.logic.prefetch_window = key[1]  # a box drawn next prefetches for the same session
        self.logic.jobs.wish_prefetch(key, grid, outwards(k, AHEAD_SLICES, count))

    def _prefetch_after(self, progress) -> None:
        """After an operation: a propagated object under review gets the ``END_SLICES`` slices past each of its
        ends encoded (a corrective box there extends it, and its walk needs them); a plain propagation stops the
        prefetch still running for it (an empty request replaces it)."""
        if progress.state != "done" or self._ahead or self.volume is None:
            return
        state = self.review.review.state if self.review.review.active else None
        try:
            grid = self.logic.grid(self.volume)
            count = int(grid.shape_kji[0])
            key = (state.grid_key, state.window, state.axis) if state is not None else self._remote_key()
        except Exception:  # a prefetch must never break the page; the next operation reports a real failure
            log.debug("no prefetch after the operation", exc_info=True)
            return
        indices: list[int] = []
        if state is not None and state.scores:
            low, high = min(state.scores), max(state.scores)
            for step in range(1, END_SLICES + 1):
                indices += [i for i in (high + step, low - step) if 0 <= i < count]
        if (key, tuple(indices)) != self._ahead_at:
            self._ahead_at = (key, tuple(indices))
            self.logic.jobs.wish_prefetch(key, grid, indices)

    def _stop_prefetch(self) -> None:
        """Another case opens: the engine stops encoding this one's slices (an empty prefetch replaces the one
        running; one short request, a failure only logged)."""
        if self._ahead_at is None:
            return
        remote = self.logic.volumes.session(self._ahead_at[0])
        if remote is not None:
            try:
                remote.prefetch([], timeout=0.05)
            except Exception:  # the engine drops it with the session anyway
                log.debug("the prefetch was not stopped", exc_info=True)

    # -- state shown in the page ------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        self._show_surface()
        self.panel.data.boxes = len(self.logic.boxes())
        self.panel.data.can_undo = len(self.logic.undo_stack) > 0
        self.panel.data.voxels = self._voxel_count()

    def _show_surface(self) -> None:
        if self.segmentation is not None:
            show_surfaces(self.segmentation, self.slicer_app.view_manager.get_threed_views())

    def surface_points(self) -> int:
        return surface_points(self.segmentation) if self.segmentation is not None else 0

    def _voxel_count(self) -> int:
        """Voxels in all segments, counted on the stored layers (copying each segment onto the scan's grid, as
        ``_masks`` does, cost ~40 ms of the event loop after every result)."""
        from MedSAMSlicerLogic.segments import count_segment_voxels

        return sum(count_segment_voxels(self.segmentation, sid) for sid in self._segment_ids())

    def _masks(self) -> dict:
        from MedSAMSlicerLogic.segments import read_segment

        if self.volume is None:
            return {}
        return {sid: read_segment(self.segmentation, sid, self.volume) for sid in self._segment_ids()}

    def _segment_ids(self) -> list[str]:
        return list(self.segmentation.GetSegmentation().GetSegmentIDs()) if self.segmentation is not None else []

    def _say(self, text: str, action: str = "") -> None:
        self.panel.data.status = text
        if action:
            self.panel.data.last_action = action
            self.panel.data.error = ""
            self.actions += 1

    def _fail(self, error: BaseException) -> None:
        from MedSAMSlicerLogic.messages import user_message

        self.panel.data.warning = ""
        self.panel.data.error = user_message(error)
        self.panel.data.status = ""
        self.actions += 1

    def _need_volume(self) -> None:
        if self.volume is None:
            raise ValueError("no volume: load one first")

    @contextlib.contextmanager
    def _reporting(self):
        """Around a reader's action: any failure is one line in the panel, never a traceback in the page (the
        traceback goes to the server's debug log, ``-v``)."""
        try:
            yield
        except Exception as error:
            log.debug("action failed", exc_info=True)
            self._fail(error)

    def _guard(self, action):
        """A button's (or a signal's) handler, wrapped in ``_reporting``."""
        def run(*args):
            with self._reporting():
                action(*args)
        return run

    def _show(self, **values) -> None:
        """Set state values by their field names (``PanelState`` or ``ControlsState``)."""
        for name, value in values.items():
            setattr(self.controls.data if name in self._control_names else self.panel.data, name, value)

    # -- server side of the page --------------------------------------------------------------------------------
    def _on_ready(self, **_) -> None:
        asyncio.get_event_loop().create_task(self._poll_loop())
        asyncio.get_event_loop().create_task(self._expiry_loop())

    def _on_bind(self, wslink_server) -> None:
        """trame's aiohttp server exists, nothing listens yet: put the login gate in front of every route, the state
        check in front of ``trame.state.update``, and the TLS context in."""
        self._wslink = wslink_server
        self.gate.install(wslink_server.app)
        self.state_gate.install(wslink_server)
        if self.ssl_context is not None:
            wslink_server.config["ssl"] = self.ssl_context

    async def _expiry_loop(self) -> None:
        """Close the websockets of sessions that expired (or logged out): a page open since then stops working."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            for client in self.gate.expired_clients():
                for handler in getattr(self._wslink, "_ws_handlers", []):
                    socket = handler.connections.get(client)
                    if socket is not None:
                        handler.authentified_client_ids.discard(client)
                        await socket.close()

    def _on_key(self, ctrl, alt, shift, code) -> None:
        from .keys import action_for
        from .review_panel import REVIEW_KEYS

        if not all(isinstance(flag, bool) for flag in (ctrl, alt, shift)) or not isinstance(code, str) \
                or len(code) > 32:
            return  # not a key event the page's listener sends
        action = action_for(ctrl, alt, shift, code)
        handlers = {"drawBox": lambda: self.draw_box(True), "addKeyBox": lambda: self.draw_box(False),
                    "segmentSlice": self.segment_slice, "propagate": self.propagate, "accept": self.accept,
                    "undo": self.undo, "cancel": self.cancel,
                    **{action: getattr(self.review, method) for action, method in REVIEW_KEYS.items()}}
        if action in handlers:
            self._guard(handlers[action])()

    def _register_triggers(self) -> None:
        self.ctrl.trigger("on_key")(self._on_key)
        self.ctrl.trigger("app_state")(self.app_state)
        self.ctrl.trigger("app_progress")(self.app_progress)
        self.ctrl.trigger("ijk_to_view")(self.ijk_to_view)
        self.ctrl.trigger("show_slice")(self._guard(self.show_slice))
        self.ctrl.trigger("review_slice")(self.review.slice_answer)  # read-only: what the reader sees on a slice
        self.controls.bind_changes({self.controls.name.window: self._apply_display_window,
                                    self.controls.name.pacs_study: self._pacs_study_chosen})

    def _pacs_study_chosen(self, study) -> None:
        if study and self.pacs is not None:
            self._guard(self.pacs_list_series)(study)

    def app_progress(self) -> dict:
        """What a script waiting for an action needs (busy, actions finished, the last one, the error), without
        ``app_state``'s copy and digest of every segment: a script polling that every 0.1 s during an action
        slowed the action it timed (the simulated reader)."""
        return dict(busy=self.logic.busy, actions=self.actions, last_action=self.panel.data.last_action,
                    error=self.panel.data.error, **self.review.app_state())

    def app_state(self) -> dict:
        """What a test (or a script) asks the server: boxes, segments, digests, the time log."""
        grid = self.logic.grid(self.volume) if self.volume is not None else None
        prompts = []
        if grid is not None:
            from MedSAMSlicerLogic.roi_prompts import prompts_from_rois

            try:
                prompts = [dict(axis=p.axis, index=p.index, box=[int(p.box.x0), int(p.box.y0), int(p.box.x1),
                                                                  int(p.box.y1)])
                           for p in prompts_from_rois(self.logic.boxes(), grid)]
            except Exception:  # a box being edited: no prompts this time
                log.debug("no prompts from the boxes", exc_info=True)
                prompts = []
        masks = self._masks()
        digest = hashlib.sha256()
        for sid, mask in sorted(masks.items()):
            digest.update(sid.encode())
            digest.update(np.packbits(mask).tobytes())
        return dict(busy=self.logic.busy, boxes=prompts, segments={k: int(v.sum()) for k, v in masks.items()},
                    digest=digest.hexdigest(), current_segment=self.logic.current.segment_id,
                    log_path=str(self.logic.time_log.path) if self.logic.time_log else self.panel.data.log_path,
                    status=self.panel.data.status, error=self.panel.data.error, last_action=self.panel.data.last_action,
                    actions=self.actions, surface_points=self.surface_points(), warning=self.panel.data.warning,
                    shape=list(grid.shape_kji) if grid is not None else None,
                    controls={f.name: getattr(self.controls.data, f.name) for f in dataclasses.fields(ControlsState)},
                    **self.review.app_state())

    def _slice_view(self, tag: str):
        return next(v for v in self.slicer_app.view_manager.get_slice_views() if v.get_singleton_tag() == tag)

    def _voxel(self, tag, ijk) -> np.ndarray:
        """A trigger's (view, voxel) checked: a slice view's name and three finite numbers within the volume."""
        self._need_volume()
        if tag not in VIEW_TAGS:
            raise ValueError(f"no slice view {str(tag)[:20]!r}")
        if not isinstance(ijk, (list, tuple)) or len(ijk) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ijk):
            raise ValueError("a voxel is three numbers")
        shape_ijk = self.logic.grid(self.volume).shape_kji[::-1]
        if not all(-1 <= v <= n for v, n in zip(ijk, shape_ijk)):
            raise ValueError("the voxel is outside the volume")
        return np.asarray(ijk, dtype=float)

    def show_slice(self, tag: str, ijk) -> None:
        """Scroll a slice view to the slice through voxel ``ijk`` (the slider in each view does the same)."""
        from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points

        ijk = self._voxel(tag, ijk)
        point = ijk_to_world_points(ijk_to_world(self.volume), ijk)[0]
        self._slice_view(tag).get_view_node().JumpSliceByOffsetting(*point)

    def ijk_to_view(self, tag: str, ijk) -> list:
        """Where voxel ``ijk`` is in a slice view's image, as fractions of its width and height from the top left."""
        from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points

        from .box_drag import world_to_xy

        ijk = self._voxel(tag, ijk)
        node = self._slice_view(tag).get_view_node()
        point = ijk_to_world_points(ijk_to_world(self.volume), ijk)[0]
        x, y = world_to_xy(node, point)
        width, height = node.GetDimensions()[:2]
        return [float(x / width), float(1.0 - y / height)]

    # -- page ---------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        """The page: the MedSAM panel in the drawer, the four views beside it; the panel's signals to the handlers."""
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        from .panel import MedSAMPanel
        from .review_panel import ReviewPanel

        with SinglePageWithDrawerLayout(self.server, full_height=True) as ui:
            ui.title.set_text("MedSAMSlicer")
            with ui.toolbar:
                v3.VSpacer()
                html.Span(f"{{{{ {self.panel.name.volume_name} }}}}", id="volume-name", classes="mr-4")
                if self.gate.sessions is not None:
                    html.A("Sign out", href="/medsam-logout", id="logout", classes="mr-4")
            with ui.drawer as drawer:
                drawer.width = 320
                self.ui = MedSAMPanel(self.controls, self.panel)
                self.review_ui = ReviewPanel(self.review_state, self.panel.name.busy,
                                             v_show=(f"{self.panel.name.arm} !== 'manual'",))
            with ui.content:
                with v3.VContainer(fluid=True, classes="fill-height pa-0"):
                    self.layout_manager.initialize_layout_grid(ui)
        handlers = {
            self.ui.box_clicked: lambda: self.draw_box(True), self.ui.key_box_clicked: lambda: self.draw_box(False),
            self.ui.segment_slice_clicked: self.segment_slice, self.ui.propagate_clicked: self.propagate,
            self.ui.cancel_clicked: self.cancel, self.ui.undo_clicked: self.undo, self.ui.accept_clicked: self.accept,
            self.ui.next_object_clicked: self.next_object, self.ui.tool_changed: self.set_tool,
            self.ui.fill_between_clicked: self.fill_between,
            self.ui.save_clicked: self.save, self.ui.log_clicked: self.toggle_time_log,
            self.ui.report_clicked: self.export_report, self.ui.case_clicked: self.open_case,
            self.ui.next_case_clicked: self.next_case, self.ui.finish_case_clicked: self.finish_case,
            self.ui.pacs_open_clicked: lambda: self.pacs_open(),
            self.review_ui.mode_clicked: self.review.toggle,
            self.review_ui.accept_slice_clicked: self.review.accept_slice,
            self.review_ui.wrong_slice_clicked: self.review.wrong_slice,
            self.review_ui.end_here_clicked: self.review.end_here,
            self.review_ui.next_doubtful_clicked: self.review.next_doubtful,
        }
        for signal, handler in handlers.items():
            signal.connect(self._guard(handler))

    def start(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        import sys

        from .box_drag import BoxDrag

        self._drag = BoxDrag(self.slicer_app.view_manager.get_slice_views(), self.slicer_app.scene, self._on_box)
        if self.study is not None:
            following = self.study.next_index(self.reader_id())
            if following is not None:
                self.open_case(following)
            else:
                self._show_cases()
                self._say("study done: every case of the plan is finished")
        elif self.images:
            self.case_index = 0
            self.load(self.images[0])
            self._show_cases()
        if self.pacs is not None:
            self.pacs_list_studies()  # a PACS that is down or refuses us: one line from the CLI, before serving
        # trame parses sys.argv itself (--host, --ssl, --authKey...): only what is given here counts.  timeout=0:
        # a ward's app does not stop when its last page closes.
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            self.server.start(host=host, port=port, open_browser=False, timeout=0)
        finally:
            sys.argv = argv


def outwards(center: int, radius: int, count: int) -> list[int]:
    """``center`` and the slices up to ``radius`` away on each side, nearest first, alternating (both directions of
    a propagation from a box on ``center``), within 0 .. count-1."""
    order = [center]
    for step in range(1, radius + 1):
        order += [i for i in (center + step, center - step) if 0 <= i < count]
    return [i for i in order if 0 <= i < count]


def _wait_for_job(job) -> bool:
    """In a worker thread: return when the engine's job ends or reports progress (or after ``JOB_WAIT_SECONDS``);
    True when it ended.  A second handle on the same job, so that the logic's own handle is only touched on the
    event loop."""
    from MedSAMSlicerLib.client import RemoteJob

    try:
        return RemoteJob(None, job.job_id, client=job.client).poll(timeout=JOB_WAIT_SECONDS).finished
    except Exception:  # the logic's next step meets the same failure and reports it
        log.debug("waiting on the job failed", exc_info=True)
        return True


def _lps_reference(grid):
    """The volume on its file's grid: ``volume_from_node`` keeps Slicer's RAS world geometry (the engine only uses
    the spacing), while the label writers, like every medical file format, want LPS."""
    from dataclasses import replace

    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    matrix = ras_to_lps @ grid.ijk_to_world[:3, :]
    spacing = np.linalg.norm(matrix[:, :3], axis=0)
    direction = matrix[:, :3] / spacing
    return replace(grid.volume, origin=tuple(float(v) for v in matrix[:, 3]),
                   direction=tuple(float(v) for v in direction.ravel()))


def _marker(view) -> None:
    """A hidden element in each view's box, so that a test (or a script) can find that view's image."""
    from trame.widgets import html

    html.Span(id=f"view-{view.get_singleton_tag()}", style="display: none")


def _marked_slice_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    create_vertical_slice_view_gutter_ui(server, view_id, view)
    _marker(view)


def _marked_threed_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    create_vertical_view_gutter_ui(server, view_id, view)
    _marker(view)
