"""A volume in memory: the voxel array (numpy order ``(k, j, i)``) and its geometry, in a frame that it names.

Spacing, origin and direction are in ITK order ``(i, j, k)``.  ``frame`` says which physical space origin and
direction are in: ``"LPS"`` (files, ITK, DICOM, the engine server's wire) or ``"RAS"`` (3D Slicer's world).  The two
differ by the sign of their first two axes, so :meth:`Volume.in_frame` converts exactly (a sign flip, no rounding).
The engine needs only which index axis points most along each anatomical axis, which is the same in both frames;
writers and the wire need LPS and ask for it with ``in_frame("LPS")``.

Reading and writing files is :mod:`MedSAMSlicerLib.volumeio`'s job; this is the container the rooms pass around.
:func:`check_voxels` is the one check of a voxel array (3D, not empty, numbers, finite) that every entry point runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import InputImageError

Frame = Literal["LPS", "RAS"]
FRAMES: tuple[Frame, ...] = ("LPS", "RAS")
_FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS: x and y change sign, z stays


@dataclass
class Volume:
    array: NDArray[Any]  # (k, j, i); read-only, never modified by this package
    spacing: tuple[float, float, float]  # mm along i, j, k
    origin: tuple[float, float, float]  # in ``frame``
    direction: tuple[float, ...]  # 3x3 row-major; column c is the direction of index axis c, in ``frame``
    path: str = ""
    modality: str | None = None
    already_normalized: bool = False  # npz images are stored windowed to 0..255
    embedded_label: NDArray[Any] | None = field(default=None, repr=False)  # npz ``gts``
    frame: Frame = "LPS"

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"a volume's frame is 'LPS' or 'RAS', got {self.frame!r}")

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        i, j, k = self.spacing
        return (k, j, i)

    def in_frame(self, frame: Frame) -> Volume:
        """This volume with its origin and direction in ``frame`` (itself when already there; voxels shared)."""
        if frame not in FRAMES:
            raise ValueError(f"a volume's frame is 'LPS' or 'RAS', got {frame!r}")
        if frame == self.frame:
            return self
        origin, direction = other_frame(self.origin, self.direction)
        return replace(self, origin=origin, direction=direction, frame=frame)

    def ijk_to_lps(self) -> NDArray[np.float64]:
        lps = self.in_frame("LPS")
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(lps.direction).reshape(3, 3) * np.asarray(lps.spacing)[None, :]
        matrix[:3, 3] = lps.origin
        return matrix

    def same_grid(self, other: Volume, tolerance: float = 1e-4) -> bool:
        other = other.in_frame(self.frame)
        return (self.array.shape == other.array.shape
                and bool(np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=tolerance))
                and bool(np.allclose(self.origin, other.origin, rtol=tolerance, atol=1e-3))
                and bool(np.allclose(self.direction, other.direction, atol=tolerance)))

    def with_array(self, array: NDArray[Any]) -> Volume:
        return Volume(array, self.spacing, self.origin, self.direction, self.path, self.modality,
                      self.already_normalized, frame=self.frame)


def other_frame(origin: tuple[float, ...], direction: tuple[float, ...]) -> tuple[tuple[float, float, float],
                                                                               tuple[float, ...]]:
    """Origin and direction in the other frame (LPS <-> RAS: the first two physical axes change sign)."""
    flipped = (np.asarray(direction, dtype=float).reshape(3, 3) * _FLIP[:, None]).ravel()
    return _triple(np.asarray(origin, dtype=float) * _FLIP), tuple(float(v) for v in flipped)


def volume_from_matrix(array: NDArray[Any], ijk_to_physical: NDArray[Any], frame: Frame, path: str = "",
                       modality: str | None = None) -> Volume:
    """A Volume from a 4x4 index-to-physical matrix in ``frame`` (e.g. Slicer's IJK-to-RAS): spacing is the length
    of each index column, direction the unit columns."""
    matrix = np.asarray(ijk_to_physical, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    directions = matrix[:3, :3] / spacing[None, :]
    return Volume(array, _triple(spacing), _triple(matrix[:3, 3]), tuple(float(v) for v in directions.ravel()),
                  path=path, modality=modality, frame=frame)


def check_voxels(array: NDArray[Any], name: str = "the volume") -> NDArray[Any]:
    """Raise :class:`InputImageError` with one line unless ``array`` is a 3D, non-empty array of finite numbers."""
    if array.ndim != 3:
        raise InputImageError(f"{name} has shape {array.shape}; give one 3D (k, j, i) array")
    if min(array.shape) < 1:
        raise InputImageError(f"{name} of shape {array.shape} has no voxels")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
            or array.dtype == np.bool_):
        raise InputImageError(f"voxel type {array.dtype} is not a real number type")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputImageError(f"{name} has {bad} NaN or infinite voxels")
    return array


def _triple(values: NDArray[Any]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
