"""The browser app's 3D view shows the segment as a surface (issue 21, item 5).

The app's own view set-up (``MedSAMSlicerWeb.display``) on trame-slicer's views, rendered offscreen without a
server (``DirectViewFactory``): lung2's lesion label written into a segment the way the app's segmentation is made,
its surface made as the app makes it after every change; the 3D view's pixels must then show the segment's colour.
Before the fix, the slice planes drawn opaque in the 3D view hid the (posterior) lesion behind the coronal plane:
the same check counted no segment pixel."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path

pytest.importorskip("trame_slicer", reason="the web extra is not installed: pip install -e '.[web]'")

SEGMENT_RGB = (1.0, 0.0, 0.0)  # pure red: nothing else in the 3D view (grey planes, bluish background) is red
ENOUGH_PIXELS = 100  # the lesion's surface covers several hundred pixels of a 300 x 300 view


def _red_pixels(view) -> int:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    view.render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3].astype(int)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((red > 60) & (green < red // 2) & (blue < red // 2)))


def test_the_3d_view_shows_the_segment_surface():
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    from MedSAMSlicerLib.volumeio.files import read_label, read_volume
    from MedSAMSlicerLogic.segments import add_segment, write_segment
    from MedSAMSlicerWeb.display import show_scan, show_surfaces, surface_points
    from MedSAMSlicerWeb.scene_bridge import install_slicer_globals

    image, label_file = shared_path("pyradiomics", "lung2_image.nrrd"), shared_path("pyradiomics", "lung2_label.nrrd")
    app = SlicerApp()
    install_slicer_globals(app)
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    for layout in (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                   ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.threed_view()):
        app.view_manager.create_view(layout)
    node = app.io_manager.load_volumes(str(image))[0]
    show_scan(app, node)  # as WebApp.load does
    editor = app.segmentation_editor
    segmentation = editor.create_empty_segmentation_node()
    editor.set_active_segmentation(segmentation, node)
    editor.show_3d(True)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)
    segment_id = add_segment(segmentation)
    segmentation.GetSegmentation().GetSegment(segment_id).SetColor(*SEGMENT_RGB)
    label = read_label(label_file, read_volume(image)) > 0
    write_segment(segmentation, segment_id, label, node)
    threed = app.view_manager.get_threed_views()
    assert show_surfaces(segmentation, threed)  # made now (the write dropped it)
    assert surface_points(segmentation) > 0
    assert not show_surfaces(segmentation, threed)  # already there: nothing to do
    assert _red_pixels(threed[0]) > ENOUGH_PIXELS
