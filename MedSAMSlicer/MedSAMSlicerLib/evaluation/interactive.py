"""The CVPR 2025 interactive protocol ("Foundation Models for Interactive 3D Biomedical Image Segmentation").

Written to be read beside the official code (github JunMa11/CVPR-MedSegFMCompetition, ``get_boxes.py`` and
``CVPR25_iter_eval.py``):

- step 0 (``get_boxes.mask3D_to_bbox``): the 2D box of the label on the median labelled slice
  (``z_indices[len(z_indices) // 2]``), optionally enlarged by one random shift of 0..5 px at 256 scale
  (``int(shift * W / 256)`` in x, ``int(shift * H / 256)`` in y), plus the label's z range (``--range label``)
  or none (``--range stop``: the object's ends are the propagation's stop rule);
- each later step corrects the largest 26-connected component of ``prediction != label``
  (``cc3d.connected_components(error_mask, connectivity=26)``; we use SciPy's ``ndimage.label`` with a 3x3x3
  structure, the same connectivity).  The official user clicks its EDT centre; LiteMedSAM was trained with boxes
  only and clicks added to a box make it worse (issue 18), so our simulated user corrects with a box:
  ``box`` = the tight label box on the slice where that component has most voxels; ``click`` = the same box on the
  slice of the component's EDT centre (the official click position: first of the voxels at the largest distance,
  ``sample_coord`` picks among them with seed 42).  Where that slice has no label the user ends the object there
  (a range cut);
- DSC, and NSD at 2 mm computed only when DSC > 0.2 (0 otherwise), after every step;
- ``dsc_auc`` / ``nsd_auc``: ``integrate.cumulative_trapezoid(dscs[-n_clicks:], np.arange(n_clicks))[-1]``, the
  trapezoid over the correction steps only (step 0 excluded, unit spacing).

``baseline="boxes"`` runs the same simulated user with no model: each slice's mask is the box interpolated between
the two nearest keys (the nearest key's box beyond the outermost keys, up to the range ends), filled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, ndimage

from ..engine import axes
from ..engine.boxes import Box, box_from_mask
from ..engine.corrections import RULE, CorrectableObject
from ..engine.propagation import PropagationOptions
from ..engine.session import VolumeSession
from ..errors import OptionError
from .evaluate import Target, labelled_slices
from .metrics import dice, normalized_surface_distance

NSD_MIN_DSC = 0.2  # the challenge scores NSD 0 when DSC <= 0.2


def challenge_nsd(prediction: np.ndarray, target: np.ndarray, spacing_zyx, dsc: float,
                  tolerance_mm: float = 2.0) -> float:
    return normalized_surface_distance(prediction, target, spacing_zyx, tolerance_mm) if dsc > NSD_MIN_DSC else 0.0


def auc(values: list[float], corrections: int) -> float:
    """The challenge's AUC: trapezoid over the last ``corrections`` values at unit spacing (0 with fewer than 2)."""
    tail = np.asarray(values[-corrections:], dtype=float) if corrections > 0 else np.zeros(0)
    if tail.size < 2:
        return 0.0
    return float(integrate.cumulative_trapezoid(tail, np.arange(tail.size))[-1])


def largest_error_component(prediction: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """The largest 26-connected component of the voxels where prediction and label disagree (None: no error)."""
    error = prediction.astype(bool) != target.astype(bool)
    if not error.any():
        return None
    components, count = ndimage.label(error, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))  # argmax: the lowest label among equal sizes, as the official


def edt_centre(component: np.ndarray) -> tuple[int, ...]:
    """The official click: a voxel of the component farthest from its border (EDT with a zero border around the
    component's bounding box, as ``compute_edt`` pads), chosen among ties with ``np.random.seed(42)``."""
    padded = np.pad(component.astype(np.uint8), 1)
    distance = ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1] * component
    if distance.sum() == 0:
        distance = component.astype(float)
    candidates = np.argwhere(distance == distance.max())
    rng = np.random.RandomState(42)
    return tuple(int(v) for v in candidates[rng.choice(len(candidates))])


def correction_slice(component: np.ndarray, np_axis: int, correction: str, done: set[int] = frozenset()) -> int:
    """The slice the simulated user corrects.  ``done``: slices that already carry the box this user would draw
    (drawing the same box again changes nothing, so the user moves to the slice with the next-largest share of
    the error; when every slice of the component is done, the largest one)."""
    per_slice = component.sum(axis=tuple(a for a in range(3) if a != np_axis)).astype(float)
    if correction == "click":
        centre = edt_centre(component)[np_axis]
        if centre not in done:
            return centre
    open_slices = per_slice.copy()
    open_slices[list(done)] = 0
    return int(np.argmax(open_slices if open_slices.any() else per_slice))


def challenge_box(plane: np.ndarray, rng: np.random.Generator | None) -> Box:
    """``get_boxes.mask2D_to_bbox``: the tight box, widened by one shift of 0..5 px at 256 scale when jittered."""
    tight = box_from_mask(plane)
    if rng is None:
        return tight
    shift = int(rng.integers(0, 6))
    height, width = plane.shape
    dx, dy = int(shift * width / 256), int(shift * height / 256)
    return Box(max(0, tight.x0 - dx), max(0, tight.y0 - dy), min(width - 1, tight.x1 + dx),
               min(height - 1, tight.y1 + dy))


class BoxBaseline:
    """The no-model baseline with the same actions as :class:`CorrectableObject`: filled interpolated boxes."""

    def __init__(self, session: VolumeSession, options: PropagationOptions) -> None:
        self.session = session
        low, high = options.slice_range if options.slice_range is not None else (None, None)
        self.low, self.high = low, high
        self.keys: dict[int, Box] = {}

    def start(self, key_boxes: dict[int, Box]) -> None:
        self.keys = dict(key_boxes)

    def add_box(self, index: int, box: Box) -> None:
        if self.low is not None and index < self.low:
            self.low = index
        if self.high is not None and index > self.high:
            self.high = index
        self.keys[index] = box

    def cut(self, index: int) -> None:
        if index > max(self.keys):
            self.high = index - 1
        else:
            self.low = index + 1

    @property
    def mask(self) -> np.ndarray:
        volume = self.session.empty_mask()
        keys = sorted(self.keys)
        low = keys[0] if self.low is None else self.low
        high = keys[-1] if self.high is None else self.high
        for index in range(low, high + 1):
            below = [k for k in keys if k <= index]
            above = [k for k in keys if k >= index]
            a = self.keys[below[-1]] if below else self.keys[above[0]]
            b = self.keys[above[0]] if above else a
            t = 0.0 if not (below and above) or above[0] == below[-1] else (index - below[-1]) / (above[0] - below[-1])
            corners = zip((a.x0, a.y0, a.x1, a.y1), (b.x0, b.y0, b.x1, b.y1))
            x0, y0, x1, y1 = (round(u + t * (v - u)) for u, v in corners)
            plane = np.zeros(self.session.slice_shape, dtype=bool)
            plane[int(y0):int(y1) + 1, int(x0):int(x1) + 1] = True
            axes.put_slice(volume, self.session.np_axis, index, plane)
        return volume


@dataclass
class InteractiveResult:
    case: str
    correction: str
    range_mode: str
    baseline: str | None
    jitter_seed: int | None
    steps: list[dict] = field(default_factory=list)
    dsc_auc: float = 0.0
    nsd_auc: float = 0.0
    final_dsc: float = 0.0
    final_nsd: float = 0.0
    encode_s: float = 0.0  # measured seconds per encoder call in this run (0 when none ran)
    decode_s: float = 0.0  # measured seconds per decoder call
    mask: np.ndarray | None = None  # the object after the last step (not in the JSON)
    step_masks: list = field(default_factory=list)  # the object after each step (not in the JSON)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("mask", "step_masks")}


def evaluate_interactive(session: VolumeSession, target: Target, steps: int = 5, correction: str = "box",
                         range_mode: str = "label", baseline: str | None = None, jitter_seed: int | None = None,
                         tolerance_mm: float = 2.0, rule: str = RULE) -> InteractiveResult:
    """Run the protocol on one target; ``steps`` corrections after the initial box."""
    if correction not in ("box", "click"):
        raise OptionError(f"--correction {correction!r}: use box or click")
    if range_mode not in ("label", "stop"):
        raise OptionError(f"--range {range_mode!r}: use label or stop")
    if baseline not in (None, "boxes"):
        raise OptionError(f"--baseline {baseline!r}: use boxes")
    np_axis, spacing = session.np_axis, session.volume.spacing_zyx
    present = labelled_slices(target.mask, np_axis)
    middle = int(present[len(present) // 2])
    rng = np.random.default_rng(jitter_seed) if jitter_seed is not None else None
    first = challenge_box(axes.take_slice(target.mask, np_axis, middle), rng)
    options = PropagationOptions(slice_range=(int(present[0]), int(present[-1])) if range_mode == "label" else None)
    obj = BoxBaseline(session, options) if baseline else CorrectableObject(session, options, rule)
    result = InteractiveResult(target.name, correction, range_mode, baseline, jitter_seed)
    segmenter = session.segmenter
    counters = (segmenter.encoder.calls, segmenter.encoder.seconds, segmenter.decoder.calls, segmenter.decoder.seconds)

    def record(action: str, work) -> None:
        decoder, encoder = segmenter.decoder.calls, segmenter.encoder.calls
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        prediction = obj.mask
        result.step_masks.append(prediction)
        dsc = dice(prediction, target.mask)
        result.steps.append({"action": action, "dsc": dsc,
                             "nsd": challenge_nsd(prediction, target.mask, spacing, dsc, tolerance_mm),
                             "seconds": seconds, "encoder_calls": segmenter.encoder.calls - encoder,
                             "decoder_calls": segmenter.decoder.calls - decoder})

    record(f"box {middle}", lambda: obj.start({middle: first}))
    for _ in range(steps):
        component = largest_error_component(obj.mask, target.mask)
        if component is None:
            record("none (no error left)", lambda: None)
            continue
        done = {k for k, box in obj.keys.items()
                if box == box_from_mask(axes.take_slice(target.mask, np_axis, k))}
        index = correction_slice(component, np_axis, correction, done)
        plane = axes.take_slice(target.mask, np_axis, index)
        if plane.any():
            record(f"box {index}", lambda: obj.add_box(index, box_from_mask(plane)))
        elif min(obj.keys) <= index <= max(obj.keys):
            record(f"none (unlabelled slice {index} between keys)", lambda: None)
        else:
            record(f"cut {index}", lambda: obj.cut(index))
    dscs = [s["dsc"] for s in result.steps]
    nsds = [s["nsd"] for s in result.steps]
    result.dsc_auc, result.nsd_auc = auc(dscs, steps), auc(nsds, steps)
    result.final_dsc, result.final_nsd = dscs[-1], nsds[-1]
    calls = segmenter.encoder.calls - counters[0]
    result.encode_s = (segmenter.encoder.seconds - counters[1]) / calls if calls else 0.0
    calls = segmenter.decoder.calls - counters[2]
    result.decode_s = (segmenter.decoder.seconds - counters[3]) / calls if calls else 0.0
    result.mask = obj.mask
    return result
