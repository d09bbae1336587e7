"""A volume in memory: the voxel array (numpy order ``(k, j, i)``) and its ITK/LPS geometry.

Spacing, origin and direction are in ITK order ``(i, j, k)`` and LPS physical space, as in the file.  Reading and
writing files is :mod:`MedSAMSlicerLib.volumeio`'s job; the engine only needs this container.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    array: np.ndarray  # (k, j, i); read-only, never modified by this package
    spacing: tuple[float, float, float]  # mm along i, j, k
    origin: tuple[float, float, float]  # LPS
    direction: tuple[float, ...]  # 3x3 row-major; column c is the LPS direction of index axis c
    path: str = ""
    modality: str | None = None
    already_normalized: bool = False  # npz images are stored windowed to 0..255
    embedded_label: np.ndarray | None = field(default=None, repr=False)  # npz ``gts``

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    def ijk_to_lps(self) -> np.ndarray:
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing)[None, :]
        matrix[:3, 3] = self.origin
        return matrix

    def same_grid(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        return (self.array.shape == other.array.shape
                and np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=tolerance)
                and np.allclose(self.origin, other.origin, rtol=tolerance, atol=1e-3)
                and np.allclose(self.direction, other.direction, atol=tolerance))

    def with_array(self, array: np.ndarray) -> "Volume":
        return Volume(array, self.spacing, self.origin, self.direction, self.path, self.modality,
                      self.already_normalized)
