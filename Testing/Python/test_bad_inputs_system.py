"""Hostile environments (issue 8): a full disk, a long file name, Ctrl+C, FIFOs, start-up imports.

Full disks are small tmpfs mounts (the test skips where it cannot mount).  The writer is checked end to end: on any
failure the previous output stays byte-identical, no temporary file is left, and the error is one line.  Ctrl+C and
FIFO cases run in a real process with a timeout (a regression would hang, not fail).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bad_inputs_helpers import (BOX, PREVIOUS, REPO, Snapshot, assert_refused, cli_process, ct_array, error_lines,
                                fill, run_cli, study_logs, tmpfs, write_sitk)

assert tmpfs  # a fixture, used by name
EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".npz", ".seg.nrrd")


@pytest.fixture
def volume(tmp_path):
    from MedSAMSlicerLib.volumeio.files import read_volume

    return read_volume(write_sitk(tmp_path / "scan.nrrd", ct_array((4, 128, 128))))


def _mask(volume) -> np.ndarray:
    """Random voxels: even compressed, the label needs more than the 8 KiB left on the disk (a partial write)."""
    return np.random.default_rng(1).random(volume.array.shape) < 0.5


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize("leave", [0, 8192], ids=["full", "8 KiB left"])
def test_full_disk_keeps_the_previous_output(tmpfs, volume, ext, leave):
    from MedSAMSlicerLib.errors import OutputError
    from MedSAMSlicerLib.volumeio.files import write_label

    disk = tmpfs("disk")
    old = disk / f"old{ext}"
    old.write_bytes(PREVIOUS)
    fill(disk, leave)
    snapshot = Snapshot(disk, previous=[old])
    with pytest.raises(OutputError) as raised:
        write_label(old, _mask(volume), volume)
    assert "\n" not in str(raised.value) and "cannot write" in str(raised.value)
    assert raised.value.exit_code == 2 and isinstance(raised.value, OSError)
    snapshot.assert_untouched()


def test_full_disk_through_the_command_line(capsys, tmp_path, tmpfs):
    """The whole command, model included: exit 2, one line, the previous label byte-identical."""
    image = write_sitk(tmp_path / "scan.nrrd", ct_array((4, 64, 64)))
    disk = tmpfs("disk")
    old = disk / "old.nii"
    old.write_bytes(PREVIOUS)
    fill(disk, leave=8192)  # the NIfTI writer writes part, prints to C++ stderr and reports success
    snapshot = Snapshot(tmp_path, [image], [old])
    code, _, err = run_cli(capsys, "segment", image, "--box", "5,5,40,40", "--slice", "1", "--out", old,
                           "--backend", "pytorch", "--device", "cpu")
    assert_refused(code, err, "cannot write", "is the disk full")
    snapshot.assert_untouched(allowed_new=("disk/filler",))


@pytest.mark.parametrize("command", ["plan", "report"])
def test_full_disk_for_study_files(capsys, tmp_path, tmpfs, command):
    disk = tmpfs("disk")
    if command == "plan":
        image = write_sitk(tmp_path / "scan.nrrd")
        olds = [disk / "cases.csv"]
        argv = ["study", "plan", image, "--logs", tmp_path / "logs", "--out", olds[0]]
        inputs = [image]
    else:
        logs = study_logs(tmp_path)
        olds = [disk / f"study_report.{e}" for e in ("csv", "png", "md")]
        argv = ["study", "report", logs, "--out", disk]
        inputs = list(logs.glob("*"))
    for old in olds:
        old.write_bytes(PREVIOUS)
    fill(disk)
    snapshot = Snapshot(disk, previous=olds)
    code, _, err = run_cli(capsys, *argv)
    assert_refused(code, err, "No space left on device")
    snapshot.assert_untouched()
    assert all(Path(p).exists() for p in inputs)


def test_temporary_name_is_never_longer_than_the_target(tmp_path, volume):
    from MedSAMSlicerLib.atomic import temp_name, write_bytes_atomically
    from MedSAMSlicerLib.volumeio.files import write_label

    for name in ("o" * 243 + ".nii.gz", "é" * 120 + ".nrrd", "a.nii"):
        temp = temp_name(name, ".nii.gz" if name.endswith(".nii.gz") else ".nrrd")
        assert len(os.fsencode(temp)) <= max(len(os.fsencode(name)), 40), temp
    target = tmp_path / ("o" * 243 + ".nii.gz")  # 250 characters: legal; a longer temporary name would not be
    write_label(target, _mask(volume), volume)
    text = tmp_path / ("t" * 251 + ".csv")
    write_bytes_atomically(text, b"a,b\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scan.nrrd", target.name, text.name])


def test_failed_write_leaves_nothing(tmp_path):
    from MedSAMSlicerLib.atomic import atomic_path
    from MedSAMSlicerLib.errors import OutputError

    old = tmp_path / "old.csv"
    old.write_bytes(PREVIOUS)
    for failure in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(OutputError if isinstance(failure, OSError) else KeyboardInterrupt):
            with atomic_path(old, suffix=".csv") as temp:
                temp.write_bytes(b"half")
                raise failure
    with pytest.raises(OutputError, match="nothing reached the disk"):
        with atomic_path(tmp_path / "new" / "deeper" / "x.csv", suffix=".csv"):
            pass  # a writer that wrote nothing
    assert old.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]  # no temp file, no folder created


# ------------------------------------------------------------------------------------ Ctrl+C and start-up

@pytest.mark.parametrize("delay", [0.3, 0.8])  # both land in the start-up imports (torch alone takes longer)
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay):
    image = write_sitk(tmp_path / "scan.nrrd")
    out = tmp_path / "out.nii.gz"
    process = cli_process("segment", str(image), *BOX, "--out", str(out), "--backend", "pytorch", cwd=tmp_path)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("no exit within 120 s of Ctrl+C")
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert lines == ["medsam-slicer: cancelled by the user; nothing was written"], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scan.nrrd"]


def test_ctrl_c_waits_until_a_native_package_has_imported(tmp_path):
    """Ctrl+C inside torch's (pybind11) initialisation could abort the process (exit -6, no line): the CLI holds
    SIGINT while such a package imports and raises the KeyboardInterrupt once it has.  A stand-in package that
    interrupts itself half-way shows it deterministically (without the hold its second half never runs)."""
    package = tmp_path / "slow_native"
    package.mkdir()
    (package / "__init__.py").write_text("import builtins, os, signal, time\n"
                                         "os.kill(os.getpid(), signal.SIGINT)\n"
                                         "time.sleep(0.2)\n"
                                         "builtins.slow_native_finished = True\n")
    code = textwrap.dedent("""
        import builtins, sys
        from MedSAMSlicerLib.cli.main import _QuietImports
        _QuietImports.PACKAGES = frozenset({"slow_native"})
        sys.meta_path.insert(0, _QuietImports())
        try:
            import slow_native
        except KeyboardInterrupt:
            print("interrupted; import finished:", getattr(builtins, "slow_native_finished", False))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{REPO / 'MedSAMSlicer'}{os.pathsep}{tmp_path}"})
    assert done.stdout.strip() == "interrupted; import finished: True", done.stdout + done.stderr


def test_help_and_parser_load_no_torch():
    code = textwrap.dedent("""
        import contextlib, io, sys
        from MedSAMSlicerLib.cli.main import build_parser, main
        build_parser()
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["segment", "--help"])
            except SystemExit as done:
                assert done.code == 0
        heavy = sorted(m for m in ("torch", "SimpleITK", "skimage", "matplotlib") if m in sys.modules)
        print(",".join(heavy) or "none")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "MedSAMSlicer")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none", done.stdout


def test_fifos_are_refused_without_waiting(tmp_path):
    """Opening a FIFO blocks until a writer appears: every reader must refuse it from ``stat`` alone."""
    for name in ("scan.nii.gz", "scan.npz", "w.pth", "logs/x.jsonl", "cases.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        os.mkfifo(tmp_path / name)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from MedSAMSlicerLib.errors import MedSAMError
        from MedSAMSlicerLib.volumeio.files import read_volume
        from MedSAMSlicerLib.engine.weights import resolve_checkpoint
        from MedSAMSlicerLib.study.timelog import load_log
        from MedSAMSlicerLib.study.report import read_case_list
        d = Path({str(tmp_path)!r})
        for call, arg in ((read_volume, "scan.nii.gz"), (read_volume, "scan.npz"),
                          (lambda p: resolve_checkpoint("litemedsam", p), "w.pth"), (load_log, "logs/x.jsonl"),
                          (read_case_list, "cases.csv")):
            try:
                call(d / arg)
                print("accepted", arg)
            except MedSAMError as error:
                print("refused", arg, "FIFO" in str(error))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "MedSAMSlicer")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [f"refused {n} True" for n in
                                           ("scan.nii.gz", "scan.npz", "w.pth", "logs/x.jsonl", "cases.csv")]
    image = write_sitk(tmp_path / "real.nrrd")
    process = cli_process("study", "report", str(tmp_path / "logs"), "--out", str(tmp_path / "r"), cwd=tmp_path)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "no session logs" in err  # the FIFO log was skipped, not read
    process = cli_process("segment", str(tmp_path / "scan.npz"), *BOX, "--out", str(tmp_path / "o.nii.gz"))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "FIFO" in err and len(error_lines(err)) == 1
    assert image.exists()
