"""Bad input: every case is one clear line on stderr and a non-zero exit code, never a traceback."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.cli.main import main
from MedSAMSlicerLib.engine.weights import resolve_checkpoint

from conftest import shared_path


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """A real CT crop around lung1's tumour, written as NRRD (keeps each CLI call to one or two slices)."""
    image = sitk.ReadImage(str(shared_path("pyradiomics", "lung1_image.nrrd")))
    crop = image[150:350, 250:450, 28:40]
    path = tmp_path_factory.mktemp("cli") / "lung1_crop.nrrd"
    sitk.WriteImage(crop, str(path))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medsam-slicer: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_image(array: np.ndarray, vector: bool = False):
    return lambda path: sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))


def with_nan() -> np.ndarray:
    array = np.zeros((4, 16, 16), np.float32)
    array[1, 2, 3] = np.nan
    return array


@pytest.mark.parametrize("name, write, fragment", [
    ("nope.nii.gz", None, "not found"),
    ("flat.nrrd", write_image(np.zeros((32, 32), np.int16)), "2D image"),
    ("series.nii.gz", write_image(np.zeros((2, 3, 16, 16), np.int16)), "4D image"),
    ("broken.nii.gz", lambda path: path.write_bytes(b"\x1f\x8b not really gzip"), "cannot read"),
    ("rgb.nrrd", write_image(np.zeros((3, 16, 16, 3), np.uint8), vector=True), "3 components per voxel"),
    ("nan.nrrd", write_image(with_nan()), "1 NaN"),
], ids=["missing", "2d", "4d", "corrupt", "vector", "nans"])
def test_unusable_images(capsys, tmp_path, name, write, fragment):
    path = tmp_path / name
    if write is not None:
        write(path)
    code, _, err = run(capsys, "segment", path, "--box", "1,1,5,5", "--slice", "0", "--out", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("box, slice_index, fragment", [
    ("50,50,50,80", 5, "empty"),
    ("80,50,40,90", 5, "inverted"),
    ("900,900,950,950", 5, "outside the slice"),
    ("50,50,90,90", 40, "slice 40 is outside the volume"),
    ("50,50,90", 5, "four numbers"),
])
def test_bad_boxes(capsys, tmp_path, small_ct, box, slice_index, fragment):
    out = tmp_path / "o.nii.gz"
    code, _, err = run(capsys, "segment", small_ct, "--box", box, "--slice", slice_index, "--out", out)
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_reversed_range(capsys, tmp_path, small_ct):
    code, _, err = run(capsys, "segment", small_ct, "--box", "80,80,120,120", "--slice", "5", "--propagate",
                       "--range", "8:3", "--out", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, "reversed")


def test_label_value_absent(capsys):
    image = shared_path("pyradiomics", "breast1_image.nrrd")
    label = shared_path("pyradiomics", "breast1_label.nrrd")
    code, _, err = run(capsys, "eval", image, label, "--label-value", "7")
    assert_one_line_error(code, err, "label value 7 is absent", "present: [1]")


def test_label_on_another_grid(capsys):
    code, _, err = run(capsys, "eval", shared_path("pyradiomics", "brain1_image.nrrd"),
                       shared_path("pyradiomics", "brain2_label.nrrd"))
    assert_one_line_error(code, err, "not on the image grid")


def test_truncated_checkpoint(capsys, tmp_path, small_ct):
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(resolve_checkpoint("litemedsam").path.read_bytes()[:4096])
    code, _, err = run(capsys, "segment", small_ct, "--box", "80,80,120,120", "--slice", "5", "--checkpoint", bad,
                       "--out", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, "truncated")


def test_truncated_checkpoint_with_pinned_hash_is_unreadable(capsys, tmp_path, small_ct):
    bad = tmp_path / "mine.pth"
    bad.write_bytes(resolve_checkpoint("litemedsam").path.read_bytes()[:4096])
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    code, _, err = run(capsys, "segment", small_ct, "--box", "80,80,120,120", "--slice", "5", "--checkpoint", bad,
                       "--checkpoint-sha256", digest, "--out", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, "cannot read checkpoint")


def test_wrong_model_checkpoint(capsys, tmp_path, small_ct):
    wrong = tmp_path / "medsam_vit_b.pth"
    shutil.copyfile(resolve_checkpoint("litemedsam").path, wrong)
    digest = hashlib.sha256(wrong.read_bytes()).hexdigest()
    code, _, err = run(capsys, "segment", small_ct, "--box", "80,80,120,120", "--slice", "5", "--model", "medsam",
                       "--checkpoint", wrong, "--checkpoint-sha256", digest, "--out", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, "is not a vit_b checkpoint")


def test_unwritable_output_format(capsys, tmp_path, small_ct):
    code, _, err = run(capsys, "segment", small_ct, "--box", "80,80,120,120", "--slice", "5",
                       "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, "cannot write")


def test_console_script_in_a_real_process(tmp_path):
    """The installed entry point, as a user runs it: exit code 2 and one line."""
    result = subprocess.run([sys.executable, "-m", "MedSAMSlicerLib.cli.main", "segment", str(tmp_path / "x.nrrd"),
                             "--box", "1,1,2,2", "--slice", "0", "--out", str(tmp_path / "o.nrrd")],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2] / "MedSAMSlicer")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("medsam-slicer: error: image not found")
    assert "Traceback" not in result.stderr
