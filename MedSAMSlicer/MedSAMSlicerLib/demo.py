"""``medsam-slicer demo``: the main job on a real scan that installs with our dependencies.

The chest CT ``CTChest4.nrrd`` and its hand-made segmentation ship inside the ``slicerio`` wheel.  The demo draws
one box (the in-plane extent of the right lung on its middle slice, as the official 3D rule derives it), propagates
it with our rule, writes the result as a Slicer ``.seg.nrrd`` and a NIfTI label, and scores it against the
shipped segmentation.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from .errors import InputImageError

DEMO_SEGMENT = "right lung"
DEMO_WINDOW = "lung"


def demo_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("slicerio")
    if spec is None or not spec.submodule_search_locations:
        raise InputImageError("the demo scan ships with the slicerio package; pip install slicerio")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "CTChest4.nrrd", data / "Segmentation.seg.nrrd"


def demo_reference(segmentation_path: Path, name: str = DEMO_SEGMENT) -> np.ndarray:
    """The named segment as a bool (k, j, i) array."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(segmentation_path))
    segment = slicerio.segment_from_name(segmentation, name)
    return np.transpose(slicerio.segment_mask(segmentation, segment)).astype(bool)


def run_demo(args: argparse.Namespace) -> dict:
    from .cli import _describe_run, _ProgressBar, make_session
    from .evaluation import official_key, score
    from .propagation import PropagationOptions, propagate
    from .volume import write_label

    image_path, segmentation_path = demo_files()
    if args.window == "auto":
        args.window = DEMO_WINDOW
    session = make_session(args, str(image_path))
    reference = demo_reference(segmentation_path)
    key, box = official_key(reference, session.np_axis)
    start = time.perf_counter()
    bar = _ProgressBar("propagating")
    try:
        result = propagate(session, {key: box}, PropagationOptions(rule="ours"), progress=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    dsc, nsd = score(result.mask, reference, session.volume.spacing_zyx, 2.0)
    out = Path(args.out)
    written = [write_label(out / "right_lung.seg.nrrd", result.mask, session.volume, "right lung"),
               write_label(out / "right_lung.nii.gz", result.mask, session.volume)]
    return {"image": str(image_path), **_describe_run(session), "segment": DEMO_SEGMENT, "key_slice": key,
            "box": str(box), "dsc": round(dsc, 4), "nsd_2mm": round(nsd, 4),
            "segmented_slices": result.segmented_slices, "stopped": result.stopped,
            "encoder_calls": session.segmenter.encoder.calls, "seconds": round(seconds, 1),
            "written": [str(p) for p in written]}
