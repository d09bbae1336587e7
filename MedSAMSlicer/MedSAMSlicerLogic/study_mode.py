"""Study mode on MRML, for every front end (the Slicer panel and the browser app): one reader works through a plan.

The plan is ``medsam-slicer study plan``'s case list; its rules (the order of the rows, the arms, what the manual
arm refuses, when a row is done) are :mod:`MedSAMSlicerLib.study.arms`'.  This module applies them to the scene
through :class:`.box_segmentation.BoxSegmentationLogic`:

- :meth:`StudySession.open` opens the plan's next row on a volume the front end loaded (loading a file is the front
  end's: Slicer's ``loadVolume``, trame-slicer's IO manager), starts the case's time log under the plan's case id and
  arm, and, in the manual arm, gives the reader an empty segment whose edits the time log records;
- :meth:`StudySession.check` refuses a MedSAM action in the manual arm (the front ends also hide the controls:
  :attr:`StudySession.model_allowed`);
- :meth:`StudySession.finish` accepts the case's object, stops its time log and says which row comes next;
- :meth:`StudySession.report` builds the study report from the logs (``study_report.csv`` / ``.md``).

No Qt, no engine: the front ends show what this says (arm, rows and their status) and call it from their buttons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from MedSAMSlicerLib.errors import MedSAMError

from .box_segmentation import BoxSegmentationLogic, ObjectState
from .edit_watch import ManualEditWatcher

if TYPE_CHECKING:  # the study room's report pulls in scipy (its Dice): imported when a study is opened, not before
    from MedSAMSlicerLib.study.arms import StudyMode
    from MedSAMSlicerLib.study.report import StudyCase

MANUAL, ASSISTED = "manual", "assisted"
MANUAL_SEGMENT_NAME = "manual"


class StudyOrder(MedSAMError):
    """A row opened out of the plan's order, a finish with no case open, or a study already done."""


@dataclass(frozen=True)
class CaseRow:
    """One row of the plan as a worklist shows it."""

    index: int
    case_id: str
    mode: str
    name: str  # the scan's file name (the case id is the pseudonym the logs use)
    status: str  # "not started", "in progress" or "done"


class StudySession:
    """A reader's way through a study plan on ``logic`` (its scene and its time log)."""

    def __init__(self, logic: BoxSegmentationLogic, study: StudyMode, reader: str) -> None:
        self.logic = logic
        self.study = study
        self.reader = reader or "anonymous"
        self.index: Optional[int] = None  # the open row

    @classmethod
    def load(cls, logic: BoxSegmentationLogic, plan: str | os.PathLike, log_folder: str | os.PathLike,
             reader: str) -> "StudySession":
        """Read the plan (checked against the log folder's pseudonym key and the scans, see ``StudyMode.load``)."""
        from MedSAMSlicerLib.study.arms import StudyMode

        return cls(logic, StudyMode.load(plan, log_folder), reader)

    # -- what the front end shows -----------------------------------------------------------------------------------
    @property
    def cases(self) -> tuple[StudyCase, ...]:
        return self.study.cases

    @property
    def case(self) -> Optional[StudyCase]:
        """The open row's case (None between cases)."""
        return None if self.index is None else self.study.cases[self.index]

    @property
    def arm(self) -> str:
        """The open case's arm ("manual" or "assisted"; "" when no case is open)."""
        case = self.case
        return case.mode if case is not None else ""

    @property
    def model_allowed(self) -> bool:
        """May the reader use MedSAM now? (not in the manual arm; the front ends hide and disable its controls)"""
        return self.arm != MANUAL

    @property
    def manual_tools(self) -> tuple[str, ...]:
        """The Segment Editor tools of both arms (the manual arm draws the whole object with them)."""
        from MedSAMSlicerLib.study.arms import MANUAL_TOOLS

        return MANUAL_TOOLS

    def check(self, action: str) -> None:
        """Raise ``ArmRefused`` when ``action`` (draw_box, key_box, segment_slice, propagate) is not in the arm."""
        from MedSAMSlicerLib.study.arms import check_action

        check_action(self.arm, action)

    def status(self, index: int) -> str:
        """"done" when the row's log holds an accept, "in progress" when it has a log or is open, else "not
        started"."""
        status = self.study.status(index, self.reader)
        return "in progress" if status == "not started" and index == self.index else status

    def rows(self) -> list[CaseRow]:
        return [CaseRow(n, c.case_id, c.mode, Path(c.image).name, self.status(n)) for n, c in enumerate(self.cases)]

    def next_index(self) -> Optional[int]:
        """The first row this reader has not finished (None: the study is done)."""
        return self.study.next_index(self.reader)

    def image(self, index: int) -> str:
        """The scan of row ``index``, for the front end to load before :meth:`open`."""
        return self.study.cases[index].image

    # -- what the buttons do ------------------------------------------------------------------------------------------
    def open(self, index: int, volume_node, segmentation_node=None) -> StudyCase:
        """Open row ``index`` (only the plan's next row: the plan's order is the protocol) on ``volume_node``: the
        previous time log closes, this case's starts under the plan's case id and arm.  In the manual arm the reader
        gets an empty segment (in ``segmentation_node``, else in a new segmentation) whose edits are logged."""
        self.check_order(index)
        if self.logic.busy:
            raise StudyOrder("wait for the running operation (or cancel it) first")
        case = self.study.cases[index]
        self.logic.close_case()
        self.logic.remove_boxes()
        self.logic.current = ObjectState(segmentation_id=segmentation_node.GetID() if segmentation_node else "")
        self.logic.open_case(volume_node, str(self.study.log_folder), self.reader, case.mode, case.case_id)
        self.index = index
        if case.mode == MANUAL:
            self.manual_segment(volume_node, segmentation_node)
        return case

    def check_order(self, index: int) -> None:
        """Refuse any row but the reader's next one (before the front end loads its scan)."""
        expected = self.next_index()
        if index != expected:
            raise StudyOrder("the study is done" if expected is None
                             else f"the study's order: case {expected + 1} comes next")

    def manual_segment(self, volume_node, segmentation_node=None) -> tuple:
        """The manual arm's empty segment (made the current object's, watched for the time log): (node, id)."""
        if segmentation_node is None:
            from .segments import prepare_segmentation

            segmentation_node = self.logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                  f"{volume_node.GetName()} manual")
            prepare_segmentation(segmentation_node, volume_node, self.logic.grid(volume_node))
        segment_id = segmentation_node.GetSegmentation().AddEmptySegment(MANUAL_SEGMENT_NAME)
        self.logic.current = ObjectState(segmentation_id=segmentation_node.GetID(), segment_id=segment_id)
        self.logic.stop_watching()
        self.logic.edit_watcher = ManualEditWatcher(segmentation_node, segment_id, volume_node, 0)
        return segmentation_node, segment_id

    def finish(self, volume_node) -> Optional[int]:
        """The reader is done with the open case: its object is accepted (the time log records the final mask), the
        time log stops.  Returns the next row to open (None: the study is done)."""
        if self.index is None or self.logic.time_log is None:
            raise StudyOrder("no study case is open")
        if self.logic.busy:
            raise StudyOrder("wait for the running operation (or cancel it) first")
        self.logic.collect_manual_edits()
        self.logic.accept(volume_node)
        self.logic.close_case()
        self.index = None
        return self.next_index()

    def close(self) -> None:
        """Leave study mode (the open case's log stops without an accept: the row stays "in progress")."""
        self.logic.close_case()
        self.index = None

    def report(self) -> str:
        """The study report of every log in the study's folder (all readers); returns the markdown's path."""
        from .study_report import export_report

        return export_report(self.study.log_folder, self.study.cases)


__all__ = ["ASSISTED", "MANUAL", "CaseRow", "StudyOrder", "StudySession"]
