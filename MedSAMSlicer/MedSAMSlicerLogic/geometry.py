"""Voxel grids of MRML nodes: IJK <-> world (RAS) matrices, and whether two grids share a lattice.

Slicer keeps a volume's geometry as an IJK-to-RAS matrix, and a node may sit under a parent transform; "world" here
means RAS after that transform.  Only linear parent transforms are supported: a warped volume has no voxel lattice
a box could be drawn on.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from MedSAMSlicerLib.errors import InputImageError

# Two directions closer than this are "the same axis" (about 5 degrees).  Slicer's views and volumes are usually
# aligned exactly; a few degrees of slack accept a box drawn on a slightly oblique view.
ALIGNED_COS = float(np.cos(np.radians(5.0)))


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def node_to_world(node) -> np.ndarray:
    """4x4 matrix from the node's own coordinates to world coordinates (identity without a parent transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, matrix):
        raise InputImageError(f"{node.GetName()} is under the non-linear transform {parent.GetName()}; harden or "
                              "remove the transform before segmenting")
    return matrix_to_array(matrix)


def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's IJK-to-RAS matrix, without its parent transform."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def ijk_to_world(volume_node) -> np.ndarray:
    return node_to_world(volume_node) @ ijk_to_ras(volume_node)


def world_to_ijk_points(ijk_to_world_matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 3) world points to continuous (n, 3) IJK coordinates (voxel centres at integers)."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    homogeneous = np.c_[points, np.ones(len(points))]
    return (np.linalg.solve(ijk_to_world_matrix, homogeneous.T).T)[:, :3]


def ijk_to_world_points(ijk_to_world_matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.atleast_2d(np.asarray(points, dtype=float))
    return (ijk_to_world_matrix @ np.c_[points, np.ones(len(points))].T).T[:, :3]


def spacing_and_directions(ijk_to_world_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel size along i, j, k (mm) and the unit world direction of each index axis (as columns)."""
    linear = ijk_to_world_matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return spacing, linear / spacing


def same_lattice(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-3) -> bool:
    """True when two IJK-to-world matrices put voxel centres at the same points (extents may differ).

    Same spacing and directions, and the origin of one falls on a voxel centre of the other.
    """
    if not np.allclose(a[:3, :3], b[:3, :3], rtol=tolerance, atol=tolerance * np.abs(a[:3, :3]).max()):
        return False
    offset = world_to_ijk_points(a, b[:3, 3])[0]
    return bool(np.allclose(offset, np.round(offset), atol=tolerance))


def describe_grid(dimensions, ijk_to_world_matrix: np.ndarray) -> str:
    spacing, _ = spacing_and_directions(ijk_to_world_matrix)
    size = "x".join(str(int(d)) for d in dimensions)
    return f"{size} voxels of {' x '.join(f'{s:.3g}' for s in spacing)} mm"
