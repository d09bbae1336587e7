"""Shared by the ``test_bad_inputs*`` catalogue: hostile inputs made in a temp folder, and the promises checked.

The promises (issue 8, TEAM.md): bad input -> exit 2 and one line ``medsam-slicer: error: ...`` with no traceback,
nothing half-written (no partial output, no temporary file), the user's inputs byte-identical, a pre-existing output
byte-identical; Ctrl+C -> exit 130 with one line.  Most cases run ``main([...])`` in-process: the guards refuse
before any model work, so they need no model and take milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = b"PREVIOUS OUTPUT - must stay byte-identical\n" * 50
SHAPE = (4, 32, 32)  # (k, j, i): tiny, so that a model run (where one is needed) encodes one 32x32 slice
BOX = ["--box", "5,5,20,20", "--slice", "1"]


def ct_array(shape=SHAPE, dtype=np.int16) -> np.ndarray:
    array = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(dtype)
    array[:, 8:20, 8:20] = 300
    return array


def write_sitk(path: Path, array: np.ndarray | None = None, spacing=(1.0, 1.0, 2.0), compress=True) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(ct_array() if array is None else array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def write_npz(path: Path, imgs: np.ndarray | None = None, **fields) -> Path:
    imgs = ct_array().clip(0, 255).astype(np.uint8) if imgs is None else imgs
    fields.setdefault("spacing", np.array([1.0, 1.0, 2.0]))
    np.savez(path, imgs=imgs, **{k: v for k, v in fields.items() if v is not None})
    return path


def write_raw_nrrd(path: Path, header_lines: list[str], sizes=(32, 32, 4)) -> Path:
    """A hand-made NRRD (raw int16) so that its header fields can hold anything."""
    data = ct_array((sizes[2], sizes[1], sizes[0])).astype("<i2").tobytes()
    header = ["NRRD0004", "type: short", "dimension: 3", f"sizes: {sizes[0]} {sizes[1]} {sizes[2]}",
              "endian: little", "encoding: raw", *header_lines]
    path.write_bytes(("\n".join(header) + "\n\n").encode() + data)
    return path


def _event(seq, kind, t, mode, **extra):
    return {"v": 1, "seq": seq, "session": f"s-{mode}", "kind": kind, "t": t, "wall": "2025-01-01T00:00:00.000Z",
            "case": "case-aaaa", "reader": "r1", "mode": mode, **extra}


def study_logs(d: Path, events: dict | None = None) -> Path:
    """A small valid study: one case read manual and assisted by r1, both accepted with a mask."""
    logs = d / "logs"
    logs.mkdir(exist_ok=True)
    mask = np.zeros((4, 8, 8), bool)
    mask[1, 2:5, 2:5] = True
    for mode in ("manual", "assisted"):
        np.savez_compressed(logs / f"case-aaaa.r1.{mode}.final.npz", mask=mask)
    default = {"manual": [_event(0, "case_opened", 0.0, "manual"), _event(1, "box_drawn", 30.0, "manual", slice=1),
                          _event(2, "accept", 60.0, "manual", mask="case-aaaa.r1.manual.final.npz")],
               "assisted": [_event(0, "case_opened", 0.0, "assisted"),
                            _event(1, "segment_slice", 5.0, "assisted", slice=1, seconds=1.0),
                            _event(2, "accept", 10.0, "assisted", mask="case-aaaa.r1.assisted.final.npz")]}
    for mode, items in {**default, **(events or {})}.items():
        lines = [json.dumps(e) if isinstance(e, dict) else e for e in items]
        (logs / f"case-aaaa.r1.{mode}.jsonl").write_text("\n".join(lines) + "\n")
    return logs


def sha(path: Path) -> str | None:
    if os.path.islink(path) and not path.exists():
        return "<dangling link>"
    if not path.exists():
        return None
    if not path.is_file():
        return "<not a regular file>"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> set[str]:
    found = set()
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            found.add(str((Path(folder) / name).relative_to(root)))
    return found


@dataclass
class Snapshot:
    """Hashes of the inputs and pre-existing outputs, and the folder listing, taken before a command runs."""

    root: Path
    inputs: list[Path] = field(default_factory=list)
    previous: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hashes = {p: sha(p) for p in [*self.inputs, *self.previous]}
        self.before = tree(self.root)

    def assert_untouched(self, allowed_new: tuple[str, ...] = ()) -> None:
        changed = [p.name for p, digest in self.hashes.items() if sha(p) != digest]
        assert not changed, f"modified: {changed}"
        new = sorted(p for p in tree(self.root) - self.before
                     if p not in allowed_new and not any(p.startswith(a + os.sep) for a in allowed_new))
        assert not new, f"left behind: {new}"

    def assert_no_temp_files(self) -> None:
        temps = [p for p in tree(self.root) - self.before if Path(p).name.startswith(".")]
        assert not temps, f"temporary files left: {temps}"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from MedSAMSlicerLib.cli.main import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """stderr without warnings and progress bars: what the one-line promise is about."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return [line for line in lines if ": WARNING: " not in line and not ("%|" in line and "/" in line)]


def assert_refused(code: int, err: str, *fragments: str, exit_code: int = 2) -> str:
    """Exit ``exit_code``, exactly one ``medsam-slicer: ...`` line besides warnings, no traceback; returns it."""
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert code == exit_code, (code, err)
    assert len(lines) == 1 and lines[0].startswith("medsam-slicer: "), err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]
    for noise in (".cxx:", ".hxx:", "Exception thrown in SimpleITK", "weights_only"):
        assert noise not in lines[0], lines[0]
    return lines[0]


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript, jq) do."""
    def refuse(constant):
        raise ValueError(f"bare {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def tmpfs(tmp_path):
    """mount_tmpfs(name, size, readonly) -> a small tmpfs under tmp_path (skips where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "200k", readonly: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()[:100]}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(point: Path, leave: int = 0) -> None:
    """Fill a file system but ``leave`` bytes."""
    stats = os.statvfs(point)
    free = stats.f_bavail * stats.f_frsize - leave
    with open(point / "filler", "wb") as handle:
        try:
            handle.write(b"\0" * max(free, 0))
            handle.flush()
        except OSError:
            pass


def cli_process(*argv: str, **kwargs) -> subprocess.Popen:
    """The command as a user runs it (for Ctrl+C and hang cases): a real process, own session, SIGINT default."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(REPO / "MedSAMSlicer"), "MEDSAM_SLICER_CACHE": "",
           "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "MedSAMSlicerLib.cli", *argv], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)
