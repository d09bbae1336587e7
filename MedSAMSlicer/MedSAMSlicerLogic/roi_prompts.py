"""Markups ROI boxes <-> box prompts on one slice of a volume.

A box prompt is a rectangle on one slice (engine convention, ``MedSAMSlicerLib.axes``): the slice is picked by an
index axis (i, j or k) and an index, the rectangle is ``Box(x0, y0, x1, y1)`` in that slice's pixels, ``x`` along
the lower and ``y`` along the higher of the two other index axes, both ends inclusive.

An ROI covers a voxel when the voxel's centre lies inside it.  The ROIs made by :func:`place_roi_on_view` are aligned
with the volume's index axes and half a voxel thick, so they cover exactly one slice; the user may drag their faces
to make them thicker, and a thick ROI then also gives the slice range to propagate over (its middle slice is the key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from MedSAMSlicerLib.protocol.boxes import Box, checked_box
from MedSAMSlicerLib.errors import BoxError

from .choices import RANGE_MODE_NAMES
from .geometry import (ALIGNED_COS, array_to_matrix, ijk_to_world_points, matrix_to_array, node_to_world,
                       spacing_and_directions, world_to_ijk_points)
from .volume_nodes import VolumeOnGrid

SLICE_AXIS_ATTRIBUTE = "MedSAMSlicer.SliceAxis"  # "i", "j" or "k": the index axis the box was drawn across
BOX_ATTRIBUTE = "MedSAMSlicer.Box"  # "1" on every ROI this module made
AXIS_LETTERS = "ijk"  # IJK order: index 0 = i (numpy axis 2), 2 = k (numpy axis 0)
_EDGE = 1e-3  # voxels: a face exactly on a voxel centre covers that voxel despite rounding


@dataclass(frozen=True)
class SlicePrompt:
    """One ROI as the engine sees it."""

    axis: str  # index axis across the slice: "i", "j" or "k"
    index: int  # key slice along that axis
    box: Box  # in the key slice's pixels
    first: int  # first and last slice the ROI covers along the axis (inclusive)
    last: int
    roi_name: str = ""

    @property
    def np_axis(self) -> int:
        return 2 - AXIS_LETTERS.index(self.axis)

    @property
    def covers_range(self) -> bool:
        return self.last > self.first


def in_plane_axes(axis: str) -> tuple[int, int]:
    """IJK indices of the slice's x (columns) and y (rows) axes, as in ``MedSAMSlicerLib.axes``."""
    others = [c for c in range(3) if c != AXIS_LETTERS.index(axis)]
    return others[0], others[1]


def slice_shape(grid: VolumeOnGrid, axis: str) -> tuple[int, int]:
    shape = list(grid.shape_kji)
    del shape[2 - AXIS_LETTERS.index(axis)]
    return shape[0], shape[1]


def _roi_corners_world(roi_node) -> tuple[np.ndarray, np.ndarray]:
    """The ROI's 8 corners and its 3 unit axes (columns), in world coordinates."""
    object_to_world = matrix_to_array(roi_node.GetObjectToWorldMatrix())
    half = np.asarray(roi_node.GetSize(), dtype=float) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    corners = ijk_to_world_points(object_to_world, signs * half)  # same homogeneous maths as for volumes
    axes = object_to_world[:3, :3]
    return corners, axes / np.maximum(np.linalg.norm(axes, axis=0), 1e-12)


def _check_aligned(roi_node, grid: VolumeOnGrid, roi_axes: np.ndarray) -> None:
    _, directions = spacing_and_directions(grid.ijk_to_world)
    for column in range(3):
        best = float(np.max(np.abs(directions.T @ roi_axes[:, column])))
        if best < ALIGNED_COS:
            angle = math.degrees(math.acos(min(1.0, best)))
            raise BoxError(f"box {roi_node.GetName()} is not on a slice of {grid.name}: it is turned {angle:.0f} "
                           "degrees against the volume's slices; delete it and use 'Draw box', which follows them")


def prompt_from_roi(roi_node, grid: VolumeOnGrid) -> SlicePrompt:
    """The slice, box and slice range an ROI stands for on ``grid``; :class:`BoxError` if it stands for none."""
    if roi_node is None:
        raise BoxError("no box: click 'Draw box' and drag the box's handles around the object")
    name = roi_node.GetName()
    corners, roi_axes = _roi_corners_world(roi_node)
    _check_aligned(roi_node, grid, roi_axes)
    corners_ijk = world_to_ijk_points(grid.ijk_to_world, corners)
    low, high = corners_ijk.min(axis=0), corners_ijk.max(axis=0)
    axis = roi_node.GetAttribute(SLICE_AXIS_ATTRIBUTE)
    if axis not in tuple(AXIS_LETTERS):
        axis = AXIS_LETTERS[int(np.argmin(high - low))]  # a hand-made ROI: its thinnest side is across the slice
    across = AXIS_LETTERS.index(axis)
    count = grid.shape_kji[2 - across]
    first, last = math.ceil(low[across] - _EDGE), math.floor(high[across] + _EDGE)
    centre = (low[across] + high[across]) / 2.0
    if first > last:  # thinner than the gap between two slice centres: the nearest slice
        first = last = math.floor(centre + 0.5)
    if last < 0 or first > count - 1:
        raise BoxError(f"box {name} lies outside {grid.name}: it is at slice {math.floor(centre + 0.5)} along {axis}, "
                       f"which runs 0..{count - 1}; draw the box on a slice of this volume")
    first, last = max(first, 0), min(last, count - 1)
    index = int(min(max(math.floor(centre + 0.5), first), last))  # middle slice, halves round up
    x_axis, y_axis = in_plane_axes(axis)
    box = Box(float(math.ceil(low[x_axis] - _EDGE)), float(math.ceil(low[y_axis] - _EDGE)),
              float(math.floor(high[x_axis] + _EDGE)), float(math.floor(high[y_axis] + _EDGE)))
    try:
        box = checked_box(box, slice_shape(grid, axis))
    except BoxError as error:
        raise BoxError(f"box {name} on {grid.name}: {error}") from error
    return SlicePrompt(axis, index, box, first, last, name)


def prompts_from_rois(roi_nodes, grid: VolumeOnGrid) -> list[SlicePrompt]:
    """Several key boxes for one object: same slice orientation, at most one per slice."""
    prompts = [prompt_from_roi(roi, grid) for roi in roi_nodes]
    if not prompts:
        raise BoxError("no box: click 'Draw box' and drag the box's handles around the object")
    axes_used = sorted({p.axis for p in prompts})
    if len(axes_used) > 1:
        raise BoxError(f"the key boxes lie across different axes ({', '.join(axes_used)}); draw all boxes of one "
                       "object in the same view (red, green or yellow)")
    seen: dict[int, str] = {}
    for prompt in prompts:
        if prompt.index in seen:
            raise BoxError(f"boxes {seen[prompt.index]} and {prompt.roi_name} are both on slice {prompt.index}; "
                           "delete one of them")
        seen[prompt.index] = prompt.roi_name
    return prompts


def propagation_range(prompts: list[SlicePrompt], mode: str) -> tuple[int, int] | None:
    """Slices to propagate over: ``"roi"`` = what the boxes cover, ``"stop"`` = the whole volume with the stop rule,
    ``"auto"`` = the boxes' range when a box is thicker than one slice, else the stop rule."""
    if mode not in RANGE_MODE_NAMES:
        raise BoxError(f"unknown range mode {mode!r}; use one of: {', '.join(RANGE_MODE_NAMES)}")
    if mode == "stop" or (mode == "auto" and not any(p.covers_range for p in prompts)):
        return None
    return min(p.first for p in prompts), max(p.last for p in prompts)


def view_slice(slice_node, grid: VolumeOnGrid) -> tuple[str, int, int, np.ndarray]:
    """The index axis a slice view looks across (the one nearest its normal), the slice it shows along that axis
    (may lie outside 0 .. count-1), the slice count, and the view's centre in voxels."""
    slice_to_ras = matrix_to_array(slice_node.GetSliceToRAS())
    normal, view_centre = slice_to_ras[:3, 2], slice_to_ras[:3, 3]
    _, directions = spacing_and_directions(grid.ijk_to_world)
    across = int(np.argmax(np.abs(directions.T @ (normal / np.linalg.norm(normal)))))
    centre = world_to_ijk_points(grid.ijk_to_world, view_centre)[0]
    return AXIS_LETTERS[across], math.floor(centre[across] + 0.5), int(grid.shape_kji[2 - across]), centre


def place_roi_on_view(scene, slice_node, volume_node, grid: VolumeOnGrid, roi_node=None,
                      fraction: float = 0.25, corners_world=None) -> tuple[object, SlicePrompt, str]:
    """Put a flat ROI on the volume slice the view shows, centred in the view, ``fraction`` of its field of view wide;
    or, with ``corners_world`` (two opposite corners of a box dragged in the view, world coordinates), spanning them.

    The ROI follows the volume's index axes (so its box is exact on any volume orientation) and is half a voxel
    thick across the slice.  Returns the ROI, the prompt it stands for, and a note for the user.
    """
    axis, index, count, centre = view_slice(slice_node, grid)
    across = AXIS_LETTERS.index(axis)
    spacing, directions = spacing_and_directions(grid.ijk_to_world)
    normal = matrix_to_array(slice_node.GetSliceToRAS())[:3, 2]
    alignment = np.abs(directions.T @ (normal / np.linalg.norm(normal)))  # how oblique the view is (the note)
    view_name = slice_node.GetName()
    if not 0 <= index < count:
        raise BoxError(f"the {view_name} view shows no slice of {grid.name} (slice {index} along {axis}, which runs "
                       f"0..{count - 1}); scroll the {view_name} view into the volume and draw again")
    dimensions_ijk = np.array(grid.shape_kji[::-1], dtype=float)
    if corners_world is not None:  # a dragged box (browser app): exactly what the user drew, checked by the prompt
        ends = world_to_ijk_points(grid.ijk_to_world, np.asarray(corners_world, dtype=float).reshape(2, 3))
        centre, size_ijk = ends.mean(axis=0), np.abs(ends[1] - ends[0])
    else:
        field_of_view = np.asarray(slice_node.GetFieldOfView()[:2], dtype=float)
        width_mm = max(float(field_of_view.min()) * fraction, 1e-6)
        size_ijk = np.clip(width_mm / spacing, 4.0, dimensions_ijk - 1.0)  # at least 4 voxels, at most the volume
        centre = np.clip(centre, size_ijk / 2.0, dimensions_ijk - 1.0 - size_ijk / 2.0)
    centre[across] = index
    size_ijk[across] = 0.5  # half a voxel: covers the one slice whatever the rounding
    node_matrix = np.linalg.inv(node_to_world(volume_node))  # ROI lives beside the volume, under its transform
    ijk_to_node = node_matrix @ grid.ijk_to_world
    object_to_node = np.eye(4)
    rotation = ijk_to_node[:3, :3] / spacing
    if np.linalg.det(rotation) < 0:  # a left-handed volume (one axis flipped): keep the ROI a proper rotation
        rotation[:, across] *= -1.0  # by flipping the flat axis, whose sign does not matter
    object_to_node[:3, :3] = rotation
    object_to_node[:3, 3] = ijk_to_world_points(ijk_to_node, centre)[0]
    if roi_node is None:
        roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName("MedSAM box"))
        roi_node.CreateDefaultDisplayNodes()
    if volume_node.GetParentTransformNode() is not None:
        roi_node.SetAndObserveTransformNodeID(volume_node.GetParentTransformNode().GetID())
    roi_node.SetAndObserveObjectToNodeMatrix(array_to_matrix(object_to_node))
    roi_node.SetSize(*(size_ijk * spacing))
    roi_node.SetAttribute(SLICE_AXIS_ATTRIBUTE, axis)
    roi_node.SetAttribute(BOX_ATTRIBUTE, "1")
    if corners_world is None:
        # Put the view's plane through the box's slice: after a jump that does not snap to a voxel (crosshair,
        # markup point) the plane can lie up to half a voxel off, and a 2D view shows a half-voxel ROI only where
        # its plane cuts it: no outline, no handles to drag (audit R3).  The voxels the prompt covers are unchanged.
        slice_node.JumpSliceByOffsetting(*ijk_to_world_points(grid.ijk_to_world, centre)[0])
    prompt = prompt_from_roi(roi_node, grid)
    angle = math.degrees(math.acos(min(1.0, float(alignment[across]))))
    note = f"box on slice {index} of {count} along {axis} ({view_name} view)"
    if angle > 0.5:
        note += (f"; the {view_name} view is turned {angle:.0f} degrees against the volume's slices, so the box "
                 "follows the volume's nearest slice")
    return roi_node, prompt, note
