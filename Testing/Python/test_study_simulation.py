"""Simulated study: counts checked by hand on phantoms, then the protocol on a real lesion."""

import argparse

import numpy as np
import pytest

from MedSAMSlicerLib.protocol import axes
from MedSAMSlicerLib.errors import OptionError
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices
from MedSAMSlicerLib.evaluation.metrics import dice
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.study.simulation import (ActionTimes, Drawing, Protocol, contour_drawing, correction_drawing,
                                              count_protocol, drawable_box, key_slices, simulate_case,
                                              simulation_markdown, simulation_plot_png)

from conftest import real_cases

MM = (1.0, 1.0)
HAND_CHECKED_CASE = "CT_Lesion_000009_03_01_036-048"  # lesion on slices 3..9; also used by test_propagation


def square(size=40, low=10, high=30) -> np.ndarray:
    plane = np.zeros((size, size), dtype=bool)
    plane[low:high, low:high] = True
    return plane


def test_key_slices_are_the_middles_of_runs_of_n():
    assert key_slices(range(3, 10), 3) == [4, 7, 9]  # runs 3-5, 6-8, 9
    assert key_slices(range(3, 10), 5) == [5, 8]  # runs 3-7, 8-9
    assert key_slices(range(13), 5) == [2, 7, 11]
    assert key_slices([4], 10) == [4]
    assert key_slices([2, 3, 7, 8], 2) == [2, 7]  # labelled slices need not be contiguous


def test_contour_drawing_counts_strokes_and_polygon_clicks():
    assert contour_drawing(square(), MM, 1.0) == Drawing(strokes=1, points=4)  # four corners
    ring = square()
    ring[15:25, 15:25] = False
    assert contour_drawing(ring, MM, 1.0) == Drawing(strokes=2, points=8)  # outer boundary and hole
    two = square()
    two[33:37, 33:38] = True
    assert contour_drawing(two, MM, 1.0) == Drawing(strokes=2, points=8)
    dot = np.zeros((9, 9), dtype=bool)
    dot[4, 4] = True
    assert contour_drawing(dot, MM, 1.0) == Drawing(strokes=1, points=3)  # a polygon has 3 clicks at least
    assert contour_drawing(np.zeros((9, 9), dtype=bool), MM, 1.0) == Drawing()
    edge = np.zeros((20, 20), dtype=bool)
    edge[:, :8] = True  # touches three borders of the slice: still one closed polygon
    assert contour_drawing(edge, MM, 1.0) == Drawing(strokes=1, points=4)
    # A circle needs more clicks the tighter the tolerance.
    rows, cols = np.mgrid[:80, :80]
    disc = (rows - 40) ** 2 + (cols - 40) ** 2 <= 25 ** 2
    loose, tight = contour_drawing(disc, MM, 2.0).points, contour_drawing(disc, MM, 0.5).points
    assert 4 <= loose < tight


def test_correction_drawing_on_hand_checked_mistakes():
    truth = square()
    assert correction_drawing(truth, truth.copy(), MM, 1.0) == Drawing()
    cut = truth.copy()
    cut[10:15] = False  # the model missed the top 5 rows: redraw the top edge, from side to side via both corners
    assert correction_drawing(truth, cut, MM, 1.0) == Drawing(strokes=1, points=4)
    leak = truth.copy()
    leak[10:30, 30:34] = True  # the model leaked 4 columns to the right: one straight cut along the true edge
    assert correction_drawing(truth, leak, MM, 1.0) == Drawing(strokes=1, points=2)
    holed = truth.copy()
    holed[14:17, 14:17] = False  # a hole inside the lesion: one fill click
    assert correction_drawing(truth, holed, MM, 1.0) == Drawing(strokes=1, points=1)
    island = truth.copy()
    island[33:37, 33:37] = True  # a stray island: one click to remove it
    assert correction_drawing(truth, island, MM, 1.0) == Drawing(strokes=1, points=1)
    assert correction_drawing(truth, np.zeros_like(truth), MM, 1.0) == Drawing(strokes=1, points=4)  # missed
    assert correction_drawing(np.zeros_like(truth), island, MM, 1.0) == Drawing(strokes=2, points=2)  # erase both
    # Off by less than the tolerance is not a mistake: a 1-voxel dilation is within 1.5 mm.
    grown = np.zeros_like(truth)
    grown[9:31, 9:31] = True
    assert correction_drawing(truth, grown, MM, 1.5) == Drawing()
    assert correction_drawing(truth, grown, MM, 0.5).strokes == 1


def test_count_protocol_on_a_hand_checked_phantom():
    """Five labelled slices of a 20x20 square; the 'model' gets slices 1, 2, 5 right, cuts the top of slice 3,
    misses slice 4 and marks a stray blob on slice 6 where there is no label."""
    reference = np.zeros((8, 40, 40), dtype=bool)
    reference[1:6] = square()
    prediction = reference.copy()
    prediction[3, 10:15] = False  # Dice 2*300/(400+300) = 0.857 < 0.9: corrected by editing the top
    prediction[4] = False  # missed: Dice 0, redrawn (4 clicks either way)
    prediction[6, 5:9, 5:9] = True  # false positive slice: erased with one click
    times = ActionTimes(boundary_click_s=2.0, stroke_s=3.0, slice_navigation_s=1.0, review_slice_s=5.0,
                        model_slice_s=0.5)
    result = count_protocol("phantom", reference, prediction, key_slices(range(1, 6), 3), 0, (3.0, 1.0, 1.0),
                            model_slices=5, protocol=Protocol(key_every=3), times=times)
    assert result.key_slices == [2, 4]  # runs 1-3 and 4-5
    assert result.labelled_slices == [1, 2, 3, 4, 5]
    assert result.corrected_slices == [3, 4] and result.erased_slices == [6]
    assert result.slice_dice[3] == pytest.approx(600 / 700)
    # Manual: 5 slices, 1 stroke and 4 clicks each.
    assert result.manual.drawing == Drawing(5, 20)
    assert result.manual.total_s == pytest.approx(5 * 1.0 + 5 * 3.0 + 20 * 2.0)
    # Assisted: 2 key slices x (2 axes, 4 clicks) + top edge (1, 4) + missed slice (1, 4) + erase (1, 1).
    assert result.assisted.drawing == Drawing(2 * 2 + 1 + 1 + 1, 2 * 4 + 4 + 4 + 1)
    # Visits: 5 labelled slices to draw the axes, 6 marked slices to review.
    assert result.assisted.slices_visited == 11 and result.assisted.reviewed_slices == 6
    expected = 11 * 1.0 + 7 * 3.0 + 17 * 2.0 + 6 * 5.0 + 5 * 0.5
    assert result.assisted.total_s == pytest.approx(expected)
    assert result.saving == pytest.approx(1 - expected / 60.0)
    assert result.final_dice == 1.0 and result.ai_dice == pytest.approx(dice(prediction, reference))
    # The perfect model: axes, two passes over the 5 slices, 5 reviews, the model's time.
    assert result.perfect_model.total_s == pytest.approx(10 * 1.0 + 4 * 3.0 + 8 * 2.0 + 5 * 5.0 + 5 * 0.5)
    # Forcing a full redraw costs the whole square on slice 3 too (4 clicks, the same here) and erasing stays.
    redrawn = count_protocol("phantom", reference, prediction, [2, 4], 0, (3.0, 1.0, 1.0), 5,
                             Protocol(key_every=3, correction="redraw"), times)
    assert redrawn.assisted.drawing == Drawing(7, 17)
    # A lenient threshold accepts slice 3 as it is.
    lenient = count_protocol("phantom", reference, prediction, [2, 4], 0, (3.0, 1.0, 1.0), 5,
                             Protocol(key_every=3, dice_threshold=0.8), times)
    assert lenient.corrected_slices == [4] and lenient.final_dice < 1.0


def test_more_key_slices_cost_more_axes_and_the_results_render():
    reference = np.zeros((12, 40, 40), dtype=bool)
    reference[1:11] = square()
    results = [count_protocol("phantom", reference, reference, key_slices(range(1, 11), n), 0, (3.0, 1.0, 1.0),
                              10, Protocol(key_every=n)) for n in (3, 10)]
    assert [len(r.key_slices) for r in results] == [4, 1]
    assert [r.assisted.drawing for r in results] == [Drawing(8, 16), Drawing(2, 4)]  # axes only: all correct
    assert results[0].saving < results[1].saving and results[1].saving == pytest.approx(results[1].ceiling)
    text = simulation_markdown(results)
    assert "82.37" in text and text.count("\n| phantom |") == 2 and "key every 3" in text
    assert simulation_plot_png(results)[:8] == b"\x89PNG\r\n\x1a\n"


def test_options_are_checked():
    with pytest.raises(OptionError):
        Protocol(key_every=0).check()
    with pytest.raises(OptionError):
        Protocol(dice_threshold=1.5).check()
    with pytest.raises(OptionError):
        Protocol(correction="magic").check()
    with pytest.raises(OptionError, match="unknown action time"):
        ActionTimes().with_overrides({"coffee_s": 300})
    assert ActionTimes().with_overrides({"review_slice_s": 6}).review_slice_s == 6


def test_degenerate_label_slices_still_give_a_drawable_box():
    line = np.zeros((10, 10), dtype=bool)
    line[4, 2:7] = True
    box = drawable_box(line)
    assert box.width >= 1 and box.height >= 1


@pytest.fixture(scope="module")
def lesion(open_case):
    (case,) = [c for c in real_cases() if c.name == HAND_CHECKED_CASE]
    session, label = open_case(case)
    return session, label > 0


def test_protocol_on_a_real_lesion_matches_an_independent_count(lesion):
    session, reference = lesion
    assert labelled_slices(reference, 0).tolist() == [3, 4, 5, 6, 7, 8, 9]
    result = simulate_case(session, reference, HAND_CHECKED_CASE, Protocol(key_every=5))
    assert result.key_slices == [5, 8]  # runs 3-7 and 8-9
    # The same propagation, run here by hand from the label's boxes on slices 5 and 8.
    boxes = {k: drawable_box(axes.take_slice(reference, 0, k)) for k in (5, 8)}
    mask = propagate(session, boxes, PropagationOptions(slice_range=(3, 9))).mask
    scores = {k: dice(mask[k], reference[k]) for k in range(3, 10)}
    assert result.slice_dice == pytest.approx(scores)
    assert result.corrected_slices == [k for k in range(3, 10) if scores[k] < 0.9]
    assert result.erased_slices == []
    assert result.ai_dice == pytest.approx(dice(mask, reference)) and result.final_dice >= result.ai_dice
    spacing = (session.volume.spacing_zyx[1], session.volume.spacing_zyx[2])
    manual = sum((contour_drawing(reference[k], spacing, 1.0) for k in range(3, 10)), Drawing())
    assert result.manual.drawing == manual and manual.strokes == 7  # one boundary per slice
    times = ActionTimes()
    assert result.manual.total_s == pytest.approx(7 * 1.0 + manual.strokes * 2.0 + manual.points * 1.75)
    assert result.assisted.model_slices == 7 and result.assisted.reviewed_slices == 7
    fixes = result.assisted.drawing.points - 2 * 4
    assert 0 <= fixes <= sum(contour_drawing(reference[k], spacing, 1.0).points for k in result.corrected_slices)
    assert result.assisted.total_s == pytest.approx(
        14 * times.slice_navigation_s + times.drawing_seconds(result.assisted.drawing) + 7 * times.review_slice_s
        + 7 * times.model_slice_s)
    print(f"{HAND_CHECKED_CASE}: corrected {result.corrected_slices}, manual {result.manual.total_s:.0f} s, "
          f"assisted {result.assisted.total_s:.0f} s, saved {100 * result.saving:.1f} %")


def test_simulate_command(lesion, tmp_path, cache):
    from MedSAMSlicerLib.cli.study import add_parser as add_study_parser, run_study, study_text

    parser = argparse.ArgumentParser()
    add_study_parser(parser.add_subparsers(dest="command"))
    (case,) = [c for c in real_cases() if c.name == HAND_CHECKED_CASE]
    args = parser.parse_args(["study", "simulate", str(case.image), "--every", "5", "--device", "cpu",
                              "--cache-dir", str(cache.disk_dir), "--time", "review_slice_s=4",
                              "--out", str(tmp_path)])
    summary = run_study(args)
    (result,) = summary["results"]
    assert result["key_slices"] == [5, 8] and result["times"]["review_slice_s"] == 4.0
    assert (tmp_path / "simulation.md").exists() and (tmp_path / "simulation.png").exists()
    text = study_text(summary)
    assert "estimated time saved" in text and "82.37" in text and "review_slice_s 4" in text
    # the time model with sources: a fraction, its range over the sensitivity table, a source for every constant
    low, high = summary["saved_range"]
    assert low <= summary["saved_fraction"] <= high <= 1.0
    model = summary["time_model"]
    assert set(model["constant_sources"].values()) <= set(summary["sources"])
    assert {row["constant"] for row in model["sensitivity"]} >= set(model["constants"])
    assert "time model" in text
    with pytest.raises(OptionError):
        run_study(parser.parse_args(["study", "simulate", str(case.image), "--time", "coffee_s=1"]))
