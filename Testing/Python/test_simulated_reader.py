"""The simulated reader (``bench/simulated_reader.py``) end to end in Chromium on a small real case, and its report.

The case is lung2's lesion cropped (with its label) to a few dozen voxels around it, so the run is short; the
reader waits no think time (``wait_scale`` 0).  Nothing is timed: the test checks that the real time log holds the
review actions, that the record lists what the reader did, and that ``medsam-slicer study report`` builds the report
naming both arms with the constants' sources.  The pricing itself is checked on a hand-made record.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, shared_path
from web_driver import missing_browser_parts


def _bench():
    spec = importlib.util.spec_from_file_location("simulated_reader", REPO / "bench" / "simulated_reader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pricing_of_a_hand_made_record():
    """Two labelled slices drawn by hand vs one box, a propagation, two reviews and accepts: each arm as the KLM
    constants say, and the sensitivity table moves the saving both ways."""
    from MedSAMSlicerLib.study.reader_report import price, reader_markdown, reader_report
    from MedSAMSlicerLib.study.time_model import Constants

    c = Constants()
    record = {"case": "c1", "accept_dice": 0.8, "wait_scale": 0.0, "contours": {
        "3": {"segments": 10, "length_mm": 50.0}, "4": {"segments": 8, "length_mm": 40.0}},
        "actions": [{"action": "box", "slice": 3, "system_s": 0.5}, {"action": "propagate", "system_s": 2.0},
                    {"action": "review", "slice": 3, "system_s": 0.0}, {"action": "accept", "slice": 3,
                                                                          "system_s": 0.1},
                    {"action": "review", "slice": 4, "system_s": 0.0}, {"action": "manual_edit", "slice": 4,
                                                                          "system_s": 0.0}]}
    priced = price(record, c)
    draw3 = c.key_s + c.mental_s + c.point_s + 2 * c.button_s + 10 * c.segment_s + c.cm_s * 50 * c.screen_cm_per_mm
    draw4 = c.key_s + c.mental_s + c.point_s + 2 * c.button_s + 8 * c.segment_s + c.cm_s * 40 * c.screen_cm_per_mm
    assert priced["manual_s"] == pytest.approx(draw3 + draw4)
    human = c.box_s() + c.key_s + 2 * c.review_s() + c.key_s
    assert priced["assisted_s"] == pytest.approx(human + 2.6 + c.edit_ratio * draw4)
    report = reader_report(record, c)
    assert report["saved_range"][0] < report["saved_fraction"] < report["saved_range"][1]
    text = reader_markdown(report)
    assert "| manual |" in text and "| assisted |" in text and "Card, Moran, Newell" in text


@pytest.mark.skipif(bool(missing_browser_parts()), reason=missing_browser_parts() or "ok")
def test_simulated_reader_end_to_end_on_a_small_case(tmp_path):
    bench = _bench()
    image, label = bench.crop_case(shared_path("pyradiomics", "lung2_image.nrrd"),
                                   shared_path("pyradiomics", "lung2_label.nrrd"), tmp_path, 12, slices=5)
    logs = bench.run(image, label, tmp_path, 0.0, 0.8, os.environ.get("MEDSAM_SLICER_TEST_CACHE"))
    record = json.loads((logs / "simulated_reader.json").read_text())
    done = [a["action"] for a in record["actions"]]
    assert done[:2] == ["box", "propagate"] and done.count("review") >= 5 and "next_doubtful" in done
    assert {"accept", "corrective_box", "wrong", "cut"} & set(done)  # each reviewed slice was acted on
    assert not [a for a in record["actions"] if a.get("error")], record["actions"]
    (log_file,) = logs.glob("*.jsonl")
    kinds = [json.loads(line)["kind"] for line in log_file.read_text().splitlines() if line.strip()]
    assert {"box_drawn", "propagate"} <= set(kinds), kinds
    for action, kind in (("accept", "slice_accepted"), ("corrective_box", "corrective_box"), ("cut", "object_cut"),
                         ("wrong", "slice_rejected"), ("next_doubtful", "doubtful_jump")):
        if action in done and not (action == "next_doubtful" and done.count(action) == 1):
            assert kind in kinds, (action, kinds)
    env = dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer"))
    answer = subprocess.run([sys.executable, "-m", "MedSAMSlicerLib.cli", "study", "report", str(logs), "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert answer.returncode == 0, answer.stderr
    reader = json.loads(answer.stdout)["simulated_reader"]
    assert set(reader["arms"]) == {"manual", "assisted"} and reader["manual_s"] > 0
    assert {r["source"] for r in reader["sensitivity"]} >= {"klm", "lucido", "dreizin"}
    text = (logs / "simulated_reader.md").read_text()
    assert "| manual |" in text and "| assisted |" in text
