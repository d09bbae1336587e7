"""Box prompts in slice pixel coordinates.

A box is ``(x0, y0, x1, y1)`` in voxel indices of the 2D slice: ``x`` indexes the slice's columns (its second numpy
axis), ``y`` its rows (first numpy axis), both ends inclusive, as the official MedSAM code builds boxes from masks.
On the wire a box is the list ``[x0, y0, x1, y1]`` (:meth:`Box.to_json` / :meth:`Box.from_json`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import BoxError

log = logging.getLogger(__name__)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX_RE = re.compile(",".join([_NUMBER] * 4) + "$")


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def as_array(self) -> NDArray[np.float64]:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    def to_json(self) -> list[float]:
        return [float(self.x0), float(self.y0), float(self.x1), float(self.y1)]

    @classmethod
    def from_json(cls, values: object) -> Box:
        """A Box from ``[x0, y0, x1, y1]`` (a list, tuple, array or Box); anything else is a :class:`BoxError`."""
        if isinstance(values, Box):
            return values
        return cls(*box_values(values))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def __str__(self) -> str:
        return f"{self.x0:g},{self.y0:g},{self.x1:g},{self.y1:g}"


def parse_box(text: str) -> Box:
    match = _BOX_RE.match(text or "")
    if not match:
        raise BoxError(f"box {text!r} must be four numbers X0,Y0,X1,Y1")
    return Box(*(float(v) for v in match.groups()))


def checked_box(box: Box, slice_shape: tuple[int, int], allow_degenerate: bool = False) -> Box:
    """Validate a user box against a slice of ``slice_shape`` = (rows, columns); clip what overhangs the edge.

    A box that overhangs the slice is clipped (a user dragging a handle past the edge means "to the edge"); one
    that does not overlap the slice at all, is inverted or has no area once clipped is an error (the area is
    checked after clipping: on a 1x1 slice, 0,0,1,1 clips to a single point).
    """
    rows, cols = slice_shape
    values = box.as_array()
    if not np.all(np.isfinite(values)):
        raise BoxError(f"box {box} has a non-finite coordinate")
    if box.x1 < box.x0 or box.y1 < box.y0:
        raise BoxError(f"box {box} is inverted: need X0 <= X1 and Y0 <= Y1")
    if box.x1 < 0 or box.y1 < 0 or box.x0 > cols - 1 or box.y0 > rows - 1:
        raise BoxError(f"box {box} lies outside the slice (columns 0..{cols - 1}, rows 0..{rows - 1})")
    clipped = Box(max(box.x0, 0.0), max(box.y0, 0.0), min(box.x1, cols - 1.0), min(box.y1, rows - 1.0))
    if not allow_degenerate and (clipped.width < 1 or clipped.height < 1):
        inside = "" if clipped == box else f" once clipped to the slice ({clipped}; columns 0..{cols - 1}, rows " \
                                           f"0..{rows - 1})"
        raise BoxError(f"box {box} is empty{inside}: it must be at least 1 voxel wide and high")
    if clipped != box:
        log.warning("box %s overhangs the slice; clipped to %s", box, clipped)
    return clipped


def box_values(box: object) -> list[float]:
    """The four numbers of ``box`` (a Box, or any sequence of four numbers) as floats, for the wire."""
    if isinstance(box, Box):
        return box.to_json()
    try:
        if not isinstance(box, Iterable) or isinstance(box, (str, bytes)):
            raise TypeError(box)
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise BoxError(f"a box is four numbers x0,y0,x1,y1, got {box!r}") from None
    if len(values) != 4:
        raise BoxError(f"a box has four numbers x0,y0,x1,y1, got {len(values)}")
    return values


def box_from_mask(mask: NDArray[np.bool_]) -> Box | None:
    """Tight inclusive bounding box of a 2D mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return Box(float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1]))


def jittered_box(box: Box, slice_shape: tuple[int, int], max_shift: int, rng: np.random.Generator) -> Box:
    """Move each side outward by a random 0..max_shift voxels (the MedSAM training/evaluation perturbation)."""
    if max_shift <= 0:
        return box
    rows, cols = slice_shape
    shift = rng.integers(0, max_shift + 1, size=4)
    return Box(max(0.0, box.x0 - shift[0]), max(0.0, box.y0 - shift[1]),
               min(cols - 1.0, box.x1 + shift[2]), min(rows - 1.0, box.y1 + shift[3]))
