"""The page's state as typed dataclasses, as trame-slicer's own apps keep theirs (``trame_server``'s ``TypedState``).

Two dataclasses, because trame's state is writable by the client: ``ControlsState`` holds what the page may set
(each field carries its check in its metadata, which ``security.StateGate`` runs before trame applies a value), and
``PanelState`` what only the server sets (shown in the page; the gate refuses it from a page).  A state value's name
in the page is ``TypedState``'s: ``ControlsState__window``, ``PanelState__busy``...
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from MedSAMSlicerLogic.choices import (DEFAULT_RANGE_MODE, DEFAULT_WINDOW, RANGE_MODE_NAMES, VIEWS,
                                       WINDOW_NAMES)

from .security import boolean, dicom_uid, one_of, text

CHECK = "check"  # a ControlsState field's metadata key: the check of the value a page sends

# The windows, range modes and views are the shared choices table's (MedSAMSlicerLogic.choices), as the Slicer
# panel's and the effect's: a window added to the engine appears here with the same name and display W/L.
SAVE_FORMATS = (".seg.nrrd", ".nii.gz")
TOOLS = ("none", "paint", "erase", "draw", "scissors")
VIEW_TAGS = VIEWS


def _checked(default: Any, check: Callable) -> Any:
    return field(default=default, metadata={CHECK: check})


@dataclass
class ControlsState:
    """What the page sets: the reader's choices.  Every field is checked server-side before use."""

    window: str = _checked(DEFAULT_WINDOW, one_of(*WINDOW_NAMES))
    range_mode: str = _checked(DEFAULT_RANGE_MODE, one_of(*RANGE_MODE_NAMES))
    stop_rule: bool = _checked(True, boolean)
    largest_component: bool = _checked(False, boolean)
    fill_holes: bool = _checked(False, boolean)
    tool: str = _checked("none", one_of(*TOOLS))
    save_name: str = _checked("", text(150))
    save_overwrite: bool = _checked(False, boolean)
    pacs_study: Optional[str] = _checked(None, dicom_uid)
    pacs_series: Optional[str] = _checked(None, dicom_uid)


@dataclass
class PanelState:
    """What the server shows: never set by a page (``security.StateGate`` refuses it)."""

    status: str = ""
    error: str = ""
    warning: str = ""
    last_action: str = ""
    busy: bool = False
    progress_title: str = ""
    progress_done: int = 0
    progress_total: int = 0
    windows: list = field(default_factory=lambda: list(WINDOW_NAMES))
    drawing: bool = False
    boxes: int = 0
    can_undo: bool = False
    voxels: int = 0
    log_running: bool = False
    active_time: str = "0:00"
    log_path: str = ""
    log_folder: str = ""
    reader: str = ""
    save_formats: list = field(default_factory=lambda: list(SAVE_FORMATS))
    out_folder: str = ""
    volume_name: str = ""
    cases: list = field(default_factory=list)
    case_index: int = -1
    study: bool = False
    arm: str = ""
    pacs: bool = False
    pacs_studies: list = field(default_factory=list)
    pacs_series_items: list = field(default_factory=list)


def client_checks(controls) -> dict[str, Callable]:
    """``{state name: check}`` for a ``TypedState[ControlsState]``: what ``security.StateGate`` runs."""
    return {getattr(controls.name, f.name): f.metadata[CHECK] for f in fields(ControlsState)}


def state_names(typed) -> set[str]:
    """Every state name of a typed state (for ``StateGate.server_only``)."""
    return {getattr(typed.name, f.name) for f in fields(typed.get_dataclass())}
