"""Volume intensities to the 8-bit range MedSAM was trained on, exactly as the official ``pre_CT_MR.py``.

- CT: clip to the window [L - W/2, L + W/2], then min-max the clipped volume to [0, 255].
- MR and other modalities: clip to the 0.5 and 99.5 percentiles of the strictly positive voxels, min-max to
  [0, 255], and voxels that were 0 stay 0.
- The result is truncated to uint8 (``np.uint8`` of the float volume), as the official script does.

Statistics are taken over the whole volume, not per slice, so every slice of a volume sees the same mapping.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..errors import InputImageError, OptionError
from ..protocol.windows import CT_WINDOWS

log = logging.getLogger(__name__)

# CT_WINDOWS, (level, width) in HU by name: in the protocol room, so front ends offer the same names without torch.
MR_PERCENTILES = (0.5, 99.5)
_LEVEL_WIDTH = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Window:
    """How intensities are mapped; ``key`` identifies it in embedding-cache keys."""

    kind: str  # "ct", "mr" or "none" (already 0..255)
    level: float | None = None
    width: float | None = None
    label: str = ""

    @property
    def key(self) -> str:
        if self.kind == "ct":
            return f"ct:{self.level:g},{self.width:g}"
        return self.kind

    def describe(self) -> str:
        if self.kind == "ct":
            name = f"{self.label} " if self.label else ""
            return f"CT {name}window L={self.level:g} W={self.width:g}"
        if self.kind == "mr":
            return "MR rule (0.5-99.5 percentile of non-zero voxels)"
        return "none (image already in 0..255)"


def parse_window(text: str) -> Window | str:
    """Parse ``--window``: a preset name, ``L,W``, ``mr``, ``none`` or ``auto`` (returned as the string "auto")."""
    value = (text or "auto").strip().lower().replace("-", "_")
    if value == "auto":
        return "auto"
    if value in CT_WINDOWS:
        level, width = CT_WINDOWS[value]
        return Window("ct", level, width, value)
    if value in ("mr", "mri", "percentile"):
        return Window("mr")
    if value == "none":
        return Window("none")
    match = _LEVEL_WIDTH.match(text)
    if match:
        level, width = float(match.group(1)), float(match.group(2))
        if width <= 0:
            raise OptionError(f"window width must be positive, got {width:g}")
        return Window("ct", level, width, "custom")
    raise OptionError(
        f"--window {text!r} not understood; use auto, mr, none, L,W (e.g. 40,400) or one of: {', '.join(CT_WINDOWS)}")


def choose_window(array: np.ndarray, requested: str | Window = "auto", modality: str | None = None,
                  already_normalized: bool = False) -> tuple[Window, str]:
    """Resolve ``auto`` and say why: (window, reason)."""
    window = parse_window(requested) if isinstance(requested, str) else requested
    if isinstance(window, Window):
        return window, "requested"
    if already_normalized:
        return Window("none"), "image stored already windowed to 0..255 (MedSAM npz layout)"
    if modality:
        upper = modality.upper()
        if upper == "CT":
            return Window("ct", *CT_WINDOWS["soft_tissue"], "soft_tissue"), "modality CT in the file"
        if upper in ("MR", "MRI"):
            return Window("mr"), "modality MR in the file"
    low = float(np.min(array))
    if low <= -500:
        return (Window("ct", *CT_WINDOWS["soft_tissue"], "soft_tissue"),
                f"minimum intensity {low:g} looks like air in Hounsfield units: CT")
    return Window("mr"), f"minimum intensity {low:g} is not Hounsfield air: treated as MR/other"


def normalize_volume(array: np.ndarray, window: Window) -> np.ndarray:
    """Return a new uint8 volume; ``array`` is never modified."""
    data = np.asarray(array)
    if window.kind == "none":
        if data.dtype == np.uint8:
            return data.copy()
        if data.min() < 0 or data.max() > 255:
            raise InputImageError("--window none needs an image already in 0..255; pick a CT window or mr")
        return data.astype(np.uint8)
    if window.kind == "ct":
        assert window.level is not None and window.width is not None, "a CT window has a level and a width"
        lower = window.level - window.width / 2
        upper = window.level + window.width / 2
        clipped = np.clip(data.astype(np.float64), lower, upper)
    elif window.kind == "mr":
        positive = data[data > 0]
        if positive.size == 0:
            raise InputImageError("the MR rule needs positive voxels, but the image has none; choose a CT window")
        lower, upper = np.percentile(positive, MR_PERCENTILES)
        clipped = np.clip(data.astype(np.float64), lower, upper)
    else:
        raise OptionError(f"unknown window kind {window.kind!r}")
    span = clipped.max() - clipped.min()
    if span <= 0:
        raise InputImageError(f"the image has no contrast after {window.describe()}; choose another window")
    scaled = (clipped - clipped.min()) / span * 255.0
    if window.kind == "mr":
        scaled[data == 0] = 0
    return cast(np.ndarray, np.uint8(scaled))  # np.uint8 of an array is the array cast to uint8
