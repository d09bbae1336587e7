"""Draw a box by dragging in a slice view: press at one corner, drag, release at the opposite corner.

Slicer's own ROI placement is click, move, click; the issue (and every annotator) expects a drag.  While the "draw
box" mode is on, this observer takes the left button in the slice views before Slicer's interactor style does
(higher priority + abort flag), shows a preview ROI while dragging and, on release, hands the two corners (world
coordinates, from the slice node's XY-to-RAS matrix) to ``on_box(slice_node, corner0, corner1)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from vtkmodules.vtkCommonCore import vtkCommand

PRIORITY = 100.0  # above vtkMRMLViewInteractorStyle (0.0): our observer sees the button first
MIN_PIXELS = 3  # a shorter drag is a click: ignored, the mode stays on


def xy_to_world(slice_node, x: float, y: float) -> np.ndarray:
    matrix = slice_node.GetXYToRAS()
    point = matrix.MultiplyPoint((float(x), float(y), 0.0, 1.0))
    return np.asarray(point[:3])


def world_to_xy(slice_node, point) -> np.ndarray:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    inverse = vtkMatrix4x4()
    vtkMatrix4x4.Invert(slice_node.GetXYToRAS(), inverse)
    return np.asarray(inverse.MultiplyPoint((*[float(v) for v in point], 1.0))[:2])


class BoxDrag:
    """Observes every slice view's interactor; active only between ``arm()`` and the release that ends a drag."""

    def __init__(self, slice_views, scene, on_box: Callable, on_preview: Callable | None = None) -> None:
        self.scene = scene
        self.on_box = on_box
        self.armed = False
        self._start = None  # (view, slice node, display x, y)
        self._preview = None
        self._tags = []
        for view in slice_views:
            interactor = view.interactor()
            for event, handler in ((vtkCommand.LeftButtonPressEvent, self._press),
                                   (vtkCommand.MouseMoveEvent, self._move),
                                   (vtkCommand.LeftButtonReleaseEvent, self._release)):
                tag = interactor.AddObserver(event, lambda obj, ev, v=view, h=handler: h(v, obj), PRIORITY)
                self._tags.append((interactor, tag))

    def arm(self) -> None:
        self.armed = True

    def disarm(self) -> None:
        self.armed = False
        self._start = None
        self._remove_preview()

    def _abort(self, interactor) -> None:
        for owner, tag in self._tags:
            if owner is interactor:
                command = owner.GetCommand(tag)
                if command is not None:
                    command.SetAbortFlag(1)

    def _press(self, view, interactor) -> None:
        if not self.armed:
            return
        x, y = interactor.GetEventPosition()
        self._start = (view, view.get_view_node(), x, y)
        self._abort(interactor)

    def _move(self, view, interactor) -> None:
        if self._start is None or self._start[0] is not view:
            return
        _, node, x0, y0 = self._start
        x, y = interactor.GetEventPosition()
        self._show_preview(node, xy_to_world(node, x0, y0), xy_to_world(node, x, y))
        self._abort(interactor)

    def _release(self, view, interactor) -> None:
        if self._start is None or self._start[0] is not view:
            return
        _, node, x0, y0 = self._start
        x, y = interactor.GetEventPosition()
        self._abort(interactor)
        self._start = None
        self._remove_preview()
        if abs(x - x0) < MIN_PIXELS or abs(y - y0) < MIN_PIXELS:
            return  # a click, not a box: stay armed
        self.armed = False
        self.on_box(node, xy_to_world(node, x0, y0), xy_to_world(node, x, y))

    # -- a plain ROI as the rubber band (the real box is made by the shared logic on release) -------------------
    def _show_preview(self, slice_node, p0, p1) -> None:
        if self._preview is None:
            self._preview = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box (drawing)")
            self._preview.CreateDefaultDisplayNodes()
            self._preview.GetDisplayNode().SetFillOpacity(0.0)
            self._preview.GetDisplayNode().SetHandlesInteractive(False)
            # Shown in the view drawn in only: shown in every view, each mouse move re-rendered all four (llvmpipe,
            # on the cores the engine encodes on).
            self._preview.GetDisplayNode().SetViewNodeIDs([slice_node.GetID()])
        normal = np.asarray(slice_node.GetSliceToRAS().MultiplyPoint((0.0, 0.0, 1.0, 0.0))[:3])
        centre = (p0 + p1) / 2.0
        size = np.abs(p1 - p0) + 0.5 * np.abs(normal)  # thin across the slice plane
        self._preview.SetXYZ(*centre)
        self._preview.SetSize(*size)

    def _remove_preview(self) -> None:
        if self._preview is not None:
            self.scene.RemoveNode(self._preview)
            self._preview = None
