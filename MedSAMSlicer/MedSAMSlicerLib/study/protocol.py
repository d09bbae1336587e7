"""The simulated study's assumptions: seconds per reader action and the protocol replayed (see :mod:`.simulation`).

Kept apart from the simulation (which needs the model, skimage and the evaluation code) so that the command line
can list the names and choices when it builds its parser without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..errors import OptionError


@dataclass(frozen=True)
class ActionTimes:
    """Seconds per reader action.  Change any of them with ``medsam-slicer study simulate --time NAME=SECONDS``.

    - ``boundary_click_s`` = 1.75: one precise click on an object's boundary.  Source: Papadopoulos, Uijlings,
      Keller, Ferrari, "Extreme clicking for efficient object annotation", ICCV 2017: clicking the four extreme
      (boundary) points of an object took 7 s per object on PASCAL VOC, finding the points included: 7 / 4 clicks.
      The 4 end points of a long and a short axis are the same kind of action, so drawing both axes on a key slice
      costs 4 clicks = 7 s, the paper's figure for one box.  For comparison, a conventional high-quality box took
      35 s (Su et al. 2012, quoted there) and a COCO polygon mask about 80 s (Papadopoulos, Weber, Torralba,
      "Scaling up instance annotation via label propagation", ICCV 2021).  These are natural images drawn by crowd
      workers, not tumours drawn by radiologists: an assumption that the click rate transfers.
    - ``stroke_s`` = 2.0: starting and closing one stroke (pick the tool or segment, start, finish).  Assumption.
    - ``slice_navigation_s`` = 1.0: scroll to the next slice and take it in.  Assumption.
    - ``review_slice_s`` = 3.0: judge whether the model's contour on one slice is acceptable.  Assumption.
    - ``model_slice_s`` = 3.5: the model's computing time per slice it segments, which the reader waits for.
      Measured: ``bench/study_simulation.py --measure`` times one propagation with an empty embedding cache
      (image encoder with ONNX Runtime + mask decoder) on the shared 2-core CPU of the development machine:
      3.74 and 3.41 s per slice in two runs (the encoder alone: median 2.2 s).  A GPU takes a small fraction of
      that, so this is the slow end; the bench also reports the saving with this set to 0.
    """

    boundary_click_s: float = 1.75
    stroke_s: float = 2.0
    slice_navigation_s: float = 1.0
    review_slice_s: float = 3.0
    model_slice_s: float = 3.5

    def drawing_seconds(self, drawing) -> float:  # a simulation.Drawing (strokes, points)
        return drawing.strokes * self.stroke_s + drawing.points * self.boundary_click_s

    def with_overrides(self, overrides: dict[str, float]) -> "ActionTimes":
        unknown = sorted(set(overrides) - set(asdict(self)))
        if unknown:
            raise OptionError(f"unknown action time {', '.join(unknown)}; known: {', '.join(asdict(self))}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in overrides.values()):
            raise OptionError("action times must be finite numbers of zero or more seconds")
        return replace(self, **overrides)


CORRECTIONS = ("best", "edit", "redraw")


@dataclass(frozen=True)
class Protocol:
    key_every: int = 5  # a key slice (two axes -> box) every N labelled slices; the paper used 3-10
    dice_threshold: float = 0.9  # per-slice Dice below this: the reader corrects the slice (assumption)
    contour_tolerance_mm: float = 1.0  # a drawn polygon stays this close to the boundary (assumption)
    # edit: redraw only the wrong stretches of boundary; redraw: the whole slice again; best: per slice, the cheaper
    correction: str = "best"
    range_mode: str = "label"  # label: propagate over the label's extent; stop: whole volume, stop rule decides
    rule: str = "ours"

    def check(self) -> "Protocol":
        if not 1 <= self.key_every <= 1000:
            raise OptionError(f"key slices every {self.key_every} slices: give a whole number of 1 or more")
        if not 0.0 < self.dice_threshold <= 1.0:  # also refuses NaN
            raise OptionError(f"Dice threshold {self.dice_threshold} must be in (0, 1]")
        if not (math.isfinite(self.contour_tolerance_mm) and self.contour_tolerance_mm > 0):
            raise OptionError(f"contour tolerance {self.contour_tolerance_mm} mm must be positive")
        if self.correction not in CORRECTIONS:
            raise OptionError(f"correction {self.correction!r}: use {', '.join(CORRECTIONS)}")
        if self.range_mode not in ("label", "stop"):
            raise OptionError(f"range mode {self.range_mode!r}: use label or stop")
        return self
