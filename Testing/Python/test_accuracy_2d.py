"""LiteMedSAM on the real labelled scans, a ground-truth box on every labelled slice (engine issue).

Floors sit 0.02 under what this code measured (README table); the reference run of the official pipeline is
listed beside them.  Each case also prints the filled-box baseline, which these compact lesions make high.
"""

import numpy as np
import pytest

from MedSAMSlicerLib.evaluation.evaluate import evaluate_2d, targets_from_label
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.volumeio.files import read_label, read_volume

from conftest import real_cases, shared_path

# case: (floor, official reference DSC given in the issue)
FLOORS = {
    "CT_Lesion_000001_02_01_008-023": (0.92, 0.946),
    "CT_Lesion_000002_03_01_035-047": (0.83, 0.855),
    "CT_Lesion_000009_03_01_036-048": (0.89, 0.913),
    "CT_Lesion_000010_01_01_078-090": (0.65, 0.673),
    "CT_Lesion_000015_01_01_081-093": (0.82, 0.842),
    "CT_Lesion_000015_01_01_103-115": (0.75, 0.484),
    "lung1": (0.88, 0.903),
    "lung2": (0.92, 0.942),
    "brain1": (0.86, 0.886),
    "brain2": (0.64, 0.674),
    "breast1": (0.76, 0.675),
}


@pytest.mark.parametrize("case", real_cases(), ids=repr)
def test_2d_dice_floor_on_real_scan(case, open_case):
    session, label = open_case(case)
    (target,) = targets_from_label(label, case.name)
    result = evaluate_2d(session, target)
    floor, reference = FLOORS[case.name]
    print(f"{case.name}: DSC {result.dsc:.3f} (reference {reference:.3f}), NSD {result.nsd:.3f}, "
          f"filled box {result.box_baseline_dsc:.3f}, 3D box {result.box3d_baseline_dsc:.3f}")
    assert result.encoder_calls <= result.labelled_slices  # never an embedding twice
    assert result.dsc >= floor
    assert 0.0 <= result.nsd <= 1.0


def test_itksnap_structures_split_into_connected_pieces(segmenter, cache):
    """Hand-drawn brain structures: labels split into 3D connected pieces, and one box per 2D piece on a slice
    (the lateral ventricles form one 3D piece but two blobs on most axial slices)."""
    image = shared_path("itksnap_mricrop", "MRIcrop-orig.gipl.gz")
    volume = read_volume(image)
    label = read_label(shared_path("itksnap_mricrop", "MRIcrop-seg.gipl.gz"), volume)
    session = VolumeSession(segmenter, volume, "mr", "axial", cache)
    scores = {}
    for value in (1, 4, 5, 7):  # lateral ventricles, right and left hippocampus, caudates
        for target in targets_from_label(label, "MRIcrop", value, split_components=True, min_voxels=200):
            scores[target.name] = evaluate_2d(session, target, box_per_piece=True).dsc
    print({name: round(score, 3) for name, score in scores.items()})
    assert len(scores) == 5  # ventricles (one 3D piece), two hippocampi, two caudates
    assert np.median(list(scores.values())) >= ITKSNAP_MEDIAN_FLOOR
    assert min(scores.values()) >= ITKSNAP_MIN_FLOOR


ITKSNAP_MEDIAN_FLOOR = 0.50  # measured 0.543
ITKSNAP_MIN_FLOOR = 0.35  # measured 0.402 (lateral ventricles)
