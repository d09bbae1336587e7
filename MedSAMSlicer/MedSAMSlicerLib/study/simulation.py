"""Simulated annotation-time study: MedSAM's human-in-the-loop protocol replayed on a labelled scan.

MedSAM (Ma et al., "Segment anything in medical images", Nature Communications 15, 654, 2024) reports that two
radiologists annotated 10 3D tumour cases (733 tumour slices) 82.37 % and 82.95 % faster with the model than slice by
slice: they drew the tumour's long and short axes every 3-10 slices, the axes were turned into boxes, the model
segmented, and they refined the result.  This module replays that protocol on a case whose label stands in for the
reader, and counts what each strategy costs:

- ``manual``: on every labelled slice, the reader draws the label's contour as a polygon: one stroke per boundary
  (outer boundaries and holes) and as many clicks as the polygon needs to stay within ``contour_tolerance_mm`` of the
  boundary (Douglas-Peucker vertices, at least 3 per boundary).
- ``assisted``: key slices every ``key_every`` labelled slices (the middle slice of each block of ``key_every``);
  on each, two strokes (long and short axis), 4 clicks; the label's tight box on that slice prompts our
  propagation (:mod:`propagation`) over the label's extent.  The reader reviews every slice the model or the label
  touches and corrects each slice whose Dice with the label is below ``dice_threshold``, by editing (redrawing
  only the stretches of boundary the model got wrong by more than ``contour_tolerance_mm``, plus one click per
  stray island to remove or hole to fill) or by drawing the whole slice again as in ``manual``, whichever costs
  less (``correction="best"``, default; ``edit`` and ``redraw`` force one).  Corrected slices are taken to end up
  equal to the label.  The model's computing time is counted as time the reader waits.

The reader passes through the lesion twice when assisted (once to draw the axes, once to review) and once when
drawing by hand; both strategies are charged the same per slice visited.

Seconds come from counts times the per-action times in :class:`ActionTimes`; every default is documented there
with its source or marked as an assumption.  The result is an estimate under stated assumptions, not a
measurement: the study mode (:mod:`study`) measures real readers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from skimage import measure

from ..protocol import Box, axes, box_from_mask
from ..errors import OptionError
from ..evaluation.evaluate import labelled_slices
from ..evaluation.metrics import dice
from .protocol import ActionTimes, Protocol


@dataclass(frozen=True)
class Drawing:
    """What drawing something costs the reader: strokes and clicks."""

    strokes: int = 0
    points: int = 0

    def __add__(self, other: "Drawing") -> "Drawing":
        return Drawing(self.strokes + other.strokes, self.points + other.points)


AXES_DRAWING = Drawing(strokes=2, points=4)  # long and short axis, two end points each


@dataclass
class StrategyCost:
    slices_visited: int
    drawing: Drawing
    reviewed_slices: int = 0
    model_slices: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # navigation, drawing, review, model

    @property
    def total_s(self) -> float:
        return float(sum(self.seconds.values()))

    def price(self, times: ActionTimes) -> "StrategyCost":
        self.seconds = {
            "navigation": self.slices_visited * times.slice_navigation_s,
            "drawing": times.drawing_seconds(self.drawing),
            "review": self.reviewed_slices * times.review_slice_s,
            "model": self.model_slices * times.model_slice_s,
        }
        return self


@dataclass
class SimulationResult:
    case: str
    protocol: Protocol
    times: ActionTimes
    labelled_slices: list[int]
    key_slices: list[int]
    slice_dice: dict[int, float]  # model vs label, every slice either marks
    corrected_slices: list[int]  # redrawn: Dice below the threshold where the label is present
    erased_slices: list[int]  # the model marked them, the label does not
    manual: StrategyCost
    assisted: StrategyCost
    ai_dice: float  # 3D, before the reader's corrections
    final_dice: float  # 3D, after them
    perfect_model: StrategyCost  # the assisted strategy had no slice needed correcting: the protocol's ceiling

    @property
    def saving(self) -> float:
        """Fraction of the manual time saved by the assisted strategy."""
        return 1.0 - self.assisted.total_s / self.manual.total_s if self.manual.total_s else 0.0

    @property
    def ceiling(self) -> float:
        """The saving had the model needed no correction: what the protocol and action times allow at best."""
        return 1.0 - self.perfect_model.total_s / self.manual.total_s if self.manual.total_s else 0.0

    def as_dict(self) -> dict:
        def cost(strategy: StrategyCost) -> dict:
            return {"slices_visited": strategy.slices_visited, "strokes": strategy.drawing.strokes,
                    "points": strategy.drawing.points, "reviewed_slices": strategy.reviewed_slices,
                    "model_slices": strategy.model_slices,
                    "seconds": {k: round(v, 2) for k, v in strategy.seconds.items()},
                    "total_s": round(strategy.total_s, 2)}

        return {"case": self.case, "protocol": asdict(self.protocol), "times": asdict(self.times),
                "labelled_slices": len(self.labelled_slices), "key_slices": self.key_slices,
                "corrected_slices": self.corrected_slices, "erased_slices": self.erased_slices,
                "accepted_slices": len(self.slice_dice) - len(self.corrected_slices) - len(self.erased_slices),
                "slice_dice": {k: round(v, 4) for k, v in self.slice_dice.items()},
                "manual": cost(self.manual), "assisted": cost(self.assisted),
                "perfect_model": cost(self.perfect_model), "saving_percent": round(100.0 * self.saving, 2),
                "ceiling_percent": round(100.0 * self.ceiling, 2), "ai_dice": round(self.ai_dice, 4),
                "final_dice": round(self.final_dice, 4)}


def key_slices(labelled: Sequence[int], every: int) -> list[int]:
    """The middle slice of each run of ``every`` consecutive labelled slices (the last run may be shorter), so no
    labelled slice is more than ``every // 2`` slices from a key."""
    labelled = [int(v) for v in labelled]
    return [labelled[start + (min(every, len(labelled) - start) - 1) // 2]
            for start in range(0, len(labelled), every)]


def _rings_mm(plane: np.ndarray, spacing_rc: tuple[float, float]) -> list[np.ndarray]:
    """The boundaries of a 2D mask as closed rings of points in mm (first point not repeated), outer and holes."""
    padded = np.pad(plane.astype(np.float32), 1)  # closes boundaries that touch the slice edge
    return [(contour[:-1] - 1.0) * np.asarray(spacing_rc) for contour in measure.find_contours(padded, 0.5)]


def _polygon_vertices(ring: np.ndarray, tolerance_mm: float) -> int:
    """Douglas-Peucker vertices of a closed ring (3 at least)."""
    # Start at the point farthest from the centre (a corner): Douglas-Peucker keeps the end points, so a start in
    # the middle of a straight edge would cost a spurious vertex.
    start = int(np.argmax(((ring - ring.mean(axis=0)) ** 2).sum(axis=1)))
    ring = np.roll(ring, -start, axis=0)
    polygon = measure.approximate_polygon(np.vstack([ring, ring[:1]]), tolerance_mm)
    return max(3, len(polygon) - 1)  # closed: the last vertex repeats the first


def contour_drawing(plane: np.ndarray, spacing_rc: tuple[float, float], tolerance_mm: float) -> Drawing:
    """Strokes and clicks to draw a 2D mask as polygons: one stroke per boundary (outer or hole), and the
    Douglas-Peucker vertices that keep each polygon within ``tolerance_mm`` of it (3 at least)."""
    rings = _rings_mm(plane, spacing_rc) if plane.any() else []
    return Drawing(len(rings), sum(_polygon_vertices(ring, tolerance_mm) for ring in rings))


def _densified(rings: list[np.ndarray], step_mm: float) -> np.ndarray:
    """Points along closed rings no farther apart than ``step_mm``, for distances to the boundary itself."""
    points = []
    for ring in rings:
        following = np.roll(ring, -1, axis=0)
        for a, b in zip(ring, following):
            count = max(1, int(np.ceil(np.linalg.norm(b - a) / step_mm)))
            points.append(a + (b - a) * (np.arange(count)[:, None] / count))
    return np.vstack(points)


def _runs(wrong: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the maximal runs of True in a circular boolean array that is neither all True nor all
    False, each in order along the ring."""
    start = int(np.flatnonzero(~wrong)[0])  # begin on a correct point so that no run wraps around
    order = np.roll(np.arange(wrong.size), -start)
    rolled = wrong[order]
    edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
    return [order[a:b] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def correction_drawing(reference: np.ndarray, prediction: np.ndarray, spacing_rc: tuple[float, float],
                       tolerance_mm: float) -> Drawing:
    """Strokes and clicks to correct the model's slice ``prediction`` into ``reference`` by editing.

    Each stretch of the reference boundary farther than ``tolerance_mm`` from the model's boundary is redrawn by
    one stroke along it, from the last correct point to the next (its Douglas-Peucker vertices, both ends
    included, 2 at least); a reference boundary the model missed entirely is drawn as in :func:`contour_drawing`;
    each model region that touches no reference region is removed, and each hole the model left inside the
    reference is filled, by one click (Slicer's Islands effect, a paint click).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    drawing = Drawing()
    islands, count = ndimage.label(prediction, structure=np.ones((3, 3), dtype=bool))
    touching = np.unique(islands[reference & prediction])  # labels of model regions that overlap the reference
    stray = count - touching.size
    drawing += Drawing(stray, stray)
    if not reference.any():
        return drawing
    kept = prediction & np.isin(islands, touching)  # what is left after erasing
    if not kept.any():
        return drawing + contour_drawing(reference, spacing_rc, tolerance_mm)
    holes, count = ndimage.label(ndimage.binary_fill_holes(kept) & ~kept)
    if count:  # a hole the model left inside the reference region is filled with one click
        inside = ndimage.mean(reference, holes, index=np.arange(1, count + 1)) > 0.5
        drawing += Drawing(int(inside.sum()), int(inside.sum()))
    model_boundary = cKDTree(_densified(_rings_mm(kept, spacing_rc), min(spacing_rc) / 4.0))
    for ring in _rings_mm(reference, spacing_rc):
        distance, _ = model_boundary.query(ring)
        wrong = distance > tolerance_mm
        if wrong.all():
            drawing += Drawing(1, _polygon_vertices(ring, tolerance_mm))
            continue
        if not wrong.any():
            continue
        for run in _runs(wrong):
            # The stroke starts and ends on the correct boundary next to the wrong stretch.
            path = ring[np.concatenate([[(run[0] - 1) % len(ring)], run, [(run[-1] + 1) % len(ring)]])]
            drawing += Drawing(1, max(2, len(measure.approximate_polygon(path, tolerance_mm))))
    return drawing


def in_plane_spacing(spacing_zyx: Sequence[float], np_axis: int) -> tuple[float, float]:
    rows, cols = (float(s) for axis, s in enumerate(spacing_zyx) if axis != np_axis)
    return rows, cols


def per_slice_dice(prediction: np.ndarray, reference: np.ndarray, np_axis: int) -> dict[int, float]:
    """Dice of each slice that either mask marks."""
    other = tuple(a for a in range(3) if a != np_axis)
    marked = np.flatnonzero(prediction.any(axis=other) | reference.any(axis=other))
    return {int(i): dice(axes.take_slice(prediction, np_axis, int(i)), axes.take_slice(reference, np_axis, int(i)))
            for i in marked}


def count_protocol(case: str, reference: np.ndarray, prediction: np.ndarray, keys: Sequence[int], np_axis: int,
                   spacing_zyx: Sequence[float], model_slices: int, protocol: Protocol = Protocol(),
                   times: ActionTimes = ActionTimes()) -> SimulationResult:
    """Count both strategies from the label, the model's mask and the key slices (no model run here)."""
    protocol.check()
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    spacing = in_plane_spacing(spacing_zyx, np_axis)
    labelled = [int(i) for i in labelled_slices(reference, np_axis)]
    drawing = {i: contour_drawing(axes.take_slice(reference, np_axis, i), spacing, protocol.contour_tolerance_mm)
               for i in labelled}

    manual = StrategyCost(slices_visited=len(labelled), drawing=sum(drawing.values(), Drawing())).price(times)

    scores = per_slice_dice(prediction, reference, np_axis)
    corrected = [i for i in labelled if scores[i] < protocol.dice_threshold]
    erased = [i for i in scores if i not in drawing]
    final = prediction.copy()
    corrections = Drawing()
    for i in corrected + erased:
        truth, model = axes.take_slice(reference, np_axis, i), axes.take_slice(prediction, np_axis, i)
        edit = correction_drawing(truth, model, spacing, protocol.contour_tolerance_mm)
        redraw = drawing[i] if truth.any() else edit  # a slice without label: erasing is all there is
        if protocol.correction == "best":
            corrections += min(edit, redraw, key=times.drawing_seconds)
        else:
            corrections += edit if protocol.correction == "edit" else redraw
        axes.put_slice(final, np_axis, i, truth)
    assisted_drawing = Drawing(AXES_DRAWING.strokes * len(keys), AXES_DRAWING.points * len(keys)) + corrections
    # Two passes: one through the lesion to draw the axes, one through everything the model or the label marks
    # to review the result.
    assisted = StrategyCost(slices_visited=len(labelled) + len(scores), drawing=assisted_drawing,
                            reviewed_slices=len(scores), model_slices=model_slices).price(times)
    axes_only = Drawing(AXES_DRAWING.strokes * len(keys), AXES_DRAWING.points * len(keys))
    perfect = StrategyCost(slices_visited=2 * len(labelled), drawing=axes_only, reviewed_slices=len(labelled),
                           model_slices=model_slices).price(times)
    return SimulationResult(case, protocol, times, labelled, [int(k) for k in keys], scores, corrected, erased,
                            manual, assisted, dice(prediction, reference), dice(final, reference), perfect)


def drawable_box(plane: np.ndarray) -> Box:
    """The tight box of a label slice, at least one voxel wide and high (a reader cannot draw a line as a box)."""
    box = box_from_mask(plane)
    rows, cols = plane.shape
    x1 = box.x1 if box.x1 > box.x0 else min(cols - 1.0, box.x0 + 1.0)
    y1 = box.y1 if box.y1 > box.y0 else min(rows - 1.0, box.y0 + 1.0)
    x0 = box.x0 if x1 > box.x0 else box.x0 - 1.0
    y0 = box.y0 if y1 > box.y0 else box.y0 - 1.0
    return Box(x0, y0, x1, y1)


@dataclass
class AssistedRun:
    """The model's part of the assisted protocol: key slices, the propagated mask, the slices the model ran on."""

    keys: list[int]
    mask: np.ndarray
    model_slices: int


def run_assisted(session, reference: np.ndarray, protocol: Protocol = Protocol()) -> AssistedRun:
    """Boxes from the label on the key slices, propagated by our rule over the label's extent (``range_mode``
    label) or the whole volume (``stop``).  ``session`` is a :class:`VolumeSession`; ``reference`` bool."""
    from ..engine.propagation import PropagationOptions, propagate

    protocol.check()
    if not reference.any():
        raise OptionError("the label is empty: nothing to annotate")
    labelled = labelled_slices(reference, session.np_axis)
    keys = key_slices(labelled, protocol.key_every)
    key_boxes = {k: drawable_box(axes.take_slice(reference, session.np_axis, k)) for k in keys}
    slice_range = (int(labelled[0]), int(labelled[-1])) if protocol.range_mode == "label" else None
    if protocol.rule == "official" and len(key_boxes) > 1:
        raise OptionError("the official rule takes one key box; the protocol needs rule 'ours'")
    result = propagate(session, key_boxes, PropagationOptions(rule=protocol.rule, slice_range=slice_range))
    return AssistedRun(keys, result.mask, result.segmented_slices + len(result.stopped))  # see propagation


def simulate_case(session, reference: np.ndarray, case: str, protocol: Protocol = Protocol(),
                  times: ActionTimes = ActionTimes()) -> SimulationResult:
    """Run the assisted protocol with the model on ``session`` (a :class:`VolumeSession`) against the label
    ``reference`` (bool, volume shape), then count both strategies."""
    reference = reference.astype(bool)
    run = run_assisted(session, reference, protocol)
    return count_protocol(case, reference, run.mask, run.keys, session.np_axis, session.volume.spacing_zyx,
                          run.model_slices, protocol, times)


def summarize(results: Sequence[SimulationResult]) -> dict:
    """Pooled over cases: total manual and assisted seconds and the saving, as the paper pools its 10 cases."""
    manual = sum(r.manual.total_s for r in results)
    assisted = sum(r.assisted.total_s for r in results)
    perfect = sum(r.perfect_model.total_s for r in results)
    return {"cases": len(results), "labelled_slices": sum(len(r.labelled_slices) for r in results),
            "corrected_slices": sum(len(r.corrected_slices) for r in results),
            "manual_s": round(manual, 1), "assisted_s": round(assisted, 1),
            "saving_percent": round(100.0 * (1.0 - assisted / manual), 2) if manual else 0.0,
            "ceiling_percent": round(100.0 * (1.0 - perfect / manual), 2) if manual else 0.0}


PAPER_SAVINGS_PERCENT = (82.37, 82.95)  # MedSAM's two radiologists


def _protocol_label(protocol: Protocol) -> str:
    return (f"key every {protocol.key_every}, Dice < {protocol.dice_threshold:g} corrected ({protocol.correction}), "
            f"{protocol.contour_tolerance_mm:g} mm, range {protocol.range_mode}")


def simulation_markdown(results: Sequence[SimulationResult]) -> str:
    """A table of the results, one row per case and protocol, with the pooled saving of each protocol."""
    lines = ["| case | key every | labelled slices | key slices | corrected | erased | Dice before correction | "
             "manual strokes / clicks | manual (s) | assisted strokes / clicks | assisted (s) | saved | "
             "saved, perfect model |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.case} | {r.protocol.key_every} | {len(r.labelled_slices)} | {len(r.key_slices)} | "
                     f"{len(r.corrected_slices)} | {len(r.erased_slices)} | {r.ai_dice:.3f} | "
                     f"{r.manual.drawing.strokes} / {r.manual.drawing.points} | {r.manual.total_s:.0f} | "
                     f"{r.assisted.drawing.strokes} / {r.assisted.drawing.points} | {r.assisted.total_s:.0f} | "
                     f"{100 * r.saving:.1f} % | {100 * r.ceiling:.1f} % |")
    lines.append("")
    for protocol in dict.fromkeys(r.protocol for r in results):
        pooled = summarize([r for r in results if r.protocol == protocol])
        lines.append(f"- {_protocol_label(protocol)}: {pooled['cases']} cases, {pooled['labelled_slices']} labelled "
                     f"slices, {pooled['corrected_slices']} corrected; manual {pooled['manual_s'] / 60:.1f} min, "
                     f"assisted {pooled['assisted_s'] / 60:.1f} min: **{pooled['saving_percent']:.1f} % saved** "
                     f"(perfect model: {pooled['ceiling_percent']:.1f} %)")
    lines.append(f"- MedSAM's study, real radiologists: {PAPER_SAVINGS_PERCENT[0]} % and {PAPER_SAVINGS_PERCENT[1]} % "
                 f"saved")
    return "\n".join(lines) + "\n"


def simulation_plot_png(results: Sequence[SimulationResult]) -> bytes:
    """Estimated seconds per case, manual beside assisted (and the perfect-model ceiling), one panel per protocol."""
    import io

    # The object-oriented API with the Agg canvas: no pyplot, so Slicer's own matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protocols = list(dict.fromkeys(r.protocol for r in results))
    cases = list(dict.fromkeys(r.case for r in results))
    figure = Figure(figsize=(max(7.0, 1.0 + 0.8 * len(cases)), 3.6 * len(protocols)), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    for n, protocol in enumerate(protocols):
        axis = figure.add_subplot(len(protocols), 1, n + 1)
        chosen = {r.case: r for r in results if r.protocol == protocol}
        names = [c for c in cases if c in chosen]
        positions = np.arange(len(names))
        for offset, label, colour, value in (
                (-0.27, "manual", "#9e9e9e", lambda r: r.manual.total_s),
                (0.0, "assisted (simulated)", "#1f77b4", lambda r: r.assisted.total_s),
                (0.27, "assisted, perfect model", "#aec7e8", lambda r: r.perfect_model.total_s)):
            axis.bar(positions + offset, [value(chosen[c]) for c in names], width=0.27, label=label, color=colour)
        axis.set_xticks(positions, [c.replace("CT_Lesion_", "") for c in names], rotation=30, ha="right", fontsize=8)
        axis.set_ylabel("estimated seconds")
        pooled = summarize(list(chosen.values()))
        axis.set_title(f"{_protocol_label(protocol)}\nsimulated: {pooled['saving_percent']:.1f} % saved; MedSAM's "
                       f"readers: {PAPER_SAVINGS_PERCENT[0]} % / {PAPER_SAVINGS_PERCENT[1]} %", fontsize=9)
        axis.legend(fontsize=8)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()
