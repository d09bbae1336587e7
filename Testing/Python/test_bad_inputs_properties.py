"""Random garbage never escapes as anything but a one-line :class:`MedSAMError` (issue 8), found by hypothesis.

The parsers that read what users and crashes produce: the npz volume reader (random bytes, and valid archives of
random arrays), the session-log parser and the study report built on it (random bytes, and random JSON events), and
the box, range and key-box parsers with the box check.  Each property: the call returns a sane result or raises a
``MedSAMError`` whose message is one line; nothing else (no TypeError, OverflowError, RecursionError...).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from MedSAMSlicerLib.errors import MedSAMError
from MedSAMSlicerLib.protocol import checked_box, parse_box

FAST = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_line(error: MedSAMError) -> None:
    message = str(error)
    assert message and "\n" not in message, repr(message)


@contextmanager
def refused_in_one_line():
    """The property of every parser here: a MedSAMError raised inside is a refusal, which must be one line (and
    ends the check); anything else, a failed assertion included, escapes."""
    try:
        yield
    except MedSAMError as error:
        one_line(error)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("garbage")


# ---------------------------------------------------------------------------------------------- npz reader

def _read(path):
    from MedSAMSlicerLib.volumeio.files import read_volume

    with refused_in_one_line():
        volume = read_volume(path)
        assert volume.array.ndim == 3 and volume.array.size > 0
        assert (len(volume.spacing), len(volume.origin), len(volume.direction)) == (3, 3, 9)
        assert all(math.isfinite(v) for v in (*volume.spacing, *volume.origin, *volume.direction))
        assert min(volume.spacing) > 0
        direction = np.asarray(volume.direction).reshape(3, 3)
        assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-3)
        return volume


@FAST
@given(data=st.binary(max_size=4096))
def test_npz_reader_random_bytes(folder, data):
    path = folder / "random.npz"
    path.write_bytes(data)
    _read(path)


@FAST
@given(data=st.binary(min_size=1, max_size=2048), name=st.sampled_from(["imgs.npy", "spacing.npy", "gts.npy"]))
def test_npz_reader_random_member(folder, data, name):
    """A valid zip whose member holds garbage (or a header claiming more than it holds)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if name != "imgs.npy":
            archive.writestr("imgs.npy", _npy(np.zeros((2, 4, 4), np.uint8)))
        archive.writestr(name, data)
    path = folder / "member.npz"
    path.write_bytes(buffer.getvalue())
    _read(path)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


_DTYPES = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_, np.complex64])
_ARRAYS = hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))  # NaN, inf too


_VALUES = st.floats(allow_nan=True, allow_infinity=True, width=64)
# Geometry vectors: mostly the right length (so the values themselves are what is wrong), sometimes not.
_VECTOR3 = hnp.arrays(np.float64, st.sampled_from([(3,), (3,), (3,), (2,), (4,), (3, 3), ()]), elements=_VALUES)
_VECTOR9 = hnp.arrays(np.float64, st.sampled_from([(9,), (9,), (3, 3), (4,), (3,)]), elements=_VALUES)
# Images: mostly a small valid 3D volume (so that the reader gets to the geometry), sometimes anything.
_IMAGES = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=4)) | _ARRAYS


@FAST
@given(imgs=_IMAGES, spacing=st.none() | _VECTOR3, origin=st.none() | _VECTOR3, direction=st.none() | _VECTOR9,
       gts=st.none() | _ARRAYS, text=st.none() | st.text(max_size=5))
def test_npz_reader_structured_garbage(folder, imgs, spacing, origin, direction, gts, text):
    path = folder / "structured.npz"
    fields = {"imgs": imgs, "spacing": spacing, "origin": origin, "direction": direction, "gts": gts}
    if text is not None:
        fields["spacing"] = np.array(list(text) or [""])
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
    _read(path)


# ---------------------------------------------------------------------------------------------- log parser

def _report(folder):
    from MedSAMSlicerLib.cli.main import json_safe
    from MedSAMSlicerLib.study.report import build_report, report_csv, report_markdown, rows_as_dicts

    try:
        report = build_report(folder)
    except MedSAMError as error:  # only the build may refuse; what it built must then render
        one_line(error)
        return
    report_csv(report)
    report_markdown(report)
    nulls: dict = {}
    json.dumps(json_safe({**report.as_dict(), "rows": rows_as_dicts(report.rows)}, "", nulls), allow_nan=False)


@FAST
@given(lines=st.lists(st.binary(max_size=200), max_size=8))
def test_log_parser_random_bytes(folder, lines):
    from MedSAMSlicerLib.study.timelog import active_time, load_log

    logs = folder / "bytes"
    logs.mkdir(exist_ok=True)
    path = logs / "case-a.r1.manual.jsonl"
    path.write_bytes(b"\n".join(lines))
    parsed = load_log(path)
    active_time(parsed.events)
    _report(logs)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
                     | st.text(max_size=10) | st.just(10 ** 400),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=8)
_KINDS = st.sampled_from(["case_opened", "box_drawn", "segment_slice", "propagate", "manual_edit", "accept",
                          "undo", "key_box_added"]) | _JSON
_EVENT = st.fixed_dictionaries(
    {"kind": _KINDS, "t": st.floats(allow_nan=True, allow_infinity=True) | _JSON},
    optional={"seq": st.integers() | _JSON, "session": _JSON, "seconds": _JSON, "slices": _JSON, "slice": _JSON,
              "encoder_calls": _JSON, "mask": _JSON | st.just("../../etc/passwd"), "case": _JSON, "reader": _JSON,
              "mode": st.sampled_from(["manual", "assisted"]) | _JSON, "wall": _JSON})


@FAST
@given(logs=st.dictionaries(st.sampled_from(["case-a.r1.manual", "case-a.r1.assisted", "case-b.r2.manual"]),
                            st.lists(_EVENT, max_size=6), min_size=1, max_size=3))
def test_log_parser_and_report_structured_garbage(folder, logs):
    from MedSAMSlicerLib.study.timelog import active_time, load_log

    target = folder / "structured-logs"
    target.mkdir(exist_ok=True)
    for old in target.glob("*.jsonl"):
        old.unlink()
    for name, events in logs.items():
        path = target / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
        parsed = load_log(path)
        timing = active_time(parsed.events, 120.0)
        assert math.isfinite(timing.active_s) and math.isfinite(timing.idle_s)
    _report(target)


# -------------------------------------------------------------------------------------- box and range parsers

_NUMBERISH = st.one_of(st.integers(-10 ** 6, 10 ** 6).map(str), st.floats(allow_nan=True).map(repr),
                       st.text(alphabet="0123456789-.e+ ²٣", max_size=8), st.just("9" * 5000))


@FAST
@given(text=st.text(max_size=40) | st.lists(_NUMBERISH, max_size=5).map(",".join))
def test_box_parser(text):
    with refused_in_one_line():
        box = parse_box(text)
        assert len(box.as_array()) == 4


@FAST
@given(text=st.text(max_size=30) | st.tuples(_NUMBERISH, _NUMBERISH).map(":".join))
def test_range_parser(text):
    from MedSAMSlicerLib.cli.options import parse_range

    with refused_in_one_line():
        parsed = parse_range(text)
        assert parsed is None or (len(parsed) == 2 and all(isinstance(v, int) for v in parsed))


@FAST
@given(text=st.text(max_size=40) | st.tuples(_NUMBERISH, st.lists(_NUMBERISH, max_size=5).map(",".join))
       .map(":".join))
def test_key_box_parser(text):
    from MedSAMSlicerLib.cli.options import parse_key_box

    with refused_in_one_line():
        index, box = parse_key_box(text)
        assert isinstance(index, int) and len(box.as_array()) == 4


@FAST
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
       rows=st.integers(1, 600), cols=st.integers(1, 600), degenerate=st.booleans())
def test_box_check(values, rows, cols, degenerate):
    from MedSAMSlicerLib.protocol import Box

    with refused_in_one_line():
        box = checked_box(Box(*values), (rows, cols), allow_degenerate=degenerate)
        assert 0 <= box.x0 <= box.x1 <= cols - 1 and 0 <= box.y0 <= box.y1 <= rows - 1
        assert degenerate or (box.width >= 1 and box.height >= 1)
