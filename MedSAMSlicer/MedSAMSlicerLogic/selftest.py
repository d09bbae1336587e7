"""The module's end-to-end check: load a scan, place a box, propagate, compare with the label, undo.

The same function runs inside Slicer (``MedSAMSlicerTest``, registered with CTest) and under pytest on the headless
slicer-core harness, so what the self-test asserts is also checked where no Slicer application exists.

Data: the lung CT ``pyradiomics/lung1`` of the project's test scans when a data folder is given (its tumour label
gives the Dice), else a CT-like phantom made here: a 300 HU sphere in 40 HU noisy tissue, whose label is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .box_segmentation import BoxSegmentationLogic
from .geometry import array_to_matrix, ijk_to_world_points
from .roi_prompts import SLICE_AXIS_ATTRIBUTE
from .segments import read_segment, segment_exists

LUNG1 = ("pyradiomics", "lung1_image.nrrd", "lung1_label.nrrd")


@dataclass
class SelfTestReport:
    source: str
    dice: float
    segmented_slices: int
    undo_removed_segment: bool
    encoder_calls: int


def phantom(scene, seed: int = 0):
    """A CT-like volume (int16 HU, 128x128x7 at 0.7x0.7x4 mm) with a sphere on 5 slices; returns (node, label)."""
    import slicer

    rng = np.random.default_rng(seed)
    shape = (7, 128, 128)  # k, j, i
    spacing = np.array([0.7, 0.7, 4.0])  # i, j, k
    grid = np.indices(shape, dtype=float)
    centre = np.array([3.0, 66.0, 60.0])
    radius_mm = 10.0
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing[::-1])))
    label = distance <= radius_mm
    image = rng.normal(40.0, 8.0, shape)
    image[label] = rng.normal(200.0, 8.0, int(label.sum()))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MedSAM phantom")
    node.SetSpacing(*spacing)
    node.SetOrigin(-40.0, -35.0, -30.0)
    slicer.util.updateVolumeFromArray(node, image.astype(np.int16))
    node.CreateDefaultDisplayNodes()
    return node, label


def box_roi(scene, volume_node, label: np.ndarray, k: int, first: int, last: int, margin: int = 2):
    """An axial ROI, drawn in RAS, around the label on slice ``k`` (tight box plus ``margin`` voxels) and as thick
    as slices ``first..last``, so that it also gives the propagation range."""
    from .geometry import ijk_to_world

    rows, cols = np.nonzero(label[k])
    low = np.array([cols.min() - margin, rows.min() - margin, first - 0.25])
    high = np.array([cols.max() + margin, rows.max() + margin, last + 0.25])
    matrix = ijk_to_world(volume_node)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    rotation = matrix[:3, :3] / spacing
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] *= -1.0
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = rotation
    object_to_world[:3, 3] = ijk_to_world_points(matrix, (low + high) / 2.0)[0]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "MedSAM self-test box")
    roi.SetAndObserveObjectToNodeMatrix(array_to_matrix(object_to_world))
    roi.SetSize(*((high - low) * spacing))
    roi.SetAttribute(SLICE_AXIS_ATTRIBUTE, "k")
    return roi


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def run_self_test(logic: BoxSegmentationLogic, volumes_logic=None,
                  data_folder: str | Path | None = None) -> SelfTestReport:
    """Needs ``logic.engine`` connected (the module's self-test starts a local engine first)."""
    scene = logic.scene
    lung = Path(data_folder).joinpath(*LUNG1[:2]) if data_folder else None
    if lung is not None and lung.is_file() and volumes_logic is not None:
        volume = volumes_logic.AddArchetypeVolume(str(lung), "lung1")
        label_node = volumes_logic.AddArchetypeVolume(str(lung.with_name(LUNG1[2])), "lung1 label", 1)
        import slicer

        label = np.asarray(slicer.util.arrayFromVolume(label_node)) > 0
        scene.RemoveNode(label_node)
        window, source = "lung", "lung1 CT (pyradiomics test case)"
    else:
        volume, label = phantom(scene)
        window, source = "soft_tissue", "CT phantom (sphere)"
    labelled = np.flatnonzero(label.any(axis=(1, 2)))
    first, last = int(labelled[0]), int(labelled[-1])
    # The key is the ROI's middle slice (see roi_prompts); the box is the label's box there.
    roi = box_roi(scene, volume, label, (first + last + 1) // 2, first, last)
    before = len(logic.undo_stack)
    operation, outcome = logic.propagate(volume, [roi], window=window, range_mode="roi")
    segmentation = scene.GetNodeByID(operation.snapshot.segmentation_node_id)
    segment_id = operation.snapshot.segment_id
    mask = read_segment(segmentation, segment_id, volume)
    score = dice(mask, label)
    logic.undo()
    removed = not segment_exists(segmentation, segment_id) and len(logic.undo_stack) == before
    return SelfTestReport(source, score, outcome.propagation.segmented_slices, removed, outcome.encoder_calls)
