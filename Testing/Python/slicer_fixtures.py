"""Fixtures and helpers shared by the test_slicer_* files (a pytest plugin: ``conftest.py`` names it in
``pytest_plugins``, so the fixtures reach every test without imports): a harness per test, a live local engine service per test module (a
real ``medsam-slicer serve`` child process started the way Slicer starts it, stopped after the module), the logic
talking to it, and ROIs drawn in RAS from a box given in voxel indices (the way a user's drag ends up in the scene).

The engine keeps embeddings in the session's disk cache folder, so slices the in-process tests encoded are not
encoded again by the server (and the other way round)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from MedSAMSlicerLib.protocol import Box

if TYPE_CHECKING:
    from MedSAMSlicerLogic.engine_link import EngineLink

# slicer-core is a test dependency, but a checkout without it still collects every other test: the modules that need
# it are imported by the fixtures and helpers that use them (a test asking for one is skipped with this line).
NO_SLICER = "the slicer-core wheel is not installed (pip install slicer-core)"


@pytest.fixture
def harness():
    pytest.importorskip("slicer", reason=NO_SLICER)
    from slicer_harness import SlicerHarness

    harness = SlicerHarness()
    yield harness
    harness.close()


def start_engine(cache_dir) -> "EngineLink":
    from MedSAMSlicerLogic.engine_link import EngineLink

    link = EngineLink()
    link.start_local_and_wait(args=("--device", "cpu", "--cache-dir", str(cache_dir)))
    link.client.wait_ready(timeout=600)
    return link


@pytest.fixture(scope="module")
def engine(cache):
    """A live local engine service for this test module (stopped after it)."""
    link = start_engine(cache.disk_dir)
    yield link
    link.stop()


@pytest.fixture
def logic(harness, engine):
    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic

    if engine.client is None:  # a test stopped or killed it: start a fresh one for the next tests
        engine.start_local_and_wait(args=("--device", "cpu"))
    logic = BoxSegmentationLogic(harness.scene, engine.client)
    yield logic
    logic.reset()
    logic.detach()


def roi_in_ras(scene, volume_node, axis: str, first: int, last: int, box: Box, tag_axis: bool = True,
               name: str = "test box"):
    """An ROI whose faces lie on voxel boundaries around ``box`` (inclusive pixels) on slices ``first..last``
    along ``axis``, built in world RAS from the volume's IJK-to-RAS matrix."""
    from MedSAMSlicerLogic.geometry import array_to_matrix, ijk_to_world, ijk_to_world_points
    from MedSAMSlicerLogic.roi_prompts import AXIS_LETTERS, SLICE_AXIS_ATTRIBUTE, in_plane_axes

    across = AXIS_LETTERS.index(axis)
    x_axis, y_axis = in_plane_axes(axis)
    low, high = np.zeros(3), np.zeros(3)
    low[x_axis], high[x_axis] = box.x0 - 0.5, box.x1 + 0.5
    low[y_axis], high[y_axis] = box.y0 - 0.5, box.y1 + 0.5
    low[across], high[across] = first - 0.25, last + 0.25
    matrix = ijk_to_world(volume_node)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    rotation = matrix[:3, :3] / spacing
    if np.linalg.det(rotation) < 0:
        rotation[:, across] *= -1.0
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = rotation
    object_to_world[:3, 3] = ijk_to_world_points(matrix, (low + high) / 2.0)[0]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetAndObserveObjectToNodeMatrix(array_to_matrix(object_to_world))
    roi.SetSize(*((high - low) * spacing))
    if tag_axis:
        roi.SetAttribute(SLICE_AXIS_ATTRIBUTE, axis)
    return roi


def tight_box(plane: np.ndarray, margin: int = 2) -> Box:
    rows, cols = np.nonzero(plane)
    return Box(float(max(cols.min() - margin, 0)), float(max(rows.min() - margin, 0)),
               float(min(cols.max() + margin, plane.shape[1] - 1)), float(min(rows.max() + margin, plane.shape[0] - 1)))


def label_array(path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


@pytest.fixture
def lung(harness):
    """The lung1 CT (shared scans) loaded in the harness's scene, and its tumour label as (k, j, i) bools."""
    from conftest import shared_path

    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    return volume, label_array(shared_path("pyradiomics", "lung1_label.nrrd"))


def user_segmentation(harness, volume, shape):
    """A segmentation the user made: one segment ("Mine") that MedSAM must never change; (node, id, its mask)."""
    import slicer

    node = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[30:36, 330:390, 190:250] = 1
    segment_id = node.GetSegmentation().AddEmptySegment("", "Mine")
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, volume)
    return node, segment_id, mask > 0
