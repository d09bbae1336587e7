"""Study mode's rules, for any front end (the browser app now, the Slicer panel later): which case of the plan a
reader reads next, in which arm, and what each arm may do.

The plan is the case list of ``medsam-slicer study plan`` (:func:`.report.plan_cases`): one row per case and arm,
first reads of every case before the second reads (the wash-out).  A reader works through the rows in that order;
a row is done when its log (``<case>.<reader>.<mode>.jsonl`` in the study's log folder) holds an ``accept``.  The
manual arm is the baseline: the model's actions are refused there (:func:`check_action`), not only hidden.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import MedSAMError, OptionError
from .report import StudyCase, read_case_list
from .timelog import case_pseudonym, load_log, log_path

# What the model does for the reader: refused in the manual arm.
ASSISTED_ONLY = frozenset({"draw_box", "key_box", "segment_slice", "propagate"})
# The Segment Editor tools of both arms (the manual arm draws the whole object with them).
MANUAL_TOOLS = ("paint", "erase", "draw", "scissors")


class ArmRefused(MedSAMError):
    """An action that the case's arm does not allow (a MedSAM action in the manual arm)."""


def check_action(mode: str, action: str) -> None:
    """Raise :class:`ArmRefused` when ``action`` is not part of ``mode``'s arm."""
    if mode == "manual" and action in ASSISTED_ONLY:
        raise ArmRefused(f"{action.replace('_', ' ')} is not part of the manual arm of this study")


@dataclass(frozen=True)
class StudyMode:
    """A study plan as one reader works through it."""

    cases: tuple[StudyCase, ...]
    log_folder: Path

    @classmethod
    def load(cls, plan: str | os.PathLike, log_folder: str | os.PathLike) -> "StudyMode":
        """Read the plan; every image must be here and its case id must be the one this log folder's pseudonym
        key gives it (so the logs land under the plan's case ids, never under a second name)."""
        plan, folder = Path(plan), Path(log_folder).expanduser()
        cases = read_case_list(plan)
        if not os.path.isfile(folder / ".pseudonym-key"):
            raise OptionError(f"{folder} has no pseudonym key: give the --logs folder the plan was made with")
        found = []
        for case in cases:
            image = Path(case.image).expanduser()
            if not image.is_absolute() and not image.is_file():
                image = plan.parent / image
            if not case.image or not image.is_file():
                raise OptionError(f"plan {plan.name}: the scan of case {case.case_id} ({case.image!r}) is not here")
            if case_pseudonym(folder, os.path.abspath(case.image if os.path.isfile(case.image) else image)) \
                    != case.case_id:
                raise OptionError(f"plan {plan.name}: case {case.case_id} does not match its scan under this log "
                                  f"folder's key; give the --logs folder the plan was made with")
            found.append(StudyCase(case.case_id, case.mode, str(image), case.reference))
        return cls(tuple(found), folder)

    def log_of(self, index: int, reader: str) -> Path:
        case = self.cases[index]
        return log_path(self.log_folder, case.case_id, reader, case.mode)

    def status(self, index: int, reader: str) -> str:
        """"done" (accepted), "in progress" (a log without an accept) or "not started"."""
        path = self.log_of(index, reader)
        if not path.exists():
            return "not started"
        return "done" if any(e.get("kind") == "accept" for e in load_log(path).events) else "in progress"

    def next_index(self, reader: str) -> Optional[int]:
        """The first row of the plan this reader has not finished (the plan's order is the protocol's)."""
        return next((n for n in range(len(self.cases)) if self.status(n, reader) != "done"), None)
