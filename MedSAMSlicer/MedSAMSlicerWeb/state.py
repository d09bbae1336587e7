"""The page's state as typed dataclasses, as trame-slicer's own apps keep theirs (``trame_server``'s ``TypedState``).

Two dataclasses, because trame's state is writable by the client: ``ControlsState`` holds what the page may set
(each field carries its check in its metadata, which ``security.StateGate`` runs before trame applies a value), and
``PanelState`` what only the server sets (shown in the page; the gate refuses it from a page).  A state value's name
in the page is ``TypedState``'s: ``ControlsState__window``, ``PanelState__busy``...
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from .security import boolean, dicom_uid, one_of, text

CHECK = "check"  # a ControlsState field's metadata key: the check of the value a page sends

# engine window -> display (window, level); "auto": the engine decides, the display uses its auto W/L
WINDOWS: dict[str, Optional[tuple[float, float]]] = {
    "auto": None, "lung": (1500.0, -160.0), "soft_tissue": (400.0, 40.0), "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0), "mr": None,
}
RANGE_MODES = {"auto": "box thickness, else stop rule", "roi": "what the boxes cover", "stop": "whole volume"}
SAVE_FORMATS = (".seg.nrrd", ".nii.gz")
TOOLS = ("none", "paint", "erase", "draw", "scissors")
VIEW_TAGS = ("Red", "Yellow", "Green")


def _checked(default: Any, check: Callable) -> Any:
    return field(default=default, metadata={CHECK: check})


@dataclass
class ControlsState:
    """What the page sets: the reader's choices.  Every field is checked server-side before use."""

    window: str = _checked("auto", one_of(*WINDOWS))
    range_mode: str = _checked("auto", one_of(*RANGE_MODES))
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
    windows: list = field(default_factory=lambda: list(WINDOWS))
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
