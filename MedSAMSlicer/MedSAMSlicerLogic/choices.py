"""The choices every front end offers (windows, propagation range modes, slice views), in one table.

The Slicer panel, the Segment Editor effect and the browser app fill their menus from here, so a window added to the
engine (``MedSAMSlicerLib.protocol.windows``, the table the engine itself uses) appears everywhere with the same
name and the same display window.  Plain data: no slicer, no qt, no engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from MedSAMSlicerLib.protocol.windows import AUTO, CT_WINDOWS, MR, NONE


@dataclass(frozen=True)
class WindowChoice:
    """An engine intensity window by name, and how a viewer shows it: ``display`` = (window width, level) in HU, as
    Slicer's and VTK's W/L take them; None where the display keeps its own automatic W/L (the engine decides, an
    MR or an already 0..255 image)."""

    name: str
    title: str
    display: Optional[tuple[float, float]]


@dataclass(frozen=True)
class RangeChoice:
    """A propagation range mode (``roi_prompts.propagation_range``), with a long and a short title."""

    mode: str
    title: str
    short: str


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


WINDOWS: tuple[WindowChoice, ...] = (
    WindowChoice(AUTO, "Auto (from the modality)", None),
    *(WindowChoice(name, f"{_title(name)} (L {level:g}, W {width:g})", (width, level))
      for name, (level, width) in CT_WINDOWS.items()),
    WindowChoice(MR, "MR (percentiles)", None),
    WindowChoice(NONE, "None (already 0..255)", None),
)
WINDOW_NAMES: tuple[str, ...] = tuple(w.name for w in WINDOWS)
DEFAULT_WINDOW = AUTO

RANGE_MODES: tuple[RangeChoice, ...] = (
    RangeChoice("auto", "From box thickness, else stop rule", "box thickness, else stop rule"),
    RangeChoice("roi", "From box thickness", "what the boxes cover"),
    RangeChoice("stop", "Stop rule (whole volume)", "whole volume"),
)
RANGE_MODE_NAMES: tuple[str, ...] = tuple(r.mode for r in RANGE_MODES)
DEFAULT_RANGE_MODE = "auto"

VIEWS: tuple[str, ...] = ("Red", "Green", "Yellow")  # Slicer's slice views: axial, coronal, sagittal
DEFAULT_VIEW = VIEWS[0]


def window_choice(name: str) -> WindowChoice:
    """The choice called ``name``; a ValueError names the known ones."""
    for choice in WINDOWS:
        if choice.name == name:
            return choice
    raise ValueError(f"unknown window {name!r}; use one of: {', '.join(WINDOW_NAMES)}")


_LEVEL_WIDTH = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")  # the engine's "L,W" window


def display_window_level(name: str) -> Optional[tuple[float, float]]:
    """(window width, level) to show the engine window ``name`` with (a named window, or a typed "L,W" as the
    engine takes it); None: the display keeps its automatic W/L (auto, mr, none, or text the engine will refuse)."""
    for choice in WINDOWS:
        if choice.name == name:
            return choice.display
    match = _LEVEL_WIDTH.match(name or "")
    if match is None or float(match.group(2)) <= 0:
        return None
    return float(match.group(2)), float(match.group(1))


__all__ = ["DEFAULT_RANGE_MODE", "DEFAULT_VIEW", "DEFAULT_WINDOW", "RANGE_MODES", "RANGE_MODE_NAMES", "RangeChoice",
           "VIEWS", "WINDOWS", "WINDOW_NAMES", "WindowChoice", "display_window_level", "window_choice"]
