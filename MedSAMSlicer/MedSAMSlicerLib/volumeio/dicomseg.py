"""Writing a mask as a DICOM Segmentation (highdicom) that references the series it was made on.

- BINARY segmentation: the kind PACS viewers (OHIF, Slicer, vendors) display most reliably.
- One segment: the user's label (default "MedSAM"), a default category/type code (Tissue / Tissue, SCT) unless the
  caller gives others, algorithm type SEMIAUTOMATIC (a person gave the boxes) with the algorithm identification:
  model name, project version, and the weights' sha256 and prompts as parameters.
- Geometry and references come from the source datasets (same frame of reference, one SEG frame per source frame
  with foreground; empty frames omitted, as viewers expect).
- Written through :func:`~MedSAMSlicerLib.atomic.atomic_path`; before it replaces anything the file is read back by
  pydicom (the referenced study, series and instances) and by highdicom (the mask, mapped back onto the source
  frames voxel for voxel).  A mask made on a NIfTI/NRRD volume has no series to reference and is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import OutputError, first_line
from ..paths import check_output_file
from .dicom import DicomVolume
from .provenance import Provenance, project_version

log = logging.getLogger(__name__)
SEG_EXTENSIONS = (".dcm",)


def is_dicom_output(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(SEG_EXTENSIONS)


def check_seg_source(volume, shown) -> None:
    """Refuse, in one line, a DICOM SEG for a volume that did not come from DICOM."""
    if not isinstance(volume, DicomVolume) or volume.source is None:
        raise OutputError(f"cannot write {shown} as DICOM SEG: the image {volume.path or ''} is not DICOM (NIfTI, "
                          f"NRRD...), so there is no series to reference; write .seg.nrrd or .nii.gz instead")
    source = volume.source
    missing = [name for name, value in (("Study Instance UID", source.study_uid),
                                        ("Series Instance UID", source.series_uid),
                                        ("Frame of Reference UID", str(getattr(source.datasets[0],
                                                                               "FrameOfReferenceUID", "") or "")),
                                        ("SOP Instance UID", all(str(getattr(d, "SOPInstanceUID", "") or "")
                                                                 for d in source.datasets)))
               if not value]
    if missing:
        raise OutputError(f"cannot write {shown} as DICOM SEG: the source series has no {', '.join(missing)} (an "
                          f"anonymiser emptied them), so a SEG could not reference it; write .seg.nrrd or .nii.gz, or "
                          f"give the series new UIDs first")


def _default_codes():
    from pydicom.sr.codedict import codes

    return codes.SCT.Tissue, codes.SCT.Tissue


def build_seg(mask: np.ndarray, volume: DicomVolume, provenance: Provenance, label: str = "MedSAM",
              category=None, segment_type=None):
    """The highdicom Segmentation object (not written)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = volume.source
    default_category, default_type = _default_codes()
    parameters = {"weights_sha256": provenance.weights_sha256,
                  "prompts": json.dumps(provenance.prompts, sort_keys=True, default=str)[:1024],
                  "edited_after": str(provenance.edited_after).lower()}
    algorithm = hd.AlgorithmIdentificationSequence(name=provenance.model[:64],
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   version=f"MedSAMSlicer {provenance.version}"[:64],
                                                   parameters=parameters)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label[:64], segmented_property_category=category or default_category,
        segmented_property_type=segment_type or default_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm)
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if source.frame_order is None:
        source_images, pixels = source.datasets, binary  # datasets are sorted like the volume's k axis
    else:  # one multi-frame source: SEG frames follow the source's frame order
        pixels = np.empty_like(binary)
        pixels[np.asarray(source.frame_order)] = binary
        source_images = source.datasets
    return hd.seg.Segmentation(
        source_images=source_images, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedSAMSlicer",
        manufacturer_model_name=provenance.model[:64], software_versions=f"MedSAMSlicer {project_version()}",
        device_serial_number="none", content_label="MEDSAM", content_description=provenance.notice[:64],
        series_description=f"{label} (MedSAM, research use)"[:64], omit_empty_frames=bool(binary.any()))


def read_seg_mask(path_or_dataset, volume: DicomVolume) -> np.ndarray:
    """A SEG's segment 1 on the source volume's grid (k, j, i), through highdicom's source-frame mapping."""
    import highdicom as hd

    if isinstance(path_or_dataset, (str, os.PathLike)):
        seg = hd.seg.segread(path_or_dataset)
    elif isinstance(path_or_dataset, hd.seg.Segmentation):
        seg = path_or_dataset
    else:
        seg = hd.seg.Segmentation.from_dataset(path_or_dataset)
    source = volume.source
    if source.frame_order is None:
        uids = [str(ds.SOPInstanceUID) for ds in source.datasets]
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1],
                                                   assert_missing_frames_are_empty=True)[..., 0]
        return pixels.astype(np.uint8)
    frames = seg.get_pixels_by_source_frame(source_sop_instance_uid=str(source.datasets[0].SOPInstanceUID),
                                            source_frame_numbers=[n + 1 for n in source.frame_order],
                                            segment_numbers=[1], assert_missing_frames_are_empty=True)[..., 0]
    return frames.astype(np.uint8)


def _problems(data, mask: np.ndarray, volume: DicomVolume) -> list[str]:
    """What is wrong with the SEG in ``data`` (a path or a file object), read back by pydicom and highdicom."""
    import highdicom as hd
    import pydicom

    source = volume.source
    try:
        ds = pydicom.dcmread(data)
        problems = []
        if str(ds.Modality) != "SEG":
            problems.append(f"modality {ds.Modality}")
        if str(ds.StudyInstanceUID) != source.study_uid:
            problems.append("another study")
        referenced = ds.ReferencedSeriesSequence[0]
        if str(referenced.SeriesInstanceUID) != source.series_uid:
            problems.append("another series")
        wanted = {str(d.SOPInstanceUID) for d in source.datasets}
        found = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence}
        if found != wanted:
            problems.append(f"{len(found ^ wanted)} instances referenced wrongly")
        back = read_seg_mask(hd.seg.Segmentation.from_dataset(ds), volume)
        if back.shape != mask.shape or not np.array_equal(back, (mask > 0).astype(np.uint8)):
            problems.append("its mask differs from the one written")
    except Exception as error:  # pydicom/highdicom raise many kinds on a damaged file
        problems = [first_line(error).replace(str(data), "it")]
    return problems


def checked_seg(mask: np.ndarray, volume, provenance: Provenance, label: str = "MedSAM"):
    """A SEG dataset, serialised and read back in memory (for STOW-RS without a file)."""
    import io

    import pydicom

    check_seg_source(volume, "the PACS")
    seg = build_seg(mask, volume, provenance, label)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    buffer.seek(0)
    problems = _problems(buffer, mask, volume)
    if problems:
        raise OutputError(f"the DICOM SEG does not read back right ({'; '.join(problems)}); nothing was stored")
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _verify(temp: Path, mask: np.ndarray, volume: DicomVolume, shown: Path) -> None:
    problems = _problems(str(temp), mask, volume)
    if problems:
        raise OutputError(f"cannot write {shown}: the written DICOM SEG does not read back right "
                          f"({'; '.join(problems)}); is the disk full?")


def write_dicom_seg(path: str | os.PathLike, mask: np.ndarray, volume, provenance: Provenance,
                    label: str = "MedSAM", inputs=()) -> Path:
    """Write ``mask`` (on ``volume``'s grid) as a DICOM SEG file; whole or not at all, read back first."""
    path = Path(path)
    check_seg_source(volume, path)
    if mask.shape != volume.array.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume {volume.array.shape}")
    check_output_file(path, list(inputs) + list(volume.source.files))
    seg = build_seg(mask, volume, provenance, label)
    with atomic_path(path, suffix=".dcm", verify=lambda temp: _verify(temp, mask, volume, path)) as temp:
        seg.save_as(str(temp))
    return path


def seg_file_name(volume) -> str:
    """A file name for ``--out-dicom FOLDER``: the SEG's own SOP instance UID is unknown before it is built, so the
    name is from the source series (never a patient tag)."""
    return f"SEG_{volume.source.series_uid}.dcm"
