"""The intensity windows the engine knows by name: one table for the engine and every front end.

The engine maps a CT volume to 0..255 through a (level, width) window in HU (``engine.intensity``); the front ends
offer the same names and show the same window on screen.  The table lives here, in the protocol room, because the
Slicer logic and the front ends must not import the engine (it stands on torch).
"""

from __future__ import annotations

# (level, width) in HU.  Soft tissue is the official default; the lung window is the one the MedSAM paper used.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-160.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}
# Names that are rules, not CT windows: "auto" (the engine decides from the modality), "mr" (MR percentile rule),
# "none" (the image is already 0..255).
AUTO, MR, NONE = "auto", "mr", "none"
WINDOW_NAMES: tuple[str, ...] = (AUTO, *CT_WINDOWS, MR, NONE)

__all__ = ["AUTO", "CT_WINDOWS", "MR", "NONE", "WINDOW_NAMES"]
