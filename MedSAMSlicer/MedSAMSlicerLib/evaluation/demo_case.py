"""The demo case: the chest CT ``CTChest4.nrrd`` and its hand-made segmentation, shipped inside the ``slicerio`` wheel.

The demo draws one box (the in-plane extent of the right lung on its middle slice, as the official 3D rule derives
it) and scores the propagated result against the shipped segment.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import InputImageError

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
