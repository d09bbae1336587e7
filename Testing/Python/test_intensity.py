"""Windowing follows the official pre_CT_MR.py exactly and never touches the caller's array."""

import numpy as np
import pytest

from MedSAMSlicerLib.errors import InputImageError, OptionError
from MedSAMSlicerLib.engine.intensity import CT_WINDOWS, Window, choose_window, normalize_volume, parse_window
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path


def official_ct(image, level, width):
    """The official pre_CT_MR.py CT branch, transcribed."""
    lower, upper = level - width / 2, level + width / 2
    pre = np.clip(image, lower, upper)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    return np.uint8(pre)


def official_mr(image):
    lower, upper = np.percentile(image[image > 0], 0.5), np.percentile(image[image > 0], 99.5)
    pre = np.clip(image, lower, upper)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    pre[image == 0] = 0
    return np.uint8(pre)


def test_ct_window_on_real_lung_ct_matches_official():
    volume = read_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    before = volume.array.copy()
    for name in ("soft_tissue", "lung"):
        ours = normalize_volume(volume.array, parse_window(name))
        assert ours.dtype == np.uint8 and ours.shape == volume.array.shape
        np.testing.assert_array_equal(ours, official_ct(volume.array.astype(np.float64), *CT_WINDOWS[name]))
    np.testing.assert_array_equal(volume.array, before)
    assert not volume.array.flags.writeable


def test_mr_rule_on_real_brain_mr_matches_official():
    volume = read_volume(shared_path("pyradiomics", "brain1_image.nrrd"))
    ours = normalize_volume(volume.array, Window("mr"))
    np.testing.assert_array_equal(ours, official_mr(volume.array.astype(np.float64)))
    assert (ours[volume.array == 0] == 0).all()


def test_auto_says_what_it_picked():
    ct = read_volume(shared_path("pyradiomics", "lung2_image.nrrd"))
    window, reason = choose_window(ct.array, "auto", ct.modality)
    assert window.kind == "ct" and window.label == "soft_tissue" and "CT" in reason
    mr = read_volume(shared_path("pyradiomics", "brain2_image.nrrd"))
    window, reason = choose_window(mr.array, "auto", mr.modality)
    assert window.kind == "mr" and "MR" in reason
    npz = read_volume(shared_path("medsam2_recist", "CT_Lesion_000002_03_01_035-047.npz"))
    window, reason = choose_window(npz.array, "auto", None, npz.already_normalized)
    assert window.kind == "none" and "npz" in reason


def test_modality_in_file_beats_intensities():
    array = np.full((2, 4, 4), 100, dtype=np.int16)
    assert choose_window(array, "auto", "CT")[0].kind == "ct"
    assert choose_window(array - 1000, "auto", "MR")[0].kind == "mr"


@pytest.mark.parametrize("text, expected", [("40,400", (40, 400)), ("-160,1500", (-160, 1500)),
                                            ("lung", (-160, 1500)), ("bone", CT_WINDOWS["bone"])])
def test_parse_window(text, expected):
    window = parse_window(text)
    assert (window.level, window.width) == expected and window.kind == "ct"


@pytest.mark.parametrize("text", ["40", "40,-5", "hello", "40;400"])
def test_parse_window_rejects(text):
    with pytest.raises(OptionError):
        parse_window(text)


def test_constant_image_is_a_clear_error():
    with pytest.raises(InputImageError, match="no contrast"):
        normalize_volume(np.full((3, 8, 8), -2000, dtype=np.int16), parse_window("soft_tissue"))
    with pytest.raises(InputImageError, match="positive voxels"):
        normalize_volume(np.zeros((3, 8, 8), dtype=np.int16), Window("mr"))
