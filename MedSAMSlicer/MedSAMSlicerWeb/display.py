"""What the browser app's views show: the scan in the slice views, the segments as surfaces in the 3D view.

Kept apart from ``app.WebApp`` so that a test can build the same views without a server (trame-slicer's
``DirectViewFactory``, offscreen) and look at the 3D view's pixels.
"""

from __future__ import annotations

import slicer

VOLUME_RENDERING_PRESET = "CT-Chest-Contrast-Enhanced"


def show_scan(slicer_app, node, volume_rendering: bool = False) -> None:
    """The scan in the three slice views (and, with ``volume_rendering``, rendered in 3D).

    The slice planes are not drawn in the 3D view (Slicer leaves them off by default too): drawn there, opaque and
    through the volume's centre, they hid every surface behind the plane that faces the camera; lung2's lesion,
    posterior, vanished behind the coronal plane (issue 21, "the 3D view does not show the segment")."""
    display = slicer_app.display_manager
    slice_views = slicer_app.view_manager.get_slice_views()
    if volume_rendering:  # slow on a CPU renderer (llvmpipe): off unless asked for
        display.show_volume(node, vr_preset=VOLUME_RENDERING_PRESET, do_reset_views=True)
    else:
        display.show_volume_in_slice_background(node)
        for view in slice_views:  # the planes frame the 3D camera on the scan (an empty 3D view frames nothing)
            view.set_visible_in_3d(True)
        display.reset_views()
    for view in slice_views:
        view.set_visible_in_3d(False)


def surface_name() -> str:
    return slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()


def show_surfaces(segmentation_node, threed_views) -> bool:
    """The segments as closed surfaces in the 3D views; True when the surfaces were made now.  Writing a segment's
    voxels drops the closed-surface representation, and Segment Editor's "show 3D" only makes it for segments that
    exist when it is switched on, so this runs after every change."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0 or segmentation.ContainsRepresentation(surface_name()):
        return False
    segmentation_node.CreateClosedSurfaceRepresentation()
    for view in threed_views:
        view.schedule_render()  # the new surface actor: the 3D view's next frame
    return True


def surface_points(segmentation_node) -> int:
    """Points of all segments' surfaces (0 when there is none)."""
    segmentation = segmentation_node.GetSegmentation()
    total = 0
    for segment_id in segmentation.GetSegmentIDs():
        surface = segmentation.GetSegment(segment_id).GetRepresentation(surface_name())
        total += surface.GetNumberOfPoints() if surface is not None else 0
    return total
