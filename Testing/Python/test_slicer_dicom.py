"""The Slicer logic (slicer-core) on the shared DICOM series: the modality Slicer's DICOM module records in the
subject hierarchy feeds the ``auto`` window, the mask equals the one on the same voxels loaded as NRRD, and the
time log holds no patient identifier even when the volume node is named after the patient.

Encoder work: slice 10 of the shared DICOM series (shared with test_dicom*.py through the disk cache)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedSAMSlicerLib.volumeio.files import read_label, read_volume

from dicom_helpers import PATIENT_ID, PATIENT_NAME, load_series, save, shared_label
from slicer_fixtures import roi_in_ras


def test_dicom_modality_feeds_auto_and_the_mask_matches_nrrd_without_patient_ids_in_the_log(harness, logic,
                                                                                              tmp_path):
    from MedSAMSlicerLib.protocol import Box
    from MedSAMSlicerLogic.segments import read_segment
    from MedSAMSlicerLogic.volume_nodes import volume_from_node

    volume = read_volume(save(load_series(), tmp_path / "series"))
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing), image.SetOrigin(volume.origin), image.SetDirection(volume.direction)
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    plain = harness.load_volume(tmp_path / "ct.nrrd", "plain")
    # as Slicer's DICOM module leaves it: patient, study and series items, the modality on the series item; and a
    # node named after the patient (a user's rename, or a site's naming rule)
    dicom = harness.load_volume(tmp_path / "ct.nrrd", f"{PATIENT_NAME} {PATIENT_ID}")
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(harness.scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), PATIENT_NAME)
    hierarchy.SetItemAttribute(patient, "DICOM.PatientID", PATIENT_ID)
    study = hierarchy.CreateStudyItem(patient, "study")
    series_item = hierarchy.GetItemByDataNode(dicom)
    if series_item:
        hierarchy.SetItemParent(series_item, study)
    else:  # slicer-core without the subject hierarchy plugins: no item was made for the node when it was added
        series_item = hierarchy.CreateItem(study, dicom)
    hierarchy.SetItemAttribute(series_item, "DICOM.Modality", "CT")
    assert volume_from_node(dicom).volume.modality == "CT" and volume_from_node(plain).volume.modality is None

    rows, cols = np.nonzero(read_label(shared_label(), volume)[10] == 1)
    box = Box(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))
    log = logic.open_case(dicom, tmp_path / "logs", reader="r1")
    masks = []
    for node, window in ((dicom, "auto"), (plain, "soft_tissue")):
        roi = roi_in_ras(harness.scene, node, "k", 10, 10, box)
        operation, _ = logic.segment_slice(node, roi, window=window)
        segmentation = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
        masks.append(read_segment(segmentation, operation.snapshot.segment_id, node) > 0)
    logic.close_case()
    assert masks[0][10].sum() > 1000 and np.array_equal(masks[0], masks[1])
    text = log.path.read_text() + "".join(p.name for p in (tmp_path / "logs").rglob("*"))
    for identifier in (PATIENT_NAME, PATIENT_ID, "Doe", "73310555"):
        assert identifier not in text
