"""Geometry on real files: axis choice, slice orientation, and masks that land on the right voxels after writing.

Files with non-identity directions used here: brain1 (y flipped), the RECIST npz (i and j swapped, k flipped), and
a lung CT crop that we permute and flip with SimpleITK (same physical space, different index order).
"""

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.protocol import Box, axes
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.volumeio.files import read_volume, write_label

from conftest import shared_path

FORMATS = [".nii.gz", ".nrrd", ".seg.nrrd", ".mha"]


def physical_points(image: sitk.Image, mask_kji: np.ndarray) -> np.ndarray:
    points = [image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))) for k, j, i in np.argwhere(mask_kji)]
    return np.array(sorted(np.round(points, 3).tolist()))


def read_back(path) -> sitk.Image:
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() > 1:  # a .seg.nrrd with overlapping layers
        raise AssertionError("unexpected multi-layer segmentation")
    return image


@pytest.fixture(scope="module")
def lung_crop(tmp_path_factory):
    """Real CT with the lung1 tumour, anisotropic (0.57 x 0.57 x 5 mm)."""
    image = sitk.ReadImage(str(shared_path("pyradiomics", "lung1_image.nrrd")))[150:350, 250:450, 26:42]
    folder = tmp_path_factory.mktemp("geometry")
    path = folder / "identity.nrrd"
    sitk.WriteImage(image, str(path))
    # Same physical space, index axes permuted and two of them flipped: direction is no longer identity.
    permuted = sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, True])
    permuted_path = folder / "permuted.nrrd"
    sitk.WriteImage(permuted, str(permuted_path))
    return path, permuted_path


def test_anatomical_axes_follow_the_direction_matrix(lung_crop):
    plain, permuted = (read_volume(p) for p in lung_crop)
    assert [axes.numpy_axis(a, plain.direction) for a in ("axial", "coronal", "sagittal")] == [0, 1, 2]
    # PermuteAxes([2, 0, 1]): new i = old k, new j = old i, new k = old j.
    assert axes.numpy_axis("axial", permuted.direction) == 2  # old k is now i
    assert axes.numpy_axis("sagittal", permuted.direction) == 1  # old i is now j
    assert axes.numpy_axis("coronal", permuted.direction) == 0  # old j is now k
    assert axes.numpy_axis("k", permuted.direction) == 0


def test_same_anatomical_slice_shows_same_voxels_in_both_index_orders(lung_crop):
    plain, permuted = (read_volume(p) for p in lung_crop)
    original = sitk.ReadImage(str(lung_crop[0]))
    moved = sitk.ReadImage(str(lung_crop[1]))
    k = 8
    point = original.TransformIndexToPhysicalPoint((0, 0, k))
    index_in_moved = moved.TransformPhysicalPointToIndex(point)
    axis = axes.numpy_axis("axial", permuted.direction)
    plane_plain = axes.take_slice(plain.array, 0, k)
    plane_moved = axes.take_slice(permuted.array, axis, index_in_moved[2 - axis])
    # Same set of voxel values, rearranged by the permutation and flips only.
    assert sorted(plane_plain.ravel()) == sorted(plane_moved.ravel())
    assert plane_moved.shape == plane_plain.shape[::-1]


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_mask_round_trips_through_every_format_on_real_ct(segmenter, cache, lung_crop, tmp_path, axis):
    volume = read_volume(lung_crop[1])  # the non-identity-direction copy
    session = VolumeSession(segmenter, volume, "lung", axis, cache)
    rows, cols = session.slice_shape
    index = session.slice_count // 2
    box = Box(cols * 0.3, rows * 0.3, cols * 0.7, rows * 0.7)
    result = session.segment_slice(index, box)
    mask = session.empty_mask()
    axes.put_slice(mask, session.np_axis, index, result.mask)
    assert mask.any(), "the model segmented nothing inside a box on lung tissue"
    # Only the prompted slice, only inside the box (mask voxels may not exceed the box by more than a voxel).
    others = np.delete(mask, index, axis=session.np_axis)
    assert not others.any()
    plane = axes.take_slice(mask, session.np_axis, index)
    ys, xs = np.nonzero(plane)
    assert xs.min() >= box.x0 - 1 and xs.max() <= box.x1 + 1 and ys.min() >= box.y0 - 1 and ys.max() <= box.y1 + 1
    reference = sitk.ReadImage(str(lung_crop[1]))
    expected_points = physical_points(reference, mask)
    for ext in FORMATS:
        written = read_back(write_label(tmp_path / f"mask{ext}", mask, volume))
        back = sitk.GetArrayFromImage(written) > 0
        np.testing.assert_array_equal(back, mask, err_msg=ext)
        np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(physical_points(written, back), expected_points, atol=1e-3)


@pytest.mark.parametrize("parts", [("pyradiomics", "brain1_image.nrrd"),
                                   ("medsam2_recist", "CT_Lesion_000002_03_01_035-047.npz")])
def test_written_label_keeps_the_file_geometry(tmp_path, parts):
    volume = read_volume(shared_path(*parts))
    assert not np.allclose(volume.direction, np.eye(3).ravel())
    mask = np.zeros(volume.array.shape, dtype=bool)
    mask[2, 5:9, 10:20] = True  # asymmetric on purpose: a flip or transpose would show
    for ext in (".nii.gz", ".nrrd"):
        written = sitk.ReadImage(str(write_label(tmp_path / f"m{ext}", mask, volume)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written) > 0, mask)
        np.testing.assert_allclose(written.GetDirection(), volume.direction, atol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), volume.origin, atol=1e-4)
        np.testing.assert_allclose(written.GetSpacing(), volume.spacing, rtol=1e-6)


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, lung_crop):
    volume = read_volume(lung_crop[0])
    target = tmp_path / "out.nii.gz"
    with pytest.raises(ValueError):
        write_label(target, np.zeros((2, 2, 2), dtype=bool), volume)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_label(target, np.zeros(volume.array.shape, dtype=bool), volume)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def _index_flipped(volume, axis_c: int):
    """The same voxel centres with index axis ``axis_c`` (0 i, 1 j, 2 k) stored the other way round: what 3D Slicer
    holds for some files (brain2 in the web app), a different header for the same physical grid."""
    matrix = volume.ijk_to_lps()
    far = np.zeros(4)
    far[3] = 1.0
    far[axis_c] = volume.array.shape[2 - axis_c] - 1
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3).copy()
    direction[:, axis_c] *= -1
    from dataclasses import replace

    return replace(volume, array=np.flip(volume.array, axis=2 - axis_c).copy(), origin=tuple((matrix @ far)[:3]),
                   direction=tuple(direction.ravel()), path="")


def test_a_label_saved_from_a_flipped_grid_gets_the_image_files_own_header(tmp_path):
    """The web app's Save: Slicer's grid of brain2 is its file's with k reversed; the label written goes back onto
    the file's own header (same direction and origin as the image), with every voxel at the same physical place."""
    from MedSAMSlicerLib.volumeio.files import on_file_grid, read_label

    image_path = shared_path("pyradiomics", "brain2_image.nrrd")
    image = read_volume(image_path)
    label = read_label(shared_path("pyradiomics", "brain2_label.nrrd"), image).astype(np.uint8)
    assert label.any()
    slicer_grid = _index_flipped(image.with_array(label), 2)
    assert not slicer_grid.same_grid(image)  # the two headers differ ...

    mask, reference = on_file_grid(slicer_grid.array, slicer_grid, image_path)
    assert reference.same_grid(image) and reference.path == str(image_path)
    np.testing.assert_array_equal(mask, label)
    written = read_back(write_label(tmp_path / "saved.nii.gz", mask, reference))
    original = sitk.ReadImage(str(image_path))
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    # ... and the voxels sit where they sat on Slicer's grid
    flipped_file = tmp_path / "as_slicer.nii.gz"
    write_label(flipped_file, slicer_grid.array, slicer_grid)
    np.testing.assert_array_equal(physical_points(written, sitk.GetArrayFromImage(written)),
                                  physical_points(read_back(flipped_file), slicer_grid.array))


def test_a_label_on_another_grid_than_the_file_is_left_as_it_is(tmp_path):
    from MedSAMSlicerLib.volumeio.files import on_file_grid

    brain = read_volume(shared_path("pyradiomics", "brain2_image.nrrd"))
    mask = np.zeros(brain.array.shape, np.uint8)
    moved, reference = on_file_grid(mask, brain, shared_path("pyradiomics", "lung2_image.nrrd"))
    assert moved is mask and reference is brain
    moved, reference = on_file_grid(mask, brain, tmp_path / "no-such-file.nrrd")
    assert moved is mask and reference is brain
