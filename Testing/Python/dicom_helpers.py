"""DICOM series made with pydicom from the shared 20-slice CT (../shared/data/totalsegmentator_dicom) for tests.

The shared series is anonymised with its Study/Series/SOP Instance UIDs emptied, JPEG 2000 compressed; copies get
fresh UIDs (the SOP Instance UID from the file meta), a patient name and id (to check nothing logs them) and, on
request, changed geometry or tags.  Nothing here touches the shared files.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from conftest import shared_path

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "MRN-73310555"


def shared_series() -> Path:
    return shared_path("totalsegmentator_dicom", "example_ct_dicom")


def shared_label() -> Path:
    return shared_path("totalsegmentator_dicom", "example_seg_dicom.nii.gz")


def load_series() -> list:
    """The shared series' datasets, decompressed, with UIDs and patient tags, sorted by position (inferior first)."""
    import pydicom
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    datasets = []
    for path in sorted(p for p in shared_series().iterdir() if p.is_file()):
        ds = pydicom.dcmread(str(path))
        ds.decompress()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        datasets.append(ds)
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return datasets


def save(datasets: list, folder: Path, names=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        name = names[n] if names else f"IM{n:04d}"
        ds.save_as(str(folder / name), enforce_file_format=True)
    return folder


def descending(datasets: list) -> list:
    """Instance 1 at the top: instance numbers (and file names, by the caller) run against the position."""
    out = [copy.deepcopy(ds) for ds in reversed(datasets)]
    for n, ds in enumerate(out):
        ds.InstanceNumber = n + 1
    return out


def rotation(degrees_x: float = 25.0, degrees_z: float = 15.0) -> np.ndarray:
    a, b = math.radians(degrees_x), math.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def oblique(datasets: list, matrix: np.ndarray, centre=(0.0, 0.0, 0.0)) -> list:
    """The same pixels on a rotated grid (rotation ``matrix`` about ``centre``), as an oblique acquisition."""
    centre = np.asarray(centre, dtype=float)
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3)
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (orientation @ matrix.T).ravel()]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in matrix @ (position - centre) + centre]
        out.append(ds)
    return out
