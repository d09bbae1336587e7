"""The browser app's checks without a browser: reader token files, logins (constant-time compare, failure limit,
expiry), the save target (a file name in the output folder, never an input, never an unconfirmed overwrite) and
the state checks.  The same checks end to end, through Chromium and trame's own protocol, are in ``test_web.py``."""

from __future__ import annotations

import os

import pytest

from MedSAMSlicerLib.errors import OptionError, OutputError
from MedSAMSlicerWeb.security import (FAILURES_PER_ADDRESS, FAILURE_WINDOW_S, Sessions, TooManyAttempts,
                                      is_loopback, read_reader_tokens, save_target)

FORMATS = (".seg.nrrd", ".nii.gz")
TOKEN = "t" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "ward-pc.example", ""))


def test_reader_token_file(tmp_path):
    path = tmp_path / "readers"
    path.write_text(f"# readers\nr01 {TOKEN}\n{'u' * 20}\n")
    path.chmod(0o600)
    assert read_reader_tokens(path) == [("r01", TOKEN), ("reader2", "u" * 20)]
    for bad in (f"r01 short\n", f"r01 {TOKEN}\nr02 {TOKEN}\n", f"../x {TOKEN}\n", f"a b {TOKEN}\n", "# none\n"):
        path.write_text(bad)
        with pytest.raises(OptionError):
            read_reader_tokens(path)


def test_login_limit_and_expiry():
    clock = Clock()
    sessions = Sessions([("r01", TOKEN), ("r02", "v" * 20)], lifetime_s=60, clock=clock)
    session, reader = sessions.login("v" * 20, "10.0.0.1")
    assert reader == "r02" and sessions.reader(session) == "r02"
    for wrong in (TOKEN[:-1], TOKEN + "x", "", None, "t" * 5000):
        with pytest.raises(ValueError):
            sessions.login(wrong, "10.0.0.2")
    with pytest.raises(TooManyAttempts):  # five failures: even the right token waits
        sessions.login(TOKEN, "10.0.0.2")
    assert sessions.login(TOKEN, "10.0.0.3")[1] == "r01"  # another address is not locked out
    clock.now += FAILURE_WINDOW_S + 1
    assert sessions.login(TOKEN, "10.0.0.2")[1] == "r01"
    assert sessions.reader(session) is None  # the first session's 60 s have passed
    assert sessions.reader("forged") is None and sessions.reader(None) is None
    assert FAILURES_PER_ADDRESS == 5


def test_save_target(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.nii.gz").write_bytes(b"v")
    (out / "old.nii.gz").write_bytes(b"o")
    scan = out / "scan.nii.gz"
    scan.write_bytes(b"s")
    os.symlink(tmp_path / "victim.nii.gz", out / "link.nii.gz")
    assert save_target(out, "new.seg.nrrd", FORMATS, [str(scan)], False) == out.resolve() / "new.seg.nrrd"
    for name in (str(tmp_path / "victim.nii.gz"), "../victim.nii.gz", "a/b.nii.gz", "a\\b.nii.gz", "..", ".",
                 "", "  ", ".hidden.nii.gz", "x.nrrd", "x.txt", "x\0.nii.gz", "link.nii.gz", "old.nii.gz", 5, None,
                 ["x.nii.gz"], "x" * 300 + ".nii.gz"):
        with pytest.raises(OutputError):
            save_target(out, name, FORMATS, [str(scan)], False)
    assert save_target(out, "old.nii.gz", FORMATS, [str(scan)], True).name == "old.nii.gz"  # confirmed
    with pytest.raises(OutputError):  # an input, even confirmed
        save_target(out, "scan.nii.gz", FORMATS, [str(scan)], True)
    with pytest.raises(OutputError):  # no output folder: no saving (never the working folder)
        save_target(None, "new.nii.gz", FORMATS, [], False)
