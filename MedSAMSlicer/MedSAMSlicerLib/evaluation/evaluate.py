"""Measuring segmentation against a reference label with simulated user boxes.

- ``2d`` mode: on every slice where the target is present, the tight ground-truth box (optionally pushed outward by
  a random 0..N voxels per side) prompts the model; the per-slice masks are stacked and scored as a volume.
- ``3d`` mode (see :mod:`propagation`): one box on the middle labelled slice, propagated through the volume.

Every result carries the filled-box baselines (the tight box filled on each labelled slice, and the 3D bounding
box filled), because on compact lesions a filled box alone already scores high.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..protocol import Box, axes, box_from_mask, jittered_box
from ..errors import InputImageError
from .metrics import dice, normalized_surface_distance
from ..engine.session import VolumeSession

if TYPE_CHECKING:
    from ..engine.propagation import PropagationOptions


@dataclass
class Target:
    name: str
    mask: np.ndarray  # bool (k, j, i)


@dataclass
class EvalResult:
    case: str
    mode: str
    dsc: float
    nsd: float
    box_baseline_dsc: float  # tight box filled on every labelled slice
    box3d_baseline_dsc: float  # 3D bounding box filled
    labelled_slices: int
    segmented_slices: int
    encoder_calls: int
    seconds: float
    window: str
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def targets_from_label(label: np.ndarray, name: str, label_value: int | None = None,
                       split_components: bool = False, min_voxels: int = 1) -> list[Target]:
    """The structures to evaluate: one label value (or all foreground), optionally split into 3D components."""
    if label_value is None:
        mask = label > 0
        if not mask.any():
            raise InputImageError(f"the label of {name} is empty")
    else:
        mask = label == label_value
        if not mask.any():
            present = [int(v) for v in np.unique(label) if v != 0]
            raise InputImageError(f"label value {label_value} is absent from {name}; present: {present}")
    base = name if label_value is None else f"{name}#{label_value}"
    if not split_components:
        return [Target(base, mask)]
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = ndimage.sum_labels(mask, components, index=np.arange(1, count + 1))
    order = np.argsort(-sizes, kind="stable")
    return [Target(f"{base}.c{rank + 1}", components == index + 1)
            for rank, index in enumerate(order) if sizes[index] >= min_voxels]


def filled_box_baselines(target: np.ndarray, np_axis: int) -> tuple[float, float]:
    per_slice = np.zeros_like(target)
    for index in labelled_slices(target, np_axis):
        labelled = axes.take_slice(target, np_axis, index)
        box = box_from_mask(labelled)
        plane = np.zeros(labelled.shape, dtype=bool)
        plane[int(box.y0):int(box.y1) + 1, int(box.x0):int(box.x1) + 1] = True
        axes.put_slice(per_slice, np_axis, index, plane)
    bounds = [labelled_slices(target, axis) for axis in range(3)]
    box3d = np.zeros_like(target)
    box3d[tuple(slice(b[0], b[-1] + 1) for b in bounds)] = True
    return dice(per_slice, target), dice(box3d, target)


def labelled_slices(target: np.ndarray, np_axis: int) -> np.ndarray:
    return np.flatnonzero(target.any(axis=tuple(a for a in range(3) if a != np_axis)))


def score(prediction: np.ndarray, target: np.ndarray, spacing_zyx: tuple[float, ...],
          tolerance_mm: float) -> tuple[float, float]:
    return dice(prediction, target), normalized_surface_distance(prediction, target, spacing_zyx, tolerance_mm)


def slice_boxes(plane: np.ndarray, per_piece: bool) -> list[Box]:
    """One tight box around the slice's target, or one per 8-connected piece (two ventricles: two boxes)."""
    if not per_piece:
        return [box_from_mask(plane)]
    pieces, count = ndimage.label(plane, structure=np.ones((3, 3), dtype=bool))
    return [box_from_mask(pieces == n) for n in range(1, count + 1)]


def evaluate_2d(session: VolumeSession, target: Target, jitter: int = 0, seed: int = 0,
                tolerance_mm: float = 2.0, box_per_piece: bool = False) -> EvalResult:
    """Tight ground-truth box on every labelled slice; masks stacked and scored in 3D."""
    rng = np.random.default_rng(seed)
    calls_before, start = session.segmenter.encoder.calls, time.perf_counter()
    prediction = session.empty_mask()
    boxes: dict[int, str] = {}
    for index in labelled_slices(target.mask, session.np_axis):
        plane = axes.take_slice(target.mask, session.np_axis, index)
        union = np.zeros(plane.shape, dtype=bool)
        drawn = []
        for tight in slice_boxes(plane, box_per_piece):
            box: Box = jittered_box(tight, plane.shape, jitter, rng)
            union |= session.segment_slice(int(index), box, allow_degenerate=True).mask
            drawn.append(str(box))
        axes.put_slice(prediction, session.np_axis, int(index), union)
        boxes[int(index)] = " ".join(drawn)
    seconds = time.perf_counter() - start
    dsc, nsd = score(prediction, target.mask, session.volume.spacing_zyx, tolerance_mm)
    baseline, baseline3d = filled_box_baselines(target.mask, session.np_axis)
    return EvalResult(target.name, "2d", dsc, nsd, baseline, baseline3d, len(boxes), len(boxes),
                      session.segmenter.encoder.calls - calls_before, seconds, session.window.describe(),
                      {"jitter": jitter, "seed": seed, "tolerance_mm": tolerance_mm, "box_per_piece": box_per_piece,
                       "boxes": boxes})


def official_key(target: np.ndarray, np_axis: int) -> tuple[int, Box]:
    """The official 3D prompt: the in-plane extent of the label's 3D bounding box, on its middle slice."""
    present = labelled_slices(target, np_axis)
    low, high = int(present[0]), int(present[-1])
    middle = int((high - low) / 2 + low)
    footprint = target.any(axis=np_axis)  # rows/columns as in axes.take_slice
    return middle, box_from_mask(footprint)


def spread_keys(target: np.ndarray, np_axis: int, count: int) -> dict[int, Box]:
    """``count`` key slices spread evenly over the labelled range, each with its tight ground-truth box."""
    if count <= 1:
        index, box = official_key(target, np_axis)
        return {index: box}
    present = labelled_slices(target, np_axis)
    picks = np.unique(np.round(np.linspace(0, len(present) - 1, count + 2)[1:-1]).astype(int))
    return {int(present[p]): box_from_mask(axes.take_slice(target, np_axis, int(present[p]))) for p in picks}


def evaluate_3d(session: VolumeSession, target: Target, rule: str = "ours", range_mode: str = "label",
                keys: int = 1, tolerance_mm: float = 2.0, options: PropagationOptions | None = None) -> EvalResult:
    """Simulate a user who draws ``keys`` boxes and propagates.

    ``range_mode``: ``label`` propagates over the label's extent along the axis (what the official rule is given);
    ``stop`` propagates over the whole volume and relies on the stop rule (what a user without a range gets).
    """
    from ..engine.memory import PeakMemory
    from ..engine.propagation import PropagationOptions, propagate

    key_boxes = spread_keys(target.mask, session.np_axis, keys)
    present = labelled_slices(target.mask, session.np_axis)
    slice_range = (int(present[0]), int(present[-1])) if range_mode == "label" else None
    base = options or PropagationOptions(rule=rule)
    options = PropagationOptions(rule=rule, slice_range=slice_range, margin=base.margin, stop=base.stop,
                                 largest_component=base.largest_component, fill_holes=base.fill_holes)
    calls_before, start = session.segmenter.encoder.calls, time.perf_counter()
    with PeakMemory() as memory:
        # a remote session (segment/eval --server) propagates on its engine server
        result = (session.propagate(key_boxes, options) if getattr(session, "remote", False)
                  else propagate(session, key_boxes, options))
    seconds = time.perf_counter() - start
    dsc, nsd = score(result.mask, target.mask, session.volume.spacing_zyx, tolerance_mm)
    baseline, baseline3d = filled_box_baselines(target.mask, session.np_axis)
    return EvalResult(target.name, f"3d-{rule}-{range_mode}", dsc, nsd, baseline, baseline3d, len(present),
                      result.segmented_slices, session.segmenter.encoder.calls - calls_before, seconds,
                      session.window.describe(),
                      {"keys": {k: str(b) for k, b in key_boxes.items()}, "stopped": result.stopped,
                       "peak_rss_mb": memory.peak_mb, "tolerance_mm": tolerance_mm})
