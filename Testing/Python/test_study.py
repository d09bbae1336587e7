"""Study report from session logs: hand-computed metrics, outputs, replay, crash, case lists, a real session."""

import argparse
import csv
import io
import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from MedSAMSlicerLib.errors import InputImageError, OptionError
from MedSAMSlicerLib.evaluation.metrics import dice
from MedSAMSlicerLib.study.report import (StudyCase, build_report, next_case, plan_cases, read_case_list, report_csv,
                                   write_case_list, write_report)
from MedSAMSlicerLib.study.timelog import SessionLog, changed_slices, load_log, read_log, replay

from conftest import real_cases

SHAPE = (6, 20, 20)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def record(folder, case, reader, mode, steps, mask=None) -> SessionLog:
    """Write one case log: ``steps`` are (seconds since the previous event, kind, fields)."""
    clock = FakeClock()
    log = SessionLog(folder, case, reader, mode, clock=clock, wall_clock=lambda: 1.75e9)
    for wait, kind, fields in steps:
        clock.now += wait
        if kind == "accept" and mask is not None:
            fields = {**fields, "mask": log.save_mask(mask)}
        log.event(kind, **fields)
    log.close()
    return log


def reference_cube() -> np.ndarray:
    cube = np.zeros(SHAPE, dtype=bool)
    cube[1:5, 5:15, 5:15] = True
    return cube


@pytest.fixture()
def study(tmp_path):
    """Two readers, two cases, both modes; times chosen so the expected report is computed by hand below."""
    logs = tmp_path / "logs"
    truth = reference_cube()
    partial = truth.copy()
    partial[4] = False  # r1 assisted left the last slice out
    shifted = np.roll(truth, 1, axis=2)  # r2 draws one column to the right
    opened = (0, "case_opened", {"slices": 6})
    # r1, case A, manual: 30 + 30 + 30 + 20 = 110 s.
    record(logs, "caseA", "r1", "manual", [
        opened, (30, "manual_edit", {"slices": [1]}), (30, "manual_edit", {"slices": [2, 3]}),
        (30, "manual_edit", {"slices": [4]}), (20, "accept", {})], truth)
    # r1, case A, assisted: 10 + 5 + 8 + 12 + (400 s coffee break) + 6 + 4 = 45 s active, 400 s idle.
    record(logs, "caseA", "r1", "assisted", [
        opened, (10, "box_drawn", {"slice": 3, "box": "5,5,14,14"}), (5, "key_box_added", {"slice": 3}),
        (8, "propagate", {"slices": 4, "seconds": 6.0, "encoder_calls": 4}),
        (12, "manual_edit", {"slices": [4]}), (400, "box_moved", {"slice": 2}), (6, "undo", {}),
        (4, "accept", {})], partial)
    # r1, case B: manual 200 s, assisted 10 + 10 + 20 = 40 s.
    record(logs, "caseB", "r1", "manual", [opened, (100, "manual_edit", {"slices": [1]}), (100, "accept", {})])
    record(logs, "caseB", "r1", "assisted", [
        opened, (10, "box_drawn", {"slice": 1}), (10, "segment_slice", {"slice": 1, "seconds": 1.5}),
        (20, "accept", {})])
    # r2, case A: manual 100 s, assisted 50 s; case B manual never accepted, assisted 30 s.
    record(logs, "caseA", "r2", "manual", [opened, (60, "manual_edit", {"slices": [2]}), (40, "accept", {})],
           shifted)
    record(logs, "caseA", "r2", "assisted", [
        opened, (20, "box_drawn", {"slice": 2}), (10, "propagate", {"slices": 4, "seconds": 5, "encoder_calls": 4}),
        (20, "accept", {})], shifted)
    record(logs, "caseB", "r2", "manual", [opened, (90, "manual_edit", {"slices": [3]})])
    record(logs, "caseB", "r2", "assisted", [opened, (30, "accept", {})])
    np.savez_compressed(tmp_path / "caseA_label.npz", imgs=np.zeros(SHAPE, np.uint8), gts=truth.astype(np.uint8),
                        spacing=np.array([1.0, 1.0, 1.0]))
    return logs, tmp_path / "caseA_label.npz", truth, partial, shifted


def test_report_metrics_match_the_hand_computed_values(study):
    logs, reference, truth, partial, shifted = study
    report = build_report(logs, {"caseA": str(reference)}, idle_threshold_s=120)
    rows = {(r.case, r.reader, r.mode): r for r in report.rows}
    assert len(rows) == 8
    a1m, a1a = rows[("caseA", "r1", "manual")], rows[("caseA", "r1", "assisted")]
    assert (a1m.active_s, a1m.idle_s) == (110.0, 0.0)
    assert (a1a.active_s, a1a.idle_s, a1a.idle_gaps) == (45.0, 400.0, 1)
    assert a1a.saved_percent == pytest.approx(100 * (1 - 45 / 110), abs=0.01)
    assert (a1a.slices_touched, a1a.boxes_drawn, a1a.box_moves, a1a.key_boxes) == (3, 1, 1, 1)  # slices 2, 3, 4
    assert (a1a.propagations, a1a.propagated_slices, a1a.model_s, a1a.encoder_calls) == (1, 4, 6.0, 4)
    assert (a1a.manual_edits, a1a.edits_after_ai, a1a.slices_edited_after_ai, a1a.undos) == (1, 1, 1, 1)
    assert (a1m.slices_touched, a1m.manual_edits, a1m.edits_after_ai) == (4, 3, 0)  # no model: no "after AI"
    assert rows[("caseB", "r1", "assisted")].saved_percent == pytest.approx(80.0)
    assert rows[("caseB", "r1", "assisted")].slice_segmentations == 1
    # Dice: against the reference, the other reader (same case, same mode), the same reader's manual mask.
    assert a1m.dice_reference == 1.0
    assert a1a.dice_reference == pytest.approx(dice(partial, truth), abs=1e-4)
    assert a1a.dice_other_readers == pytest.approx(dice(partial, shifted), abs=1e-4)
    assert a1a.dice_own_manual == pytest.approx(dice(partial, truth), abs=1e-4)
    assert rows[("caseB", "r1", "assisted")].dice_reference is None  # no reference for case B
    # Unfinished: r2's manual read of case B; it keeps r2's case B out of the savings.
    assert report.unfinished == ["caseB.r2.manual.jsonl"]
    assert rows[("caseB", "r2", "assisted")].saved_percent is None
    readers = {s.reader: s for s in report.readers}
    assert (readers["r1"].paired_cases, readers["r1"].manual_s, readers["r1"].assisted_s) == (2, 310.0, 85.0)
    assert readers["r1"].saved_percent == pytest.approx(100 * (1 - 85 / 310), abs=0.01)
    assert readers["r2"].saved_percent == pytest.approx(50.0)
    assert report.overall.saved_percent == pytest.approx(100 * (1 - 135 / 410), abs=0.01)
    # Another idle threshold, recomputed from the same raw timestamps: the break becomes annotation time.
    lenient = build_report(logs, idle_threshold_s=600)
    assert {(r.case, r.reader, r.mode): r for r in lenient.rows}[("caseA", "r1", "assisted")].active_s == 445.0


def test_report_files(study, tmp_path):
    logs, reference, *_ = study
    report = build_report(logs, {"caseA": str(reference)})
    files = write_report(report, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert len(rows) == 8 and rows[0]["case"] == "caseA" and "saved_percent" in rows[0]
    assert {(r["reader"], r["mode"], r["active_s"]) for r in rows if r["case"] == "caseA"} >= {
        ("r1", "manual", "110.0"), ("r1", "assisted", "45.0")}
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = files["markdown"].read_text()
    assert "72.6 %" in text and "50.0 %" in text and "82.37 %" in text and "unfinished" in text.lower()
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files


def test_replaying_the_logs_reproduces_the_report(study, tmp_path):
    logs, reference, *_ = study
    original = build_report(logs, {"caseA": str(reference)})
    events = [event for path in sorted(logs.glob("*.jsonl")) for event in read_log(path)]
    replayed_folder = tmp_path / "replayed"
    written = replay(events, replayed_folder, masks_from=logs)
    assert len(written) == 8
    replayed = build_report(replayed_folder, {"caseA": str(reference)})
    assert report_csv(replayed) == report_csv(original)
    assert replayed.readers == original.readers and replayed.overall == original.overall


def test_a_torn_line_does_not_change_the_report(study):
    logs, reference, *_ = study
    before = build_report(logs, {"caseA": str(reference)})
    with open(logs / "caseA.r1.assisted.jsonl", "ab") as handle:
        handle.write(b'{"v":1,"seq":9,"session":"x","kind":"manual_ed')  # the crash
    after = build_report(logs, {"caseA": str(reference)})
    assert after.damaged == ["caseA.r1.assisted.jsonl line 9"]
    for old, new in zip(build_report_rows(before), after.rows):
        expected_damage = 1 if new.log == "caseA.r1.assisted.jsonl" else 0
        assert new.damaged_lines == expected_damage
        assert {**asdict(new), "damaged_lines": 0} == {**old, "damaged_lines": 0}


def build_report_rows(report):
    return [asdict(row) for row in report.rows]


def test_case_lists_plans_and_the_next_case(tmp_path):
    images = [str(tmp_path / f"scan{n}.nrrd") for n in range(4)]
    cases = plan_cases(images, tmp_path / "logs", seed=3)
    assert len(cases) == 8
    assert {c.case_id for c in cases[:4]} == {c.case_id for c in cases[4:]}  # every case in the second half
    assert [c.mode for c in cases[:4]].count("manual") == 2  # counterbalanced
    assert all({cases[n].mode, cases[n + 4].mode} == {"manual", "assisted"} for n in range(4))
    assert all("scan" not in c.case_id for c in cases)
    path = write_case_list(tmp_path / "cases.csv", cases)
    assert read_case_list(path) == cases
    single = plan_cases(images, tmp_path / "logs", both_modes=False, seed=3)
    assert [c.case_id for c in single] == [c.case_id for c in cases[:4]]
    assert [c.mode for c in single] == [c.mode for c in cases[:4]]  # half manual, half assisted

    first, second = cases[0], cases[1]
    assert next_case(cases, tmp_path / "logs", "r1") == first
    record(tmp_path / "logs", first.case_id, "r1", first.mode, [(0, "case_opened", {})])
    assert next_case(cases, tmp_path / "logs", "r1") == first  # opened but not accepted
    record(tmp_path / "logs", first.case_id, "r1", first.mode, [(5, "accept", {})])
    assert next_case(cases, tmp_path / "logs", "r1") == second
    assert next_case(cases, tmp_path / "logs", "r2") == first


def test_bad_inputs_are_one_line_user_errors(tmp_path):
    (tmp_path / "cases.csv").write_text("case,mode\ncase-1,automatic\n")
    with pytest.raises(OptionError, match="line 2"):
        read_case_list(tmp_path / "cases.csv")
    (tmp_path / "cases.csv").write_text("id,reader\nx,y\n")
    with pytest.raises(OptionError, match="case,mode"):
        read_case_list(tmp_path / "cases.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputImageError, match="no session logs"):
        build_report(tmp_path / "empty")
    with pytest.raises(InputImageError, match="does not exist"):
        build_report(tmp_path / "missing")


def test_report_command(study, tmp_path):
    from MedSAMSlicerLib.cli.study import add_parser as add_study_parser, run_study, study_text

    logs, reference, *_ = study
    write_case_list(tmp_path / "cases.csv", [StudyCase("caseA", "manual", "", str(reference)),
                                             StudyCase("caseA", "assisted"), StudyCase("caseC", "manual")])
    parser = argparse.ArgumentParser()
    add_study_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "report", str(logs), "--cases", str(tmp_path / "cases.csv"),
                              "--out", str(tmp_path / "report")])
    summary = run_study(args)
    json.dumps(summary)  # --json prints it
    assert summary["missing"] == ["caseC (manual)"]
    assert {r["case"]: r["dice_reference"] for r in summary["rows"] if r["reader"] == "r1"}["caseA"] is not None
    assert (tmp_path / "report" / "study_report.md").exists()
    text = study_text(summary)
    assert "reader r1: 2 cases in both modes" in text and "72.6 %" in text
    with pytest.raises(OptionError):
        run_study(parser.parse_args(["study", "report", str(logs), "--reference", "caseA"]))


def test_a_recorded_session_on_a_real_scan(open_case, tmp_path):
    """A reader's session as the Slicer logic would log it, with the real model and a fake clock: box, propagate,
    fix the slices below 0.9 Dice, accept; and the same case drawn by hand.  The report must say what happened."""
    (case,) = [c for c in real_cases() if c.name == "CT_Lesion_000009_03_01_036-048"]
    session, label = open_case(case)
    from MedSAMSlicerLib.evaluation.evaluate import official_key
    from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate

    truth = label > 0
    logs = tmp_path / "logs"
    clock = FakeClock()
    log = SessionLog(logs, "case-real", "r1", "assisted", clock=clock)
    log.event("case_opened", slices=session.slice_count, volume_name=case.name)
    key, box = official_key(truth, session.np_axis)
    clock.now += 12
    log.event("box_drawn", slice=key, box=str(box))
    calls = session.segmenter.encoder.calls
    mask = propagate(session, {key: box}, PropagationOptions(slice_range=(3, 9))).mask
    clock.now += 9
    log.event("propagate", slices=7, seconds=7.5, encoder_calls=session.segmenter.encoder.calls - calls)
    to_fix = [k for k in range(3, 10) if dice(mask[k], truth[k]) < 0.9]
    for k in to_fix:
        before = mask.copy()
        mask[k] = truth[k]
        clock.now += 20
        log.event("manual_edit", slices=changed_slices(before, mask, session.np_axis))
    clock.now += 5
    log.event("accept", mask=log.save_mask(mask))
    live_active = log.active_seconds()
    log.close()
    manual_steps = [(0, "case_opened", {})] + [(25, "manual_edit", {"slices": [k]}) for k in range(3, 10)]
    record(logs, "case-real", "r1", "manual", manual_steps + [(5, "accept", {})], truth)

    report = build_report(logs, {"case-real": str(case.image)})
    rows = {r.mode: r for r in report.rows}
    assisted, manual = rows["assisted"], rows["manual"]
    assert "CT_Lesion" not in (logs / "case-real.r1.assisted.jsonl").read_text()  # the name was redacted
    assert assisted.active_s == pytest.approx(12 + 9 + 20 * len(to_fix) + 5) == pytest.approx(live_active)
    assert manual.active_s == 7 * 25 + 5
    assert assisted.saved_percent == pytest.approx(100 * (1 - assisted.active_s / manual.active_s), abs=0.01)
    assert assisted.edits_after_ai == len(to_fix) == assisted.slices_edited_after_ai
    assert assisted.slices_touched == len({key, *to_fix})
    assert assisted.dice_reference == pytest.approx(dice(mask, truth), abs=1e-4)
    assert assisted.dice_own_manual == assisted.dice_reference and manual.dice_reference == 1.0
    print(f"real session: fixed slices {to_fix}, assisted {assisted.active_s:.0f} s vs manual "
          f"{manual.active_s:.0f} s, Dice {assisted.dice_reference:.3f}")
    # Replaying the recorded log reproduces the report.
    replayed = tmp_path / "replayed"
    replay([e for p in sorted(logs.glob("*.jsonl")) for e in load_log(p).events], replayed, masks_from=logs)
    assert report_csv(build_report(replayed, {"case-real": str(case.image)})) == report_csv(report)
    shutil.rmtree(replayed)
