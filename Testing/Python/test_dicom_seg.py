"""DICOM SEG out: the CLI on the shared series gives the mask it gives on the same voxels as NRRD; the SEG it writes
is read back by highdicom and pydicom (right study, series, frames, algorithm identification) and by dcmqi's
segimage2itkimage (another implementation, what Slicer's core uses), voxel for voxel on the source grid; the
provenance of NIfTI (JSON sidecar) and .seg.nrrd (segment tags) outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.volumeio.files import read_label, read_volume

from conftest import run_cli_json
from dicom_helpers import load_series, oblique, rotation, save, shared_label


pytestmark = pytest.mark.usefixtures("cli_disk_cache")  # CLI runs share the session's embeddings


def spleen_box(volume, index: int = 10) -> str:
    rows, cols = np.nonzero(read_label(shared_label(), volume)[index] == 1)
    return f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}"


def dcmqi_mask(seg: Path, volume, folder: Path) -> np.ndarray:
    """segment 1 as dcmqi reads it, moved onto the source grid by physical position (nearest neighbour)."""
    tool = shutil.which("segimage2itkimage", path=str(Path(sys.executable).parent)) or shutil.which(
        "segimage2itkimage")
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi)")
    folder.mkdir()
    subprocess.run([tool, "--inputDICOM", str(seg), "--outputDirectory", str(folder), "--outputType", "nrrd"],
                   check=True, capture_output=True, timeout=120)
    image = sitk.ReadImage(str(folder / "1.nrrd"))
    grid = sitk.Image(volume.array.shape[::-1], sitk.sitkUInt8)
    grid.SetSpacing(volume.spacing), grid.SetOrigin(volume.origin), grid.SetDirection(volume.direction)
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def test_cli_dicom_series_gives_the_nrrd_mask_and_a_seg_read_back_by_three_readers(capsys, tmp_path):
    import highdicom as hd
    import pydicom

    series = load_series()
    folder = save(series, tmp_path / "series")
    volume = read_volume(folder)
    image = sitk.GetImageFromArray(volume.array)  # the same voxels and grid, as NRRD (no modality tag)
    image.SetSpacing(volume.spacing), image.SetOrigin(volume.origin), image.SetDirection(volume.direction)
    nrrd = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(nrrd))
    box, common = spleen_box(volume), ["--range", "8:12", "--box"]
    from_nrrd = run_cli_json(capsys, "segment", nrrd, *common, spleen_box(volume), "--slice", 10, "--window", "soft_tissue",
                    "--out", tmp_path / "nrrd.nii.gz")
    summary = run_cli_json(capsys, "segment", folder, *common, box, "--slice", 10, "--out", tmp_path / "spleen.seg.nrrd",
                  "--out-dicom", tmp_path / "dicom", "--label", "Spleen")
    assert "modality CT" in summary["window_reason"]  # auto window from the DICOM modality tag
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nrrd.nii.gz"))) > 0
    assert reference[8:13].sum() > 3000 and summary["voxels"] == from_nrrd["voxels"] == int(reference.sum())
    seg_path = Path(summary["out_dicom"])
    # highdicom: segment 1 on the source frames equals the NRRD run's mask, voxel for voxel
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.source.datasets]
    back = seg.get_pixels_by_source_instance(uids, segment_numbers=[1],
                                             assert_missing_frames_are_empty=True)[..., 0]
    assert np.array_equal(back > 0, reference)
    # pydicom: what it references and says about its making
    ds = pydicom.dcmread(str(seg_path))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == series[0].StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(uids)
    frames = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for f in ds.PerFrameFunctionalGroupsSequence}
    assert frames == {uids[k] for k in np.flatnonzero(reference.any(axis=(1, 2)))}  # one frame per masked slice
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "Spleen" and segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "litemedsam" and "MedSAMSlicer" in algorithm.AlgorithmVersion
    sha = next(json.loads(p.read_text()) for p in [tmp_path / "nrrd.json"])["weights_sha256"]
    assert sha in algorithm.AlgorithmParameters and len(sha) == 64
    assert ds.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert "PatientName" in ds and str(ds.PatientName) == str(series[0].PatientName)  # a SEG belongs to its patient
    # dcmqi (another implementation) reads the same mask on the source grid
    assert np.array_equal(dcmqi_mask(seg_path, volume, tmp_path / "dcmqi") > 0, reference)
    # provenance of the other outputs: NIfTI sidecar, .seg.nrrd segment tags
    sidecar = json.loads((tmp_path / "nrrd.json").read_text())
    assert sidecar["model"] == "litemedsam" and sidecar["edited_after"] is False and sidecar["version"]
    assert sidecar["prompts"]["key_boxes"] and sidecar["prompts"]["mode"] == "3d"
    import slicerio

    tags = slicerio.read_segmentation(str(tmp_path / "spleen.seg.nrrd"))["segments"][0]["tags"]
    assert tags["MedSAMSlicer.Model"] == "litemedsam" and tags["MedSAMSlicer.WeightsSha256"] == sha


def test_seg_on_an_oblique_series_maps_back_voxel_for_voxel_in_dcmqi(capsys, tmp_path):
    """--out NAME.dcm on an oblique acquisition: highdicom's and dcmqi's readings match the mask on the source
    grid (an oblique plane is where readers that ignore the orientation go wrong)."""
    series = oblique(load_series(), rotation(20.0, -10.0), centre=(0.0, -188.0, -785.0))
    folder = save(series, tmp_path / "oblique")
    volume = read_volume(folder)
    summary = run_cli_json(capsys, "segment", folder, "--box", spleen_box(read_volume(save(load_series(), tmp_path / "p"))),
                  "--slice", 10, "--out", tmp_path / "seg.dcm")
    from MedSAMSlicerLib.volumeio.dicomseg import read_seg_mask

    mask = read_seg_mask(tmp_path / "seg.dcm", volume)
    assert summary["out"] == str(tmp_path / "seg.dcm") and mask.sum() == summary["voxels"] > 1000
    assert np.array_equal(dcmqi_mask(tmp_path / "seg.dcm", volume, tmp_path / "dcmqi"), mask)


def test_multiframe_source_seg_references_its_frames(tmp_path):
    import highdicom as hd

    from MedSAMSlicerLib.volumeio.dicomseg import read_seg_mask, write_dicom_seg
    from MedSAMSlicerLib.volumeio.provenance import Provenance

    series = load_series()
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(series[::-1], series_instance_uid=hd.UID(), series_number=5,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    enhanced.save_as(str(tmp_path / "enhanced.dcm"))
    volume = read_volume(tmp_path / "enhanced.dcm")
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[3, 100:140, 200:260] = 1
    mask[15, 300:310, 10:20] = 1
    write_dicom_seg(tmp_path / "seg.dcm", mask, volume, Provenance("litemedsam", "1" * 64))
    assert np.array_equal(read_seg_mask(tmp_path / "seg.dcm", volume), mask)
    assert np.array_equal(dcmqi_mask(tmp_path / "seg.dcm", volume, tmp_path / "dcmqi"), mask)
