"""Catalogue of hostile inputs to the command line (issue 8): one line, exit 2, nothing lost or half-written.

Each case makes its hostile input in ``tmp_path``, runs ``medsam-slicer`` in-process and checks the promises:
the exit code, one ``medsam-slicer: error:`` line without a traceback, every input byte-identical, a pre-existing
output byte-identical, no partial output and no temporary file.  The guards refuse before any model work, so these
cases need no model.  Output and input problems, truncated and ill-shaped files, the study commands, numbers and
key boxes live here; full disks, Ctrl+C and FIFOs in ``test_bad_inputs_system.py``; the Python API, the cache and
the checkpoint files in ``test_bad_inputs_api.py``; random garbage in ``test_bad_inputs_properties.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bad_inputs_helpers import (BOX, PREVIOUS, SHAPE, Snapshot, _event, assert_refused, ct_array, run_cli,
                                strict_json, study_logs, tmpfs, write_npz, write_raw_nrrd, write_sitk)

assert tmpfs  # a fixture, used by name


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.delenv("MEDSAM_SLICER_CACHE", raising=False)


def segment(image, out, *extra):
    return ["segment", image, *BOX, "--out", out, "--window", "soft_tissue", *extra]


def before_the_model(argv, folder: Path) -> list:
    """A checkpoint that does not exist: a guard that runs before the model loads reports its own problem; one that
    ran after it would report the checkpoint instead."""
    return ["--checkpoint", folder / "absent.pth"] if argv[0] in ("segment", "demo", "eval") or \
        argv[:2] == ["study", "simulate"] else []


# ------------------------------------------------------------------ the output is the input (would destroy it)

def _same_path(d):
    image = write_sitk(d / "scan.nii.gz")
    return segment(image, image), [image]


def _detour(d):
    image = write_sitk(d / "scan.nrrd")
    (d / "sub").mkdir()
    return segment(image, d / "sub" / ".." / "scan.nrrd"), [image]


def _image_is_link(d):
    image = write_sitk(d / "scan.nii")
    (d / "link.nii").symlink_to("scan.nii")
    return segment(d / "link.nii", image), [image]


def _out_is_link(d):
    image = write_sitk(d / "scan.nii")
    (d / "link.nii").symlink_to("scan.nii")
    return segment(image, d / "link.nii"), [image, d / "link.nii"]


def _hard_link(d):
    image = write_sitk(d / "scan.mha")
    os.link(image, d / "hard.mha")
    return segment(image, d / "hard.mha"), [image, d / "hard.mha"]


def _npz(d):
    image = write_npz(d / "scan.npz")
    return ["segment", image, *BOX, "--out", image], [image]


def _plan_image(d):
    image = write_sitk(d / "scan.nrrd")
    return ["study", "plan", image, "--logs", d / "logs", "--out", image], [image]


def _plan_link(d):
    image = write_sitk(d / "scan.nrrd")
    (d / "cases.csv").symlink_to("scan.nrrd")
    return ["study", "plan", image, "--logs", d / "logs", "--out", d / "cases.csv"], [image]


def _report_cases_in_logs(d):
    logs = study_logs(d)
    cases = logs / "study_report.csv"  # --out defaults to LOGDIR: the report would overwrite the case list
    cases.write_text("case,mode,image,reference\ncase-aaaa,manual,,\ncase-aaaa,assisted,,\n")
    return ["study", "report", logs, "--cases", cases], [cases, *logs.glob("*.jsonl")]


def _demo_out_is_a_file(d):
    image = write_sitk(d / "scan.nrrd")
    return ["demo", "--out", image], [image]


@pytest.mark.parametrize("build, fragment", [
    (_same_path, "is the input"), (_detour, "is the input"), (_image_is_link, "is the input"),
    (_out_is_link, "is the input"), (_hard_link, "is the input"), (_npz, "is the input"),
    (_plan_image, "is the input"), (_plan_link, "is the input"), (_report_cases_in_logs, "is the input"),
    (_demo_out_is_a_file, "not a folder"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_output_never_overwrites_an_input(capsys, tmp_path, build, fragment):
    argv, inputs = build(tmp_path)
    snapshot = Snapshot(tmp_path, inputs)
    code, _, err = run_cli(capsys, *argv, *before_the_model(argv, tmp_path))
    assert_refused(code, err, fragment)
    snapshot.assert_untouched()


# ------------------------------------------------------------------------------ outputs that cannot be written

def _inside_a_file(d):
    image = write_sitk(d / "scan.nrrd")
    blocker = d / "file.txt"
    blocker.write_bytes(PREVIOUS)
    return segment(image, d / "file.txt" / "out.nii.gz"), [image, blocker], "is a file, not a folder"


def _existing_folder(d):
    image = write_sitk(d / "scan.nrrd")
    (d / "out.nii.gz").mkdir()
    (d / "out.nii.gz" / "keep.txt").write_bytes(PREVIOUS)
    return segment(image, d / "out.nii.gz"), [image, d / "out.nii.gz" / "keep.txt"], "existing folder"


def _name_too_long(d):
    image = write_sitk(d / "scan.nrrd")
    return segment(image, d / ("o" * 249 + ".nii.gz")), [image], "longer than"


def _unknown_extension(d):
    image = write_sitk(d / "scan.nrrd")
    return segment(image, d / "out.png"), [image], "use .nii.gz"


def _out_is_a_fifo(d):
    image = write_sitk(d / "scan.nrrd")
    os.mkfifo(d / "out.nii.gz")  # writing would block, renaming over it would replace it: refused
    return segment(image, d / "out.nii.gz"), [image], "a FIFO"


def _report_out_is_a_file(d):
    logs = study_logs(d)
    blocker = d / "report.txt"
    blocker.write_bytes(PREVIOUS)
    return ["study", "report", logs, "--out", blocker], [blocker, *logs.glob("*")], "not a folder"


def _plan_out_inside_a_file(d):
    image = write_sitk(d / "scan.nrrd")
    blocker = d / "file.txt"
    blocker.write_bytes(PREVIOUS)
    return (["study", "plan", image, "--logs", d / "logs", "--out", d / "file.txt" / "cases.csv"], [image, blocker],
            "is a file, not a folder")


def _simulate_out_is_a_file(d):
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 8:20, 8:20] = 1
    image = write_npz(d / "scan.npz", gts=label)
    blocker = d / "file.txt"
    blocker.write_bytes(PREVIOUS)
    return ["study", "simulate", image, "--every", "1", "--out", blocker], [image, blocker], "not a folder"


@pytest.mark.parametrize("build", [_inside_a_file, _existing_folder, _name_too_long, _unknown_extension,
                                   _out_is_a_fifo, _report_out_is_a_file, _plan_out_inside_a_file,
                                   _simulate_out_is_a_file], ids=lambda f: f.__name__[1:])
def test_unwritable_outputs_are_refused_before_any_work(capsys, tmp_path, build):
    argv, inputs, fragment = build(tmp_path)
    snapshot = Snapshot(tmp_path, inputs)
    code, _, err = run_cli(capsys, *argv, *before_the_model(argv, tmp_path))
    assert_refused(code, err, fragment)
    snapshot.assert_untouched()


@pytest.mark.parametrize("command", ["segment", "demo"])
def test_read_only_file_system(capsys, tmp_path, tmpfs, command):
    read_only = tmpfs("ro", "100k", readonly=True)
    image = write_sitk(tmp_path / "scan.nrrd")
    argv = segment(image, read_only / "out.nii.gz") if command == "segment" else ["demo", "--out", read_only / "demo"]
    snapshot = Snapshot(tmp_path, [image])
    code, _, err = run_cli(capsys, *argv)
    assert_refused(code, err, "read-only file system")
    snapshot.assert_untouched()


# ---------------------------------------------------------------------------- truncated and damaged volumes

def assert_segment_refused(capsys, folder: Path, image: Path, fragment: str) -> None:
    """``segment`` refuses ``image`` in one line naming ``fragment``; the image and an earlier output are untouched."""
    old = folder / "out.nii.gz"
    old.write_bytes(PREVIOUS)
    snapshot = Snapshot(folder, [image], [old])
    code, _, err = run_cli(capsys, *segment(image, old))
    assert_refused(code, err, fragment)
    snapshot.assert_untouched()


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("name, writer, fragment", [
    ("scan.nii.gz", write_sitk, "truncated"),
    ("scan.nii", write_sitk, "truncated"),
    ("scan.nrrd", lambda p: write_sitk(p, compress=False), "fread got only"),
    ("scan.nrrd", lambda p: write_sitk(p, compress=True), "expected 8192 bytes"),
    ("scan.mha", lambda p: write_sitk(p, compress=False), "not read completely"),
    ("scan.npz", write_npz, "cannot read"),
], ids=["nii.gz", "nii", "nrrd-raw", "nrrd-gzip", "mha-raw", "npz"])
def test_truncated_volume_is_refused(capsys, tmp_path, name, writer, fragment):
    assert_segment_refused(capsys, tmp_path, _truncate(writer(tmp_path / name)), fragment)


def test_simpleitk_errors_keep_their_human_part(capsys, tmp_path):
    image = tmp_path / "scan.mha"
    image.write_bytes(os.urandom(5000))
    code, _, err = run_cli(capsys, *segment(image, tmp_path / "out.nii.gz"))
    assert_refused(code, err, "Unable to determine ImageIO reader")


def test_claimed_size_is_stated_before_allocating(capsys, tmp_path):
    image = tmp_path / "huge.nrrd"
    image.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n"
                      b"endian: little\n\n" + b"\0" * 1000)
    code, _, err = run_cli(capsys, *segment(image, tmp_path / "out.nii.gz"))
    assert_refused(code, err, "100000 x 100000 x 100000", "PiB", "memory available")


def test_nonregular_and_folder_inputs(capsys, tmp_path):
    code, _, err = run_cli(capsys, *segment("/dev/zero", tmp_path / "out.nii.gz"))
    assert_refused(code, err, "character device", "not a regular file")
    (tmp_path / "scan.nii.gz").mkdir()
    code, _, err = run_cli(capsys, *segment(tmp_path / "scan.nii.gz", tmp_path / "out.nii.gz"))
    assert_refused(code, err, "is a folder")
    (tmp_path / "gone.nrrd").symlink_to("nowhere.nrrd")
    code, _, err = run_cli(capsys, *segment(tmp_path / "gone.nrrd", tmp_path / "out.nii.gz"))
    assert_refused(code, err, "does not exist")


def test_boolean_volume_is_refused(capsys, tmp_path):
    image = write_npz(tmp_path / "scan.npz", imgs=ct_array() > 0)
    code, _, err = run_cli(capsys, *segment(image, tmp_path / "out.nii.gz"), "--backend", "pytorch",
                           "--device", "cpu")
    assert_refused(code, err, "bool voxels", "not a mask")
    assert not (tmp_path / "out.nii.gz").exists()


# ------------------------------------------------------------------------------------------------ geometry

_EYE = np.eye(3).ravel()
NPZ_GEOMETRY = {
    "spacing NaN": (dict(spacing=np.array([np.nan, 1, 2])), "spacing"),
    "spacing inf": (dict(spacing=np.array([np.inf, 1, 2])), "spacing"),
    "spacing 0": (dict(spacing=np.array([0.0, 1, 2])), "spacing"),
    "spacing negative": (dict(spacing=np.array([-1.0, 1, 2])), "spacing"),
    "origin NaN": (dict(origin=np.array([np.nan, 0, 0])), "origin"),
    "origin inf": (dict(origin=np.array([0, np.inf, 0])), "origin"),
    "direction NaN": (dict(direction=np.where(_EYE == 1, np.nan, 0)), "direction"),
    "direction non-orthogonal": (dict(direction=np.array([1.0, 1, 0, 0, 1, 0, 0, 0, 1])), "direction"),
    "direction singular": (dict(direction=np.zeros(9)), "direction"),
    "spacing of length 2": (dict(spacing=np.array([1.0, 1.0])), "spacing"),
    "spacing of length 4": (dict(spacing=np.array([1.0, 1.0, 2.0, 3.0])), "spacing"),
    "direction of length 4": (dict(direction=np.array([1.0, 0, 0, 1])), "direction"),
    "spacing 2D array": (dict(spacing=np.ones((3, 3))), "spacing"),
    "spacing text": (dict(spacing=np.array(["a", "b", "c"])), "spacing"),
}
NRRD_GEOMETRY = {
    "space directions NaN": (["space: left-posterior-superior", "space directions: (nan,0,0) (0,1,0) (0,0,2)"],
                             "space directions"),
    "space directions zero vector": (["space: left-posterior-superior",
                                      "space directions: (0,0,0) (0,1,0) (0,0,2)"], "spacing"),
    "space directions non-orthogonal": (["space: left-posterior-superior",
                                         "space directions: (1,0,0) (1,1,0) (0,0,2)"], "direction"),
    "space origin NaN": (["space: left-posterior-superior", "space directions: (1,0,0) (0,1,0) (0,0,2)",
                          "space origin: (nan,0,0)"], "space origin"),
    "spacings negative": (["spacings: -1 1 2"], "spacing"),
    "spacings zero": (["spacings: 0 1 2"], "spacing"),
    "spacings NaN": (["spacings: nan 1 2"], "spacing"),
}


@pytest.mark.parametrize("label", list(NPZ_GEOMETRY) + [f"NRRD {k}" for k in NRRD_GEOMETRY])
def test_bad_geometry_is_refused_naming_the_field(capsys, tmp_path, label):
    if label.startswith("NRRD "):
        lines, field_name = NRRD_GEOMETRY[label[5:]]
        image = write_raw_nrrd(tmp_path / "scan.nrrd", lines)
    else:
        fields, field_name = NPZ_GEOMETRY[label]
        image = write_npz(tmp_path / "scan.npz", **fields)
    assert_segment_refused(capsys, tmp_path, image, field_name)


# ------------------------------------------------------------------------------------------- key boxes

@pytest.mark.parametrize("argv", [
    ["--key-box", "1:5,5,20,20", "--key-box", "1:6,6,22,22"],
    [*BOX, "--key-box", "1:6,6,22,22"],
    ["--key-box", "01:5,5,20,20", "--key-box", "1:6,6,22,22"],
], ids=["twice", "on --slice", "01 and 1"])
def test_two_key_boxes_on_one_slice_is_an_error(capsys, tmp_path, argv):
    image = write_npz(tmp_path / "scan.npz")
    snapshot = Snapshot(tmp_path, [image])
    code, _, err = run_cli(capsys, "segment", image, *argv, "--range", "1:2", "--out", tmp_path / "out.nii.gz")
    assert_refused(code, err, "one box per slice")
    snapshot.assert_untouched()


@pytest.mark.parametrize("argv, fragment", [
    (["--key-box", "²:5,5,20,20"], "must be K:X0,Y0,X1,Y1"),
    (["--key-box", "1:5,5,20,20", "--range", "1:2:3"], "must be K0:K1"),
    (["--key-box", "1:5,5,20,20", "--range", "9" * 5000 + ":1"], "must be K0:K1"),
    (["--box", "1e999,5,20,20", "--slice", "1"], "four numbers"),
], ids=["unicode digit", "three parts", "huge number", "exponent"])
def test_odd_box_and_range_text(capsys, tmp_path, argv, fragment):
    image = write_npz(tmp_path / "scan.npz")
    code, _, err = run_cli(capsys, "segment", image, *argv, "--out", tmp_path / "out.nii.gz")
    assert_refused(code, err, fragment)


# -------------------------------------------------------------------------------------------------- numbers

def _labelled_npz(d: Path) -> Path:
    label = np.zeros(SHAPE, np.uint8)
    label[1, 8:20, 8:20] = 1
    return write_npz(d / "scan.npz", gts=label)


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "{npz}", "--tolerance", "nan"], "not a finite number"),
    (["eval", "{npz}", "--tolerance", "inf"], "not a finite number"),
    (["eval", "{npz}", "--tolerance", "-1"], "more than 0"),
    (["eval", "{npz}", "--tolerance", "abc"], "not a number"),
    (["study", "simulate", "{npz}", "--time", "review_slice_s=nan"], "finite"),
    (["study", "simulate", "{npz}", "--time", "review_slice_s=inf"], "finite"),
    (["study", "simulate", "{npz}", "--time", "review_slice_s=-1"], "0 or more"),
    (["study", "simulate", "{npz}", "--tolerance-mm", "nan"], "not a finite number"),
    (["study", "simulate", "{npz}", "--dice-threshold", "nan"], "not a finite number"),
    (["study", "report", "{logs}", "--idle-threshold", "nan"], "not a finite number"),
    (["study", "report", "{logs}", "--idle-threshold", "inf"], "not a finite number"),
    (["study", "report", "{logs}", "--idle-threshold", "-5"], "more than 0"),
], ids=lambda v: " ".join(v[-2:]) if isinstance(v, list) else None)
def test_non_finite_and_negative_numbers_are_refused(capsys, tmp_path, argv, fragment):
    npz = _labelled_npz(tmp_path)
    logs = study_logs(tmp_path)
    snapshot = Snapshot(tmp_path, [npz, *logs.glob("*")])
    code, out, err = run_cli(capsys, *[a.format(npz=npz, logs=logs) for a in argv], "--json")
    assert_refused(code, err, fragment)
    assert out == ""
    snapshot.assert_untouched()


def test_json_output_has_null_for_non_finite_numbers():
    from MedSAMSlicerLib.cli.main import json_safe

    nulls: dict = {}
    clean = json_safe({"dsc": float("nan"), "rows": [{"t": np.float32("inf")}, 1.5], "n": np.int64(3)}, "", nulls)
    assert clean == {"dsc": None, "rows": [{"t": None}, 1.5], "n": 3}
    assert set(nulls) == {"dsc", "rows[0].t"} and "not a finite number" in nulls["dsc"]
    json.dumps(clean, allow_nan=False)


# ------------------------------------------------------------------------------------ study report and plan

_M, _A = "manual", "assisted"
_HEAD = '{"v":1,"session":"s","case":"case-aaaa","reader":"r1","mode":"manual",'
LOG_DAMAGE = {
    "t is text": {_M: [_event(0, "case_opened", "abc", _M), _event(2, "accept", 60.0, _M)]},
    "t is null": {_M: [_event(0, "case_opened", None, _M), _event(2, "accept", 60.0, _M)]},
    "seq is a list": {_M: [_event([1], "case_opened", 0.0, _M), _event(2, "accept", 60.0, _M)]},
    "kind is a number": {_M: [_event(0, 5, 0.0, _M), _event(2, "accept", 60.0, _M)]},
    "seconds is a dict": {_A: [_event(0, "case_opened", 0.0, _A), _event(1, "segment_slice", 5.0, _A, seconds={"a": 1}),
                               _event(2, "accept", 10.0, _A)]},
    "t is 1e400": {_M: [_HEAD + '"seq":0,"kind":"case_opened","t":0}', _HEAD + '"seq":1,"kind":"accept","t":1e400}']},
    "t is 10**400": {_M: [_event(0, "case_opened", 0, _M), _event(1, "accept", 10 ** 400, _M)]},
    "seq is 1e400": {_M: [_HEAD + '"seq":1e400,"kind":"case_opened","t":0}', _event(1, "accept", 60.0, _M)]},
    "slices is 1e400": {_A: [_event(0, "case_opened", 0.0, _A), _HEAD.replace("manual", _A) +
                             '"seq":1,"kind":"propagate","t":3,"slices":1e400,"seconds":1}', _event(2, "accept", 9.0, _A)]},
    "seconds is NaN": {_A: [_event(0, "case_opened", 0.0, _A), _HEAD.replace("manual", _A) +
                            '"seq":1,"kind":"segment_slice","t":3,"seconds":NaN}', _event(2, "accept", 9.0, _A)]},
    "nested too deep": {_M: [_event(0, "case_opened", 0.0, _M), "[" * 100000, _event(2, "accept", 60.0, _M)]},
    "mask escapes the folder": {_M: [_event(0, "case_opened", 0.0, _M),
                                     _event(2, "accept", 60.0, _M, mask="../../../../etc/passwd")]},
    "mask name is a number": {_M: [_event(0, "case_opened", 0.0, _M), _event(2, "accept", 60.0, _M, mask=7)]},
}


@pytest.mark.parametrize("damage", list(LOG_DAMAGE))
def test_report_builds_around_malformed_log_fields(capsys, tmp_path, damage):
    logs = study_logs(tmp_path, LOG_DAMAGE[damage])
    snapshot = Snapshot(tmp_path, list(logs.glob("*")))
    code, out, err = run_cli(capsys, "study", "report", logs, "--out", tmp_path / "report", "--json")
    assert code == 0 and "Traceback" not in err, err
    summary = strict_json(out)  # valid JSON: no bare NaN or Infinity
    assert summary["rows"], summary
    assert summary["damaged"] or summary["skipped"] or damage in ("kind is a number", "seconds is a dict",
                                                                  "slices is 1e400", "seconds is NaN")
    if "mask" in damage:
        assert "passwd" not in err or "not a mask file name" in err
        assert any("not a mask file name" in s for s in summary["skipped"])
    snapshot.assert_untouched(allowed_new=("report",))


def _torn_mask(logs):
    path = logs / "case-aaaa.r1.manual.final.npz"
    path.write_bytes(path.read_bytes()[:40])


def _mask_folder(logs):
    path = logs / "case-aaaa.r1.manual.final.npz"
    path.unlink()
    path.mkdir()


def _pickled_mask(logs):
    np.save(logs / "case-aaaa.r1.manual.final.npz", np.array([object()], dtype=object), allow_pickle=True)
    os.replace(logs / "case-aaaa.r1.manual.final.npz.npy", logs / "case-aaaa.r1.manual.final.npz")


@pytest.mark.parametrize("setup, skipped", [
    (_torn_mask, "case-aaaa.r1.manual.final.npz"),
    (_mask_folder, "is a folder"),
    (_pickled_mask, "cannot be read"),
    (lambda logs: (logs / "x.jsonl").mkdir(), "x.jsonl"),
    (lambda logs: (logs / "x.jsonl").symlink_to("nowhere.jsonl"), "x.jsonl"),
    (lambda logs: (logs / "x.jsonl").symlink_to("x.jsonl"), "x.jsonl"),
    (lambda logs: (logs / "bin.r1.manual.jsonl").write_bytes(os.urandom(3000)), "bin.r1.manual.jsonl"),
], ids=["torn mask", "mask is a folder", "pickled mask", "folder .jsonl", "dangling link", "link loop", "binary log"])
def test_report_lists_what_it_skipped(capsys, tmp_path, setup, skipped):
    logs = study_logs(tmp_path)
    setup(logs)
    snapshot = Snapshot(tmp_path, [p for p in logs.iterdir() if p.is_file() and not p.is_symlink()])
    code, out, err = run_cli(capsys, "study", "report", logs, "--out", tmp_path / "report", "--json")
    assert code == 0 and "Traceback" not in err, err
    summary = strict_json(out)
    assert any(skipped in entry for entry in summary["skipped"] + summary["damaged"]), summary["skipped"]
    assert len(summary["rows"]) == 2
    assert "Skipped" in (tmp_path / "report" / "study_report.md").read_text() or summary["damaged"]
    snapshot.assert_untouched(allowed_new=("report",))


def test_report_case_list_of_binary_bytes(capsys, tmp_path):
    logs = study_logs(tmp_path)
    cases = tmp_path / "cases.csv"
    cases.write_bytes(b"\xff\xfe\x00" * 50)
    snapshot = Snapshot(tmp_path, [cases, *logs.glob("*")])
    code, _, err = run_cli(capsys, "study", "report", logs, "--cases", cases, "--out", tmp_path / "report")
    assert_refused(code, err, "not a UTF-8")
    snapshot.assert_untouched()


@pytest.mark.parametrize("key, fragment", [(b"short", "damaged"), (None, "is a folder"), ("logs-file", "is a file")],
                         ids=["5-byte key", "key is a folder", "--logs is a file"])
def test_plan_with_a_damaged_pseudonym_key(capsys, tmp_path, key, fragment):
    image = write_sitk(tmp_path / "scan.nrrd")
    logs = tmp_path / "logs"
    inputs = [image]
    if key == "logs-file":
        logs = image
    else:
        logs.mkdir()
        if key is None:
            (logs / ".pseudonym-key").mkdir()
        else:
            (logs / ".pseudonym-key").write_bytes(key)
            inputs.append(logs / ".pseudonym-key")
    snapshot = Snapshot(tmp_path, inputs)
    code, _, err = run_cli(capsys, "study", "plan", image, "--logs", logs, "--out", tmp_path / "cases.csv")
    assert_refused(code, err, fragment)
    snapshot.assert_untouched()


# ------------------------------------------------------------------------------------- checkpoint files

def _checkpoint_fifo(d):
    os.mkfifo(d / "w.pth")
    return ["--checkpoint", d / "w.pth"], "a FIFO"


def _checkpoint_folder(d):
    (d / "w.pth").mkdir()
    return ["--checkpoint", d / "w.pth"], "is a folder"


def _sidecar(content: bytes | None):
    def build(d):
        from MedSAMSlicerLib.engine.weights import resolve_checkpoint

        link = d / "lite_medsam.pth"
        link.symlink_to(resolve_checkpoint("litemedsam").path)
        sidecar = d / "lite_medsam.pth.sha256"
        if content is None:
            sidecar.mkdir()
        else:
            sidecar.write_bytes(content)
        return ["--checkpoint", link], "is a folder" if content is None else "sha256"
    return build


def _pickle_with_code(d):
    import hashlib

    import torch

    evil = d / "evil.pth"
    torch.save({"x": os.system}, evil)
    return ["--checkpoint", evil, "--checkpoint-sha256", hashlib.sha256(evil.read_bytes()).hexdigest()], \
        "never loads"


@pytest.mark.parametrize("build", [
    _checkpoint_fifo, lambda d: (["--checkpoint", "/dev/zero"], "character device"), _checkpoint_folder,
    _sidecar(b"\xff\xfe\x00\x81" * 40), _sidecar(b"hello world\n"), _sidecar(None), _pickle_with_code,
], ids=["fifo", "dev-zero", "folder", "binary sidecar", "text sidecar", "sidecar folder", "pickle"])
def test_bad_checkpoint_files(capsys, tmp_path, build):
    image = write_sitk(tmp_path / "scan.nrrd")
    extra, fragment = build(tmp_path)
    snapshot = Snapshot(tmp_path, [image])
    code, _, err = run_cli(capsys, *segment(image, tmp_path / "out.nii.gz"), *extra, "--backend", "pytorch")
    line = assert_refused(code, err, fragment)
    assert "not found" not in line
    snapshot.assert_untouched()


@pytest.mark.parametrize("manifest, fragment", [
    ("{not json", "not a readable JSON"), ("[1, 2]", "no 'models'"), ('{"about": "x"}', "no 'models'"),
    ('{"models": {"litemedsam": {"title": "t", "architecture": "litemedsam", "download_page": "x"}}}', "'file'"),
    ('{"models": {"litemedsam": {"title": "t", "architecture": "litemedsam", "file": "../../etc/passwd", '
     '"download_page": "x"}}}', "plain file name"),
    ('{"models": {"litemedsam": {"title": "t", "architecture": "litemedsam", "file": "lite_medsam.pth", '
     '"size": "big", "download_page": "x"}}}', "'size'"),
], ids=["not json", "a list", "no models", "no file", "file escapes", "size text"])
def test_damaged_manifest(capsys, tmp_path, monkeypatch, manifest, fragment):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(manifest)
    monkeypatch.setenv("MEDSAM_SLICER_WEIGHTS", str(weights))
    image = write_sitk(tmp_path / "scan.nrrd")
    code, _, err = run_cli(capsys, *segment(image, tmp_path / "out.nii.gz"))
    assert_refused(code, err, "manifest.json", fragment)
