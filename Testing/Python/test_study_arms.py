"""Study mode's rules without a UI (``MedSAMSlicerLib.study.arms``): arms, the plan's order, plan checks."""

from __future__ import annotations

import pytest

from MedSAMSlicerLib.errors import OptionError
from MedSAMSlicerLib.study.arms import ArmRefused, StudyMode, check_action
from MedSAMSlicerLib.study.report import plan_cases, write_case_list
from MedSAMSlicerLib.study.timelog import SessionLog


def test_manual_arm_refuses_the_model_and_assisted_allows_it():
    for action in ("draw_box", "key_box", "segment_slice", "propagate"):
        with pytest.raises(ArmRefused, match="manual arm"):
            check_action("manual", action)
        check_action("assisted", action)
    check_action("manual", "paint")


def _plan(tmp_path):
    images = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.nrrd"
        path.write_bytes(b"not read here")
        images.append(str(path))
    cases = plan_cases(images, tmp_path / "logs")  # both arms: four rows, first reads before second reads
    write_case_list(tmp_path / "plan.csv", cases)
    return cases


def test_rows_in_plan_order_done_when_accepted(tmp_path):
    cases = _plan(tmp_path)
    study = StudyMode.load(tmp_path / "plan.csv", tmp_path / "logs")
    assert [(c.case_id, c.mode) for c in study.cases] == [(c.case_id, c.mode) for c in cases]
    assert study.next_index("r1") == 0 and study.status(0, "r1") == "not started"
    first = study.cases[0]
    with SessionLog(tmp_path / "logs", first.case_id, "r1", first.mode) as log:
        log.event("case_opened")
        assert study.status(0, "r1") == "in progress" and study.next_index("r1") == 0
        log.event("accept")
    assert study.status(0, "r1") == "done" and study.next_index("r1") == 1
    assert study.next_index("r2") == 0  # each reader has their own progress


def test_plan_checked_against_the_log_folder_and_the_scans(tmp_path):
    _plan(tmp_path)
    with pytest.raises(OptionError, match="no pseudonym key"):
        StudyMode.load(tmp_path / "plan.csv", tmp_path / "other-logs")
    (tmp_path / "other-logs").mkdir()
    (tmp_path / "other-logs" / ".pseudonym-key").write_bytes(b"k" * 32)
    with pytest.raises(OptionError, match="does not match"):
        StudyMode.load(tmp_path / "plan.csv", tmp_path / "other-logs")
    (tmp_path / "b.nrrd").unlink()
    with pytest.raises(OptionError, match="is not here"):
        StudyMode.load(tmp_path / "plan.csv", tmp_path / "logs")
