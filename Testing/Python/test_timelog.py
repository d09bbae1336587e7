"""Session log: one fsync-ed JSON line per event, active time with idle gaps, crashes, privacy."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from MedSAMSlicerLib.study import timelog
from MedSAMSlicerLib.study.timelog import (SessionLog, active_time, case_pseudonym, changed_slices, load_log, log_path,
                                     read_log)

from conftest import REPO


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_log(folder, clock, **kwargs) -> SessionLog:
    return SessionLog(folder, "case-01", "r1", "assisted", clock=clock, wall_clock=lambda: 1.7e9, **kwargs)


def test_each_event_is_one_complete_json_line(tmp_path):
    clock = FakeClock()
    with make_log(tmp_path, clock) as log:
        log.event("case_opened", slices=40, axis="axial")
        clock.advance(2.5)
        written = log.event("box_drawn", slice=np.int64(12), box="10,20,30,40")
    lines = log.path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (first["kind"], first["seq"], first["t"], first["slices"]) == ("case_opened", 1, 1000.0, 40)
    assert (second["kind"], second["seq"], second["t"], second["slice"]) == ("box_drawn", 2, 1002.5, 12)
    assert second == written
    assert {first["case"], first["reader"], first["mode"]} == {"case-01", "r1", "assisted"}
    assert first["wall"] == "2023-11-14T22:13:20.000Z" and first["session"] == second["session"]
    assert log.path.name == "case-01.r1.assisted.jsonl"
    if os.name == "posix":
        assert log.path.stat().st_mode & 0o777 == 0o600  # private


def test_unknown_kinds_and_reserved_fields_are_refused(tmp_path):
    with make_log(tmp_path, FakeClock()) as log:
        with pytest.raises(ValueError, match="unknown event kind"):
            log.event("coffee")
        with pytest.raises(ValueError, match="reserved"):
            log.event("undo", t=5)
        assert not log.closed
    assert log.path.read_text() == "" and log.closed
    with pytest.raises(ValueError, match="closed"):
        log.event("undo")


def test_identifying_fields_are_dropped_unless_the_user_opts_in(tmp_path):
    with make_log(tmp_path / "private", FakeClock()) as log:
        event = log.event("case_opened", volume_name="DOE^JANE 1961", patient_id="123456", slices=30)
    assert "DOE" not in log.path.read_text() and "123456" not in log.path.read_text()
    assert event["redacted"] == ["patient_id", "volume_name"] and event["slices"] == 30
    with make_log(tmp_path / "opted-in", FakeClock(), allow_identifiers=True) as log:
        log.event("case_opened", volume_name="DOE^JANE 1961")
    assert "DOE^JANE" in log.path.read_text()


@pytest.mark.parametrize("bad", ["../etc", "John Doe", "a.b", "", "x" * 65])
def test_case_and_reader_ids_must_be_plain_names(tmp_path, bad):
    with pytest.raises(ValueError):
        log_path(tmp_path, bad, "r1", "manual")
    with pytest.raises(ValueError):
        log_path(tmp_path, "case-01", bad, "manual")


def test_pseudonyms_are_stable_keyed_and_do_not_contain_the_name(tmp_path):
    first = case_pseudonym(tmp_path, "DOE^JANE 1.2.840.113619")
    assert first == case_pseudonym(tmp_path, "DOE^JANE 1.2.840.113619")
    assert first != case_pseudonym(tmp_path, "DOE^JOHN 1.2.840.113619")
    assert first.startswith("case-") and "DOE" not in first
    log_path(tmp_path, first, "r1", "manual")  # usable as a case id
    key = tmp_path / ".pseudonym-key"
    if os.name == "posix":
        assert key.stat().st_mode & 0o777 == 0o600
    key.write_bytes(b"another site, another key.......")  # 32 bytes: another key, another pseudonym
    assert case_pseudonym(tmp_path, "DOE^JANE 1.2.840.113619") != first


def test_idle_gaps_are_not_active_time():
    def at(t, kind="box_drawn", **fields):
        return {"t": t, "kind": kind, "session": "a", **fields}

    events = [at(0), at(10), at(20), at(530), at(540)]  # a 510 s break between 20 and 530
    timing = active_time(events, idle_threshold_s=120)
    assert timing.active_s == pytest.approx(30.0)
    assert timing.idle_s == pytest.approx(510.0)
    assert [(g.start_t, g.end_t) for g in timing.idle_gaps] == [(20, 530)]
    # The threshold is a parameter: with 600 s nothing is idle.
    assert active_time(events, idle_threshold_s=600).active_s == pytest.approx(540.0)


def test_time_the_model_computes_is_active_even_when_long():
    events = [{"t": 0, "kind": "box_drawn", "session": "a"},
              {"t": 200, "kind": "propagate", "session": "a", "seconds": 150.0},  # 50 s of reader time + 150 s
              {"t": 500, "kind": "propagate", "session": "a", "seconds": 100.0}]  # 200 s unexplained: a break
    timing = active_time(events, idle_threshold_s=120)
    assert timing.active_s == pytest.approx(200.0 + 100.0)
    assert timing.idle_s == pytest.approx(200.0)


def test_running_active_time_for_the_panel(tmp_path):
    clock = FakeClock()
    with make_log(tmp_path, clock, idle_threshold_s=60) as log:
        assert log.active_seconds() == 0.0 and log.is_idle()
        log.event("case_opened")
        clock.advance(30)
        log.event("box_drawn", slice=3)
        clock.advance(20)
        assert log.active_seconds() == pytest.approx(50.0)  # the clock runs between events
        assert not log.is_idle()
        clock.advance(100)
        assert log.active_seconds() == pytest.approx(30.0) and log.is_idle()  # a break stops the clock
        log.event("accept")
        assert log.active_seconds() == pytest.approx(30.0)
        assert active_time(read_log(log.path), 60).active_s == pytest.approx(log.active_seconds())


def test_reopening_a_case_appends_a_new_session_and_keeps_earlier_time(tmp_path):
    clock = FakeClock()
    with make_log(tmp_path, clock) as first:
        first.event("case_opened")
        clock.advance(40)
        first.event("case_closed")
    clock.now = 5.0  # another process: its monotonic clock has nothing to do with the first one's
    with make_log(tmp_path, clock) as second:
        assert second.active_seconds() == pytest.approx(40.0)
        second.event("case_opened")
        clock.advance(15)
        second.event("accept")
        assert second.active_seconds() == pytest.approx(55.0)
        assert second.session_id != first.session_id
    events = read_log(second.path)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    timing = active_time(events)
    assert (timing.active_s, timing.sessions) == (pytest.approx(55.0), 2)


def test_a_torn_last_line_is_reported_and_the_next_session_starts_a_fresh_line(tmp_path):
    clock = FakeClock()
    with make_log(tmp_path, clock) as log:
        log.event("case_opened")
        clock.advance(10)
        log.event("box_drawn", slice=4)
    with open(log.path, "ab") as handle:  # what a crash half-way through a write leaves
        handle.write(b'{"v":1,"seq":3,"session":"dead","kind":"propa')
    contents = load_log(log.path)
    assert [e["kind"] for e in contents.events] == ["case_opened", "box_drawn"]
    assert [(bad.line, bad.last) for bad in contents.damaged] == [(3, True)]
    with make_log(tmp_path, clock) as resumed:
        resumed.event("case_opened")
        clock.advance(5)
        resumed.event("accept")
    contents = load_log(log.path)
    assert [e["kind"] for e in contents.events] == ["case_opened", "box_drawn", "case_opened", "accept"]
    assert [(bad.line, bad.last) for bad in contents.damaged] == [(3, False)]
    assert active_time(contents.events).active_s == pytest.approx(15.0)


def test_a_crash_inside_the_write_loses_only_that_event(tmp_path, monkeypatch):
    clock = FakeClock()
    log = make_log(tmp_path, clock)
    log.event("case_opened")
    clock.advance(3)
    log.event("box_drawn", slice=2)
    real_write = os.write

    def dying_write(fd, data):  # the process dies after half of the bytes reached the file
        real_write(fd, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(timelog.os, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        log.event("propagate", slices=12, seconds=9.5, encoder_calls=12)
    monkeypatch.undo()
    log.close()
    contents = load_log(log.path)
    assert [e["kind"] for e in contents.events] == ["case_opened", "box_drawn"]
    assert len(contents.damaged) == 1 and contents.damaged[0].last


WRITER = """
import sys, time
sys.path.insert(0, {engine!r})
from MedSAMSlicerLib.study.timelog import SessionLog
log = SessionLog({folder!r}, "case-01", "r1", "manual")
for n in range(100000):
    log.event("manual_edit", slices=[n % 40], voxels=n)
"""


def test_killing_the_writer_leaves_a_readable_log(tmp_path):
    script = WRITER.format(engine=str(REPO / "MedSAMSlicer"), folder=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script])
    path = log_path(tmp_path, "case-01", "r1", "manual")
    try:
        deadline = time.monotonic() + 120
        while (not path.exists() or path.stat().st_size < 20_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, "the writer ended before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        child.wait()
    contents = load_log(path)
    seqs = [e["seq"] for e in contents.events]
    assert len(seqs) > 50 and seqs == list(range(1, len(seqs) + 1))  # nothing lost but possibly the last one
    assert all(bad.last for bad in contents.damaged) and len(contents.damaged) <= 1


def test_changed_slices_names_the_edited_slices():
    before = np.zeros((6, 8, 8), dtype=bool)
    after = before.copy()
    after[2, 3, 3] = True
    after[4, :, 1] = True
    assert changed_slices(before, after, 0) == [2, 4]
    assert changed_slices(before, after, 2) == [1, 3]
    with pytest.raises(ValueError):
        changed_slices(before, after[:5], 0)


def test_events_as_table_rows_for_the_panel(tmp_path):
    clock = FakeClock()
    with make_log(tmp_path, clock) as log:
        log.event("case_opened", slices=30)
        clock.advance(1.5)
        log.event("manual_edit", slices=[3, 4], voxels=120, tool="paint")
        rows = timelog.events_as_table(log.events)
    assert len(timelog.TABLE_COLUMNS) == len(rows[0])
    assert rows[1][:6] == ["2", "2023-11-14T22:13:20.000Z", "1001.500", "manual_edit", "[3, 4]", ""]
    assert json.loads(rows[1][6]) == {"voxels": 120, "tool": "paint"}
    assert rows[0][4] == "30" and rows[0][6] == ""
