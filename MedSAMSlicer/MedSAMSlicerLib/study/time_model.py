"""A time model a reviewer can check line by line: the interactive protocol's actions priced with published constants.

The assisted arm is what ``eval --protocol interactive`` did on the case (the first box, the range's two ends when
given, each corrective box or range cut, the system's measured seconds), followed by a review of every slice the
object or the label covers and an edit of each slice still below the acceptance threshold.  The manual arm draws
the label's contour on every labelled slice.  Each human action is a Keystroke-Level Model operator (Card, Moran,
Newell 1980); editing a slice is priced against drawing it with a published clinical ratio (Lucido 2023 or Dreizin
2023); the acceptance threshold comes from published inter-rater agreement (Menze 2015).  System seconds are the
tool's own, measured in the run.  Every constant is in :data:`CONSTANTS` with its source, and the report prints the
saving with each constant at half and double its value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from skimage import measure

from ..protocol import axes
from ..evaluation.evaluate import labelled_slices
from ..evaluation.metrics import dice

SOURCES = {
    "klm": "Card, Moran, Newell (1980), 'The keystroke-level model for user performance time with interactive "
           "systems', Communications of the ACM 23(7):396-410: P (point with a mouse) 1.1 s, B (press or release "
           "a button) 0.1 s (a click BB 0.2 s), M (mental preparation) 1.35 s, H (home hand) 0.4 s, K (keystroke, "
           "average skilled typist) 0.2 s, D (draw n straight segments of total length l cm) 0.9 n + 0.16 l s",
    "lucido": "Lucido et al. (2023), head-and-neck organs at risk: 2.3 h to contour manually vs 0.7 h to revise "
              "deep-learning contours (ratio 0.30); figures as quoted in issue 18",
    "dreizin": "Dreizin et al. (2023): editing model contours 8.7x faster than drawing them (ratio 0.115); figure as "
               "quoted in issue 18",
    "menze": "Menze et al. (2015), 'The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)', IEEE TMI "
             "34(10):1993-2024: inter-rater Dice 0.74-0.85 for tumour regions; threshold 0.80, mid-range",
    "medsam": "Ma et al. (2024), 'Segment anything in medical images', Nat Commun 15:654: 82.37 % and 82.95 % less "
              "time for 3D tumours (the anchor, not an input)",
    "measured": "measured by the tool in this run (eval --protocol interactive): encoder and decoder seconds per call",
    "assumption": "assumption of this model (no published figure found): listed in the sensitivity table",
}


@dataclass(frozen=True)
class Constants:
    point_s: float = 1.1  # klm P
    button_s: float = 0.1  # klm B (press or release)
    mental_s: float = 1.35  # klm M
    key_s: float = 0.2  # klm K: one scroll step / key press to the next slice
    segment_s: float = 0.9  # klm D, per straight segment
    cm_s: float = 0.16  # klm D, per cm of drawn length
    edit_ratio: float = 0.7 / 2.3  # lucido: editing a slice costs this fraction of drawing it
    accept_dice: float = 0.80  # menze: a slice this close to the reference is accepted as is
    screen_cm_per_mm: float = 0.1  # assumption: life size (a 35 cm CT field on a 35 cm wide view)
    contour_tolerance_mm: float = 1.0  # assumption: a hand polygon stays within 1 mm of the boundary
    overlap: float = 1.0  # tool behaviour: prefetch encodes the drawn box's slices while the reader works
    encode_s: float = 0.273  # measured: README "Measured speed", OpenVINO exact encoder per 512^2 slice, quiet EPYC
    decode_s: float = 0.0287  # measured: README "Measured speed", re-prompt of a cached slice (decoder + mask)

    def box_s(self) -> float:
        """Draw a box: M, point to a corner, press, drag to the other corner, release."""
        return self.mental_s + 2 * self.point_s + 2 * self.button_s

    def review_s(self) -> float:
        """Go to the next slice and judge its contour: K + M."""
        return self.key_s + self.mental_s

    def click_s(self) -> float:
        """A decided click (end the object here, erase an island): M + P + BB."""
        return self.mental_s + self.point_s + 2 * self.button_s


CONSTANT_SOURCES = {"point_s": "klm", "button_s": "klm", "mental_s": "klm", "key_s": "klm", "segment_s": "klm",
                    "cm_s": "klm", "edit_ratio": "lucido", "accept_dice": "menze",
                    "screen_cm_per_mm": "assumption", "contour_tolerance_mm": "assumption", "overlap": "assumption",
                    "encode_s": "measured", "decode_s": "measured"}


def contour_segments(plane: np.ndarray, spacing_rc: tuple[float, float], tolerance_mm: float) -> tuple[int, float]:
    """(straight segments, length in mm) of the polygon that draws ``plane`` within ``tolerance_mm``."""
    segments, length = 0, 0.0
    padded = np.pad(plane.astype(np.float32), 1)
    for ring in measure.find_contours(padded, 0.5):
        ring = (ring - 1.0) * np.asarray(spacing_rc)
        polygon = measure.approximate_polygon(ring, tolerance_mm)
        segments += max(3, len(polygon) - 1)
        length += float(np.linalg.norm(np.diff(ring, axis=0), axis=1).sum())
    return segments, length


def draw_slice_s(plane: np.ndarray, spacing_rc: tuple[float, float], c: Constants) -> float:
    """Contour one slice by hand: go there, M, point to the start, press, D(n, l), release."""
    segments, length_mm = contour_segments(plane, spacing_rc, c.contour_tolerance_mm)
    return (c.key_s + c.mental_s + c.point_s + 2 * c.button_s + c.segment_s * segments
            + c.cm_s * length_mm * c.screen_cm_per_mm)


@dataclass
class CaseActions:
    """What the interactive run did on one case, and what it left."""

    case: str
    reference: np.ndarray  # bool
    step_masks: list  # bool volumes, the object after each step of the run
    np_axis: int
    spacing_zyx: tuple[float, float, float]
    steps: list[dict]  # eval --protocol interactive steps
    range_given: bool
    encode_s: float  # measured per call in the run itself (kept for the record; pricing uses Constants)
    decode_s: float


def failing(a: CaseActions, prediction: np.ndarray, c: Constants) -> list[int]:
    """Slices the reader must still fix: those the object or the label covers, below the acceptance threshold."""
    other = tuple(x for x in range(3) if x != a.np_axis)
    covered = np.flatnonzero(prediction.any(axis=other) | a.reference.any(axis=other))
    bad = []
    for i in covered:
        truth, model = (axes.take_slice(m, a.np_axis, int(i)) for m in (a.reference, prediction))
        if not truth.any() or dice(model, truth) < c.accept_dice:
            bad.append(int(i))
    return bad


def price_case(a: CaseActions, c: Constants) -> dict:
    """The reader draws the first box (and the range ends), then corrects with boxes while that helps: they stop
    when no slice is below the threshold, or when a correction left as many failing slices as before (undoing it
    when it left more); then they review every covered slice and edit what still fails."""
    spacing = tuple(float(s) for axis, s in enumerate(a.spacing_zyx) if axis != a.np_axis)
    labelled = [int(i) for i in labelled_slices(a.reference, a.np_axis)]
    manual = sum(draw_slice_s(axes.take_slice(a.reference, a.np_axis, i), spacing, c) for i in labelled)
    human = system = 0.0
    boxes = cuts = undone = 0
    used = 0
    bad = failing(a, a.step_masks[0], c)
    for n, step in enumerate(a.steps):
        if n > 0:
            if not bad:
                break
            now = failing(a, a.step_masks[n], c)
        # A first session starts cold: every slice the first propagation decodes is encoded once, even when this
        # run found the embeddings in a cache (later steps re-use them: their own encoder calls, as measured).
        encodes = max(step["encoder_calls"], step["decoder_calls"]) if n == 0 else step["encoder_calls"]
        work = encodes * c.encode_s + step["decoder_calls"] * c.decode_s
        if step["action"].startswith("box"):
            boxes += 1
            human += c.key_s + c.box_s()
            # the first box's slices are prefetched while the reader draws it (and the range ends)
            hidden = c.overlap * (c.box_s() + (2 * c.click_s() if a.range_given else 0.0)) if n == 0 else 0.0
            system += max(0.0, work - hidden)
        elif step["action"].startswith("cut"):
            cuts += 1
            human += c.key_s + c.click_s()
            system += work
        if n == 0:
            continue
        if len(now) > len(bad):  # worse: undo (one click) and stop correcting
            human += c.click_s()
            undone += 1
            break
        used = n
        progress = len(now) < len(bad)
        bad = now
        if not progress:
            break
    if a.range_given:
        human += 2 * (c.key_s + c.click_s())  # mark the first and the last slice
    prediction = a.step_masks[used]
    other = tuple(x for x in range(3) if x != a.np_axis)
    covered = np.flatnonzero(prediction.any(axis=other) | a.reference.any(axis=other))
    review = len(covered) * c.review_s()
    edit = 0.0
    for i in bad:
        truth = axes.take_slice(a.reference, a.np_axis, i)
        edit += c.click_s() if not truth.any() else c.edit_ratio * draw_slice_s(truth, spacing, c)
    assisted = human + system + review + edit
    return {"case": a.case, "labelled_slices": len(labelled), "manual_s": manual, "assisted_s": assisted,
            "assisted_parts_s": {"boxes_and_cuts": human, "system_wait": system, "review": review, "edit": edit},
            "boxes": boxes, "cuts": cuts, "undone": undone, "steps_kept": used, "reviewed_slices": int(len(covered)),
            "edited_slices": bad}


def saved(cases: Sequence[CaseActions], c: Constants) -> tuple[float, list[dict]]:
    priced = [price_case(a, c) for a in cases]
    manual = sum(p["manual_s"] for p in priced)
    assisted = sum(p["assisted_s"] for p in priced)
    return (1.0 - assisted / manual if manual else 0.0), priced


def sensitivity(cases: Sequence[CaseActions], c: Constants) -> list[dict]:
    """The pooled saving with each constant at half and double its value (accept_dice: 0.75/0.85/0.9 instead)."""
    rows = []
    for name in CONSTANT_SOURCES:
        value = getattr(c, name)
        if name == "accept_dice":
            variants = {"low": 0.75, "high": 0.90}
        elif name == "overlap":
            variants = {"low": 0.0, "high": 1.0}
        elif name in ("encode_s", "decode_s"):
            variants = {"low": value / 2, "high": value * 10}  # x10: a loaded machine (measured here: 6-7 s)
        else:
            variants = {"low": value / 2, "high": value * 2}
        row = {"constant": name, "value": value, "source": CONSTANT_SOURCES[name]}
        for side, v in variants.items():
            row[side] = v
            row[f"saved_{side}"] = saved(cases, replace(c, **{name: v}))[0]
        rows.append(row)
    rows.append({"constant": "edit_ratio (Dreizin)", "value": 1 / 8.7, "source": "dreizin",
                 "low": 1 / 8.7, "high": 1 / 8.7,
                 "saved_low": saved(cases, replace(c, edit_ratio=1 / 8.7))[0],
                 "saved_high": saved(cases, replace(c, edit_ratio=1 / 8.7))[0]})
    return rows


def time_report(cases: Sequence[CaseActions], c: Constants = Constants()) -> dict:
    fraction, priced = saved(cases, c)
    table = sensitivity(cases, c)
    values = [fraction] + [r[k] for r in table for k in ("saved_low", "saved_high")]
    thresholds = {f"{t:.2f}": saved(cases, replace(c, accept_dice=t))[0] for t in (0.7, 0.75, 0.8, 0.85, 0.9)}
    return {"saved_fraction": fraction, "saved_range": [min(values), max(values)], "constants": c.__dict__,
            "constant_sources": CONSTANT_SOURCES, "sources": SOURCES, "sensitivity": table,
            "saved_by_accept_dice": thresholds, "cases": priced,
            "manual_s": sum(p["manual_s"] for p in priced), "assisted_s": sum(p["assisted_s"] for p in priced)}


def time_markdown(report: dict) -> str:
    lines = ["| case | labelled slices | manual (s) | assisted (s) | boxes | cuts | reviewed | edited | saved |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in report["cases"]:
        lines.append(f"| {p['case']} | {p['labelled_slices']} | {p['manual_s']:.0f} | {p['assisted_s']:.0f} | "
                     f"{p['boxes']} | {p['cuts']} | {p['reviewed_slices']} | {len(p['edited_slices'])} | "
                     f"{100 * (1 - p['assisted_s'] / p['manual_s']):.1f} % |")
    lines += ["", f"Pooled: manual {report['manual_s'] / 60:.1f} min, assisted {report['assisted_s'] / 60:.1f} min: "
              f"**{100 * report['saved_fraction']:.1f} % saved** (range over the sensitivity table "
              f"{100 * report['saved_range'][0]:.1f}-{100 * report['saved_range'][1]:.1f} %).", "",
              "| constant | value | source | low | saved | high | saved |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in report["sensitivity"]:
        lines.append(f"| {r['constant']} | {r['value']:.3g} | {r['source']} | {r['low']:.3g} | "
                     f"{100 * r['saved_low']:.1f} % | {r['high']:.3g} | {100 * r['saved_high']:.1f} % |")
    lines += ["", "Saved by acceptance threshold (per-slice Dice): " + ", ".join(
        f"{k}: {100 * v:.1f} %" for k, v in report["saved_by_accept_dice"].items()), "", "Sources:"]
    lines += [f"- {k}: {v}" for k, v in report["sources"].items()]
    return "\n".join(lines) + "\n"


def case_actions(session, reference: np.ndarray, case: str, range_mode: str = "label",
                 steps: int = 5) -> tuple[CaseActions, dict]:
    """Run ``eval --protocol interactive`` (box corrections) on ``session`` and keep what the time model prices."""
    import time

    from ..evaluation.evaluate import Target
    from ..evaluation.interactive import evaluate_interactive

    result = evaluate_interactive(session, Target(case, reference.astype(bool)), steps, "box", range_mode)
    encode_s = result.encode_s
    if encode_s == 0.0:  # every embedding came from the cache: time one encode of the first key slice here
        index = int(result.steps[0]["action"].split()[1])
        start = time.perf_counter()
        session.segmenter.embed(axes.take_slice(session.image, session.np_axis, index))
        encode_s = time.perf_counter() - start
    actions = CaseActions(case, reference.astype(bool), result.step_masks, session.np_axis,
                          tuple(session.volume.spacing_zyx), result.steps, range_mode == "label", encode_s,
                          result.decode_s)
    return actions, result.as_dict()
