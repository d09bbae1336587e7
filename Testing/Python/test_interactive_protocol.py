"""The CVPR 2025 interactive protocol's pieces against hand-made volumes (no model), and one real run."""

import numpy as np
import pytest

from MedSAMSlicerLib.protocol import Box
from MedSAMSlicerLib.evaluation.interactive import (BoxBaseline, auc, challenge_box, challenge_nsd, correction_slice,
                                                    edt_centre, largest_error_component)
from MedSAMSlicerLib.engine.propagation import PropagationOptions


def test_largest_error_component_uses_26_connectivity():
    target = np.zeros((6, 12, 12), dtype=bool)
    prediction = np.zeros_like(target)
    # missed: a 2x2x2 cube and two voxels chained to it only through corners: 10 voxels when 26-connected,
    # 8 when 6-connected
    target[1:3, 1:3, 1:3] = True
    target[3, 3, 3] = target[4, 4, 4] = True
    prediction[5, 8:11, 8:11] = True  # leaked: a 9-voxel plate elsewhere
    component = largest_error_component(prediction, target)
    assert component.sum() == 10 and component[4, 4, 4] and component[1, 1, 1]
    target[4, 4, 4] = False
    prediction[5, 7, 8:11] = True  # plate 12 > chain 9
    component = largest_error_component(prediction, target)
    assert component.sum() == 12 and component[5, 7, 8]
    assert largest_error_component(target, target) is None


def test_correction_slice_and_click_centre():
    component = np.zeros((5, 9, 9), dtype=bool)
    component[1, 2:5, 2:5] = True  # 9 voxels on slice 1
    component[2, 1:8, 1:8] = True  # 49 on slice 2
    component[3, 3:6, 3:6] = True  # 9 on slice 3
    assert correction_slice(component, 0, "box") == 2
    assert correction_slice(component, 0, "box", done={2}) in (1, 3)
    centre = edt_centre(component)
    assert centre[0] == 2 and component[centre]
    assert correction_slice(component, 0, "click") == 2


def test_auc_is_the_challenges_trapezoid_over_the_corrections():
    values = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9]  # step 0 then 5 corrections
    # official: integrate.cumulative_trapezoid(values[-5:], np.arange(5))[-1]
    expected = (0.5 + 0.6) / 2 + (0.6 + 0.7) / 2 + (0.7 + 0.8) / 2 + (0.8 + 0.9) / 2
    assert auc(values, 5) == pytest.approx(expected)
    assert auc(values, 1) == 0.0


def test_nsd_is_zero_when_dice_is_at_most_0_2():
    target = np.zeros((4, 10, 10), dtype=bool)
    target[1:3, 2:8, 2:8] = True
    assert challenge_nsd(target, target, (1.0, 1.0, 1.0), 0.2) == 0.0
    assert challenge_nsd(target, target, (1.0, 1.0, 1.0), 1.0) == 1.0


def test_challenge_jitter_widens_by_at_most_5_px_at_256_scale():
    plane = np.zeros((512, 256), dtype=bool)
    plane[100:200, 50:120] = True
    tight = challenge_box(plane, None)
    assert tight == Box(50, 100, 119, 199)
    for seed in range(20):
        box = challenge_box(plane, np.random.default_rng(seed))
        dx, dy = tight.x0 - box.x0, tight.y0 - box.y0
        assert 0 <= dx <= 5 and dy == int(dx * 512 / 256)  # one shift, scaled per axis as get_boxes.py does
        assert box.x1 - tight.x1 == dx


class _Session:
    np_axis = 0
    slice_shape = (10, 10)

    def empty_mask(self):
        return np.zeros((8, 10, 10), dtype=bool)


def test_box_baseline_interpolates_between_keys_and_holds_to_the_range_ends():
    baseline = BoxBaseline(_Session(), PropagationOptions(slice_range=(1, 6)))
    baseline.start({2: Box(0, 0, 2, 2)})
    baseline.add_box(4, Box(0, 0, 6, 6))
    mask = baseline.mask
    assert not mask[0].any() and not mask[7].any()
    assert mask[1].sum() == 9 and mask[2].sum() == 9  # the nearest key's box up to the range end
    assert mask[3].sum() == 25  # halfway: 0..4
    assert mask[5].sum() == 49 and mask[6].sum() == 49
    baseline.cut(6)
    assert not baseline.mask[6].any()


def test_eval_interactive_on_a_real_case_from_the_command_line(capsys, cache, monkeypatch):
    """The CLI's JSON on a real lesion: per-step calls (no encoder call after step 0 with the label's range), AUC
    over the corrections, no correction lowering the DSC by more than 0.02, and the no-model baseline's run."""
    import json

    from MedSAMSlicerLib.cli.main import main

    from conftest import shared_path

    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(cache.disk_dir))
    image = shared_path("medsam2_recist", "CT_Lesion_000015_01_01_081-093.npz")
    runs = {}
    for extra in ([], ["--baseline", "boxes"]):
        code = main(["eval", str(image), "--protocol", "interactive", "--steps", "3", "--json", *extra])
        out = capsys.readouterr()
        assert code == 0, out.err
        (runs["baseline" if extra else "model"],) = json.loads(out.out)["results"]
    model, baseline = runs["model"], runs["baseline"]
    assert len(model["steps"]) == 4 and model["steps"][0]["decoder_calls"] > 0
    assert all(step["encoder_calls"] == 0 for step in model["steps"][1:])
    assert all(step["decoder_calls"] == 0 and step["encoder_calls"] == 0 for step in baseline["steps"])
    assert model["dsc_auc"] == pytest.approx(auc([s["dsc"] for s in model["steps"]], 3))
    dscs = [s["dsc"] for s in model["steps"]]
    assert all(b >= a - 0.02 for a, b in zip(dscs, dscs[1:])) and dscs[-1] >= dscs[0]
    # the baseline only fills boxes: it follows the same corrections (its DSC moves) but may beat the model on a
    # single small lesion; the comparison over the shared cases is the README's table
    assert baseline["steps"][-1]["dsc"] != baseline["steps"][0]["dsc"]
