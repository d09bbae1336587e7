"""Slicing a (k, j, i) volume along an anatomical or index axis.

``axial``, ``coronal`` and ``sagittal`` pick the index axis whose direction is closest to the superior, anterior or
left axis, as 3D Slicer's red, green and yellow views do; ``k``, ``j`` and ``i`` pick an index axis directly.

In every slice the rows are the higher and the columns the lower of the two in-plane index axes:

| slice axis | numpy slice       | rows (box y) | columns (box x) |
|------------|-------------------|--------------|-----------------|
| k          | ``array[k, :, :]`` | j            | i               |
| j          | ``array[:, j, :]`` | k            | i               |
| i          | ``array[:, :, i]`` | k            | j               |

so a box ``X0,Y0,X1,Y1`` on an axial slice of an identity-direction volume spans i = X0..X1 and j = Y0..Y1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import OptionError

ANATOMICAL_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}  # LPS component of the slice normal: S, P, L
INDEX_AXES = {"k": 0, "j": 1, "i": 2}  # numpy axis of each index axis
AXIS_CHOICES = (*ANATOMICAL_AXES, *INDEX_AXES)


def numpy_axis(axis: str, direction: tuple[float, ...]) -> int:
    """Numpy axis (0 = k, 1 = j, 2 = i) that slices along ``axis``."""
    name = (axis or "axial").lower()
    if name in INDEX_AXES:
        return INDEX_AXES[name]
    if name not in ANATOMICAL_AXES:
        raise OptionError(f"--axis must be one of {', '.join(AXIS_CHOICES)}, got {axis!r}")
    columns = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))  # column c = LPS direction of index c
    index_axis = int(np.argmax(columns[ANATOMICAL_AXES[name], :]))  # 0 = i, 1 = j, 2 = k
    return 2 - index_axis


def slice_count(shape: tuple[int, int, int], np_axis: int) -> int:
    return shape[np_axis]


def take_slice(volume: NDArray[Any], np_axis: int, index: int) -> NDArray[Any]:
    """The 2D slice (a view) at ``index`` along ``np_axis``, rows/columns as in the module table."""
    plane: NDArray[Any] = np.take(volume, index, axis=np_axis)
    return plane


def put_slice(volume: NDArray[Any], np_axis: int, index: int, plane: NDArray[Any]) -> None:
    selector: list[slice | int] = [slice(None)] * 3
    selector[np_axis] = index
    volume[tuple(selector)] = plane


def index_name(np_axis: int) -> str:
    """The index letter of a numpy axis: 0 -> "k", 1 -> "j", 2 -> "i"."""
    return "kji"[np_axis]


def index_axis(letter: str) -> int:
    """The numpy axis of an index letter: "k" -> 0, "j" -> 1, "i" -> 2 (the inverse of :func:`index_name`)."""
    return INDEX_AXES[letter]
