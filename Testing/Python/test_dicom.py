"""Reading DICOM: the shared CT series, its flipped label by physical position, descending and oblique copies, a
multi-frame file, and every refusal in one line (exit 2, nothing written)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.cli.main import main
from MedSAMSlicerLib.volumeio.files import read_label, read_volume

from conftest import run_cli_json
from dicom_helpers import (descending, load_series, oblique, rotation, save, shared_label, shared_series)


pytestmark = pytest.mark.usefixtures("cli_disk_cache")  # CLI runs share the session's embeddings


@pytest.fixture(scope="module")
def series():
    return load_series()


def sitk_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_shared_series_reads_sorted_with_gdcm_geometry_and_modality():
    volume = read_volume(shared_series())
    reference = sitk_series(shared_series())
    assert volume.array.shape == (20, 512, 512) and volume.modality == "CT"
    np.testing.assert_allclose(volume.spacing, reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(volume.origin, reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(volume.direction, reference.GetDirection(), atol=1e-9)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.array.min() < -900  # the rescale intercept is applied: Hounsfield units


def test_flipped_label_gives_the_same_physical_mask():
    """The NIfTI label is stored with y flipped (another origin and direction): read_label moves its voxels by
    physical position, exactly what SimpleITK's nearest-neighbour resampling onto the series grid gives."""
    volume = read_volume(shared_series())
    label = read_label(shared_label(), volume)
    stored = sitk.ReadImage(str(shared_label()))
    assert stored.GetDirection()[4] == -1  # the premise: y is flipped in the file
    resampled = sitk.Resample(stored, sitk_series(shared_series()), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(label, sitk.GetArrayFromImage(resampled))
    assert not np.array_equal(label, sitk.GetArrayFromImage(stored))  # index order alone would be wrong
    assert (label == 1).sum() == (sitk.GetArrayFromImage(stored) == 1).sum()


def spleen_box(volume, index: int = 10) -> str:
    label = read_label(shared_label(), volume)
    rows, cols = np.nonzero(label[index] == 1)
    return f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}"


def test_descending_and_oblique_series_give_the_same_physical_mask(capsys, tmp_path, series):
    """Slices stored top first, and the whole series rotated (an oblique acquisition): the reader sorts by position
    along the normal, so the voxels are the same and the mask lands on the same anatomy (its grid rotates along)."""
    plain = save(series, tmp_path / "plain")
    down = descending(series)  # file names follow instance numbers: the file order is reversed too
    save(down, tmp_path / "down")
    matrix = rotation()
    tilted = save(oblique(series, matrix, centre=(0.0, -188.0, -785.0)), tmp_path / "oblique")
    base = read_volume(plain)
    box = spleen_box(base)
    masks = {}
    for name, folder in (("plain", plain), ("down", tmp_path / "down"), ("oblique", tilted)):
        summary = run_cli_json(capsys, "segment", folder, "--box", box, "--slice", 10, "--out", tmp_path / f"{name}.nrrd")
        assert "modality CT" in summary["window_reason"]
        masks[name] = sitk.ReadImage(str(tmp_path / f"{name}.nrrd"))
    arrays = {name: sitk.GetArrayFromImage(image) for name, image in masks.items()}
    assert arrays["plain"][10].sum() > 1000
    assert np.array_equal(arrays["plain"], arrays["down"]) and np.array_equal(arrays["plain"], arrays["oblique"])
    assert masks["down"].GetOrigin() == pytest.approx(masks["plain"].GetOrigin())
    assert masks["down"].GetDirection() == pytest.approx(masks["plain"].GetDirection())
    # physical position of every mask voxel: the oblique one is the plain one rotated about the centre
    points = np.argwhere(arrays["plain"] > 0)[:, ::-1][::97].tolist()
    plain_points = np.array([masks["plain"].TransformIndexToPhysicalPoint(p) for p in points])
    oblique_points = np.array([masks["oblique"].TransformIndexToPhysicalPoint(p) for p in points])
    centre = np.array([0.0, -188.0, -785.0])
    np.testing.assert_allclose(oblique_points, (plain_points - centre) @ matrix.T + centre, atol=1e-3)


def test_multiframe_file_reads_like_the_series(tmp_path, series):
    import highdicom as hd

    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(series[::-1], series_instance_uid=hd.UID(), series_number=5,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(str(path))
    volume = read_volume(path)
    plain = read_volume(save(series, tmp_path / "plain"))
    assert np.array_equal(volume.array, plain.array)
    assert volume.origin == pytest.approx(plain.origin) and volume.spacing == pytest.approx(plain.spacing)
    assert volume.modality == "CT" and volume.source.frame_order == list(range(19, -1, -1))


# ----------------------------------------------------------------------------------------- refusals, one line

def _missing(series):
    return series[:7] + series[8:]


def _duplicated(series):
    from pydicom.uid import generate_uid

    extra = copy.deepcopy(series[7])
    extra.SOPInstanceUID = generate_uid()
    return series + [extra]


def _uneven(series):
    out = [copy.deepcopy(ds) for ds in series]
    position = [float(v) for v in out[7].ImagePositionPatient]
    out[7].ImagePositionPatient = [position[0], position[1], position[2] + 0.6]
    return out


def _tilted(series):
    out = [copy.deepcopy(ds) for ds in series]
    for n, ds in enumerate(out):
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1] + 0.5 * n, position[2]]
        ds.GantryDetectorTilt = 14
    return out


def _mixed(series):
    out = [copy.deepcopy(ds) for ds in series]
    out[3].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    return out


def _rtstruct(series):
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(series[0])
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    del ds.PixelData
    return [ds]


def _htj2k(series):
    from pydicom.encaps import encapsulate

    out = [copy.deepcopy(ds) for ds in series]
    for ds in out:  # the header is refused before any decoding, so the frames need not be real HTJ2K
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K lossless: no decoder installed here
        ds.PixelData = encapsulate([ds.PixelData])
    return out


def _two_series(series):
    from pydicom.uid import generate_uid

    other = generate_uid()
    out = [copy.deepcopy(ds) for ds in series]
    for ds in out[10:]:
        ds.SeriesInstanceUID, ds.SeriesDescription = other, "second series"
    return out


BAD = {"missing": (_missing, "1 slice missing between"), "duplicated": (_duplicated, "duplicated slices"),
       "uneven": (_uneven, "uneven slice spacing"), "tilt": (_tilted, "gantry tilt"),
       "orientations": (_mixed, "different orientations"), "rtstruct": (_rtstruct, "RT structure set"),
       "htj2k": (_htj2k, "High-Throughput JPEG 2000"), "two series": (_two_series, "pick one with --series")}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_series_is_one_line_and_writes_nothing(capsys, tmp_path, series, case):
    make, words = BAD[case]
    if case == "htj2k":
        from pydicom.pixels import get_decoder

        if get_decoder("1.2.840.10008.1.2.4.201").is_available:
            pytest.skip("an HTJ2K decoder is installed here, so that series is not refused")
    folder = save(make(series), tmp_path / "series", names=None)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    out = tmp_path / "out.nii.gz"
    code = main(["segment", str(folder), "--box", "100,100,200,200", "--slice", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("medsam-slicer: error: "), err
    assert words in err, err
    assert "Doe" not in err and "MRN" not in err
    assert not out.exists() and sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    if case == "two series":
        assert "second series, CT, 10 slices" in err


def test_series_option_picks_one_of_several(tmp_path, series):
    two = _two_series(series)
    folder = save(two, tmp_path / "two")
    volume = read_volume(folder, str(two[-1].SeriesInstanceUID))
    assert volume.array.shape[0] == 10 and volume.source.description == "second series"
    first = read_volume(folder, str(two[0].SeriesInstanceUID))
    assert np.array_equal(np.concatenate([first.array, volume.array]), read_volume(save(series, tmp_path / "one")).array)


def test_a_seg_given_as_the_image_and_one_slice_of_a_series_are_refused(capsys, tmp_path, series):
    folder = save(series, tmp_path / "series")
    volume = read_volume(folder)
    from MedSAMSlicerLib.volumeio.dicomseg import write_dicom_seg
    from MedSAMSlicerLib.volumeio.provenance import Provenance

    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[10, 200:220, 200:220] = 1
    seg = write_dicom_seg(tmp_path / "seg.dcm", mask, volume, Provenance("litemedsam", "0" * 64))
    for image, words in ((seg, "is a segmentation (SEG)"), (folder / "IM0003", "one slice of a DICOM series")):
        code = main(["segment", str(image), "--box", "1,1,20,20", "--slice", "0", "--out", str(tmp_path / "o.nrrd")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err


def test_outputs_inside_the_series_folder_are_refused(capsys, tmp_path, series):
    folder = save(series, tmp_path / "series")
    before = sorted(p.name for p in folder.iterdir())
    for extra in (["--out", str(folder / "seg.dcm")], ["--out", str(tmp_path / "a.nrrd"), "--out-dicom", str(folder)]):
        code = main(["segment", str(folder), "--box", "1,1,20,20", "--slice", "0", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "inside the DICOM folder" in err, err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_dicom_seg_from_nrrd_input_or_a_series_without_uids_is_refused_before_the_model(capsys, tmp_path):
    volume = read_volume(shared_series())
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing), image.SetOrigin(volume.origin), image.SetDirection(volume.direction)
    nrrd = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(nrrd))
    for source, words in ((nrrd, "is not DICOM"), (shared_series(), "has no Study Instance UID")):
        code = main(["segment", str(source), "--box", "250,250,300,300", "--slice", "10", "--out",
                     str(tmp_path / "seg.dcm"), "--checkpoint", str(tmp_path / "no-such-model.pth")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err
        assert not (tmp_path / "seg.dcm").exists()
