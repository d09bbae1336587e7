"""The box is visible where the user is told to drag it (audit R3), on real slicer-core.

A 2D view draws a Markups ROI only where its plane cuts it, and the box is half a voxel thick.  After a jump that does
not snap to a voxel (crosshair jump, jump to a markup point) the plane can sit up to half a voxel off the slice the
box is placed on: no outline, no handles.  Drawing the box now puts the view's plane through the box's slice.
"""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import NO_SLICER

try:
    import slicer
except ImportError:
    pytest.skip(NO_SLICER, allow_module_level=True)

from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic
from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points, matrix_to_array


@pytest.mark.parametrize("view, across", [("Red", 2), ("Green", 1), ("Yellow", 0)])
def test_the_view_plane_cuts_the_box_after_an_unsnapped_jump(harness, view, across):
    volume = harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    slicer.util.updateVolumeFromArray(volume, np.zeros((12, 40, 30), np.int16))
    volume.SetSpacing(0.8, 0.9, 3.0)
    volume.SetOrigin(-12.0, 20.0, 5.0)
    to_world = ijk_to_world(volume)
    point = np.array([15.0, 20.0, 6.0])
    point[across] += 0.45  # 0.45 voxel off a slice centre, as a crosshair jump leaves it
    harness.set_slice_offset(view, ijk_to_world_points(to_world, point)[0])
    logic = BoxSegmentationLogic(harness.scene, engine=None)
    try:
        roi, prompt, _ = logic.draw_box(volume, harness.slice_nodes[view])
    finally:
        logic.reset()
        logic.detach()
    assert prompt.index == round(point[across])  # the nearest slice, as before
    slice_to_ras = matrix_to_array(harness.slice_nodes[view].GetSliceToRAS())
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    centre = np.array(roi.GetCenterWorld())
    half_thickness = roi.GetSize()[across] / 2.0  # the ROI's flat side follows the volume's index axis
    assert abs(float(normal @ (centre - slice_to_ras[:3, 3]))) < half_thickness  # the plane cuts the box
