"""The contract between the rooms (``MedSAMSlicerLib.protocol``): each value's wire form round-trips, the frame of a
volume's geometry is explicit and converts exactly, and brain2 (whose direction flips the j axis) gives the same
masks whichever frame its geometry is written in -- through the engine, and through the Slicer side on slicer-core.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_path

from MedSAMSlicerLib.errors import BoxError, InputImageError
from MedSAMSlicerLib.protocol import (Box, JobState, ObjectAction, ObjectStart, PropagationResult, PropagationSettings, SessionSpec, SliceRequest,
                                      SliceResult, Volume, axes, box_values, check_voxels, decode_result,
                                      volume_from_matrix)


def test_box_wire_form_round_trips_and_bad_boxes_say_so():
    box = Box(1.0, 2.5, 30.0, 40.0)
    assert Box.from_json(json.loads(json.dumps(box.to_json()))) == box
    assert box_values((1, 2, 3, 4)) == [1.0, 2.0, 3.0, 4.0] and box_values(box) == box.to_json()
    for bad in ([1, 2, 3], "1,2,3,4", None, [1, 2, "x", 4]):
        with pytest.raises(BoxError):
            box_values(bad)


def test_job_state_is_an_enum_that_still_reads_as_its_string():
    assert JobState("done") is JobState.DONE and JobState.DONE == "done"
    assert f"the job is {JobState.RUNNING}" == "the job is running"
    assert json.dumps({"state": JobState.CANCELLED}) == '{"state": "cancelled"}'
    assert not JobState.RUNNING.finished and all(s.finished for s in JobState if s is not JobState.RUNNING)
    with pytest.raises(ValueError):
        JobState("paused")


def test_settings_and_results_round_trip_through_json():
    settings = PropagationSettings(rule="official", slice_range=(3, 9), stop=False, fill_holes=True, margin=5)
    assert PropagationSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert PropagationSettings.from_json(None) == PropagationSettings()
    # the dict the Slicer logic passes (no margin) means the defaults for what it leaves out
    assert PropagationSettings.from_json({"slice_range": [1, 2], "stop": True}).margin == 3

    rng = np.random.default_rng(0)
    mask = rng.random((7, 11, 13)) > 0.7
    result = PropagationResult(mask, 5, {"down": "object ended"}, {2: 0.5, 3: 0.25})
    back = PropagationResult.from_json(json.loads(json.dumps(result.to_json())))
    assert np.array_equal(back.mask, mask) and back.scores == result.scores and back.stopped == result.stopped
    assert decode_result(json.loads(json.dumps(result.to_json())))["scores"] == {2: 0.5, 3: 0.25}

    plane = mask[0]
    one = SliceResult(4, plane, float("nan"), Box(0, 0, 5, 5))
    back_one = SliceResult.from_json(json.loads(json.dumps(one.to_json())))
    assert np.array_equal(back_one.mask, plane) and back_one.score == 0.0 and back_one.box == one.box


def test_each_server_request_converts_to_its_protocol_type():
    """What the client sends (``to_json``) passes the server's strict models and comes back as the same value."""
    from MedSAMSlicerLib.server.app import PropagateRequest, SegmentRequest, SessionRequest

    spec = SessionSpec((0.5, 0.5, 2.0), (1.0, 2.0, 3.0), (1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), "mr", "k", "MR")
    assert SessionRequest.model_validate({"fingerprint": "0" * 64, **spec.to_json()}).to_protocol() == spec
    prompt = SliceRequest(3, Box(1, 2, 30, 40), allow_degenerate=True)
    assert SegmentRequest.model_validate(prompt.to_json()).to_protocol() == prompt
    assert SliceRequest.from_json(json.loads(json.dumps(prompt.to_json()))) == prompt
    settings = PropagationSettings(slice_range=(1, 4), stop=False, largest_component=True)
    request = PropagateRequest.model_validate({"key_boxes": {"2": [1, 2, 3, 4]}, "options": settings.to_json()})
    assert request.to_protocol() == {2: Box(1, 2, 3, 4)} and request.options.to_protocol() == settings


def test_correctable_object_requests_convert_to_their_protocol_types():
    """The corrective-box routes' bodies: an object's start (one-sided range) and each action, both ways."""
    from pydantic import ValidationError

    from MedSAMSlicerLib.server.app import ActionRequest, ObjectRequest

    start = ObjectStart({3: Box(1, 2, 30, 40), 7: Box(2, 3, 20, 30)}, slice_range=(None, 12), stop=False, margin=4)
    body = json.loads(json.dumps(start.to_json()))
    assert ObjectStart.from_json(body) == start
    assert ObjectRequest.model_validate({**body, "request_id": "a" * 8}).to_protocol() == start
    assert ObjectRequest.model_validate({"key_boxes": {"3": [1, 2, 3, 4]}}).to_protocol() == ObjectStart(
        {3: Box(1, 2, 3, 4)})
    for step in (ObjectAction("box", 5, Box(1, 2, 3, 4)), ObjectAction("cut", 9), ObjectAction("accept", 2),
                 ObjectAction("undo")):
        body = json.loads(json.dumps(step.to_json()))
        assert ObjectAction.from_json(body) == step
        assert ActionRequest.model_validate({**body, "request_id": "b" * 8}).to_protocol() == step
    edited = np.zeros((6, 9), dtype=bool)
    edited[2:4, 3:7] = True
    step = ObjectAction("edit", 4, mask=edited)
    back = ActionRequest.model_validate(json.loads(json.dumps(step.to_json()))).to_protocol()
    assert back == step and np.array_equal(back.mask, edited) and back != ObjectAction("edit", 4, mask=~edited)
    with pytest.raises(ValidationError):
        ActionRequest.model_validate({"action": "erase", "index": 1})


def test_engine_translates_settings_both_ways():
    from MedSAMSlicerLib.engine import AUTO, propagation_options, propagation_settings

    for stop in (True, False):
        settings = PropagationSettings(slice_range=(2, 8), stop=stop, largest_component=True, margin=4)
        options = propagation_options(settings)
        assert options.stop == (AUTO if stop else None) and options.slice_range == (2, 8) and options.margin == 4
        assert propagation_settings(options) == settings


def test_frames_convert_exactly_and_compare_across_frames():
    array = np.zeros((4, 5, 6), dtype=np.int16)
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    lps = Volume(array, (0.5, 0.7, 3.0), (10.0, -20.0, 30.0), direction)
    ras = lps.in_frame("RAS")
    assert ras.frame == "RAS" and ras.origin == (-10.0, 20.0, 30.0)
    assert ras.direction == (-0.0, -0.0, -1.0, -1.0, -0.0, -0.0, 0.0, -1.0, 0.0)
    assert ras.in_frame("LPS") == lps and ras.array is array  # exact, voxels shared
    assert np.array_equal(ras.ijk_to_lps(), lps.ijk_to_lps()) and ras.same_grid(lps)
    assert SessionSpec.of_volume(ras, "mr", "k").to_json() == SessionSpec.of_volume(lps, "mr", "k").to_json()
    for axis in axes.AXIS_CHOICES:  # the engine's choice of slice axis is the same in both frames
        assert axes.numpy_axis(axis, ras.direction) == axes.numpy_axis(axis, lps.direction)
    with pytest.raises(ValueError):
        Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction, frame="XYZ")


def test_a_label_written_on_a_ras_volume_lands_on_the_files_lps_grid(tmp_path):
    import SimpleITK as sitk

    from MedSAMSlicerLib.volumeio.files import write_label

    lps = Volume(np.zeros((3, 4, 5), np.int16), (0.5, 0.7, 2.0), (10.0, -20.0, 30.0),
                 (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    mask = np.zeros(lps.array.shape, bool)
    mask[1, 2, 3] = True
    written = [sitk.ReadImage(str(write_label(tmp_path / name, mask, volume)))
               for name, volume in (("lps.nrrd", lps), ("ras.nrrd", lps.in_frame("RAS")))]
    assert written[0].GetOrigin() == written[1].GetOrigin() == lps.origin
    assert written[0].GetDirection() == written[1].GetDirection() == lps.direction
    assert np.array_equal(sitk.GetArrayFromImage(written[0]), sitk.GetArrayFromImage(written[1]))


def test_one_voxel_check():
    check_voxels(np.zeros((2, 2, 2), dtype=np.uint8))
    for bad, words in ((np.zeros((2, 2)), "3D"), (np.zeros((0, 2, 2)), "no voxels"),
                       (np.array([[[np.nan]]]), "NaN"), (np.zeros((1, 1, 1), dtype=complex), "real number")):
        with pytest.raises(InputImageError, match=words):
            check_voxels(bad)


def _brain2():
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    volume = read_volume(shared_path("pyradiomics", "brain2_image.nrrd"))
    label = read_label(shared_path("pyradiomics", "brain2_label.nrrd"), volume) > 0
    index = int(np.argmax(label.sum(axis=(1, 2))))
    rows, cols = np.nonzero(label[index])
    return volume, index, Box(float(cols.min() - 2), float(rows.min() - 2), float(cols.max() + 2),
                              float(rows.max() + 2))


def test_brain2_gives_the_same_masks_in_either_frame(segmenter, cache):
    """brain2's direction flips j (LPS y): written in RAS its first two rows change sign; the engine's masks do not."""
    from MedSAMSlicerLib.engine import PropagationOptions, VolumeSession, propagate

    lps, index, box = _brain2()
    assert np.asarray(lps.direction).reshape(3, 3)[1, 1] == -1.0  # the flip this test is about
    ras = lps.in_frame("RAS")
    assert ras.direction != lps.direction
    masks = []
    for volume in (lps, ras):
        session = VolumeSession(segmenter, volume, "auto", "axial", cache)
        one = session.segment_slice(index, box)
        both = propagate(session, {index: box}, PropagationOptions())
        masks.append((session.np_axis, one.mask, both.mask))
    (axis_a, slice_a, volume_a), (axis_b, slice_b, volume_b) = masks
    assert axis_a == axis_b == 0
    assert slice_a.any() and np.array_equal(slice_a, slice_b)
    assert volume_a.sum() > slice_a.sum() and np.array_equal(volume_a, volume_b)


def test_slicer_side_fills_lps_from_its_ras_world_on_brain2():
    """The Slicer logic builds the volume in Slicer's RAS world, says so, and hands on LPS: brain2's geometry then
    equals the file's (what the CLI and the server see), and a label written on it lands on the file's grid."""
    pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install slicer-core)")
    from slicer_harness import SlicerHarness

    from MedSAMSlicerLogic.volume_nodes import volume_from_node

    from_file, _, _ = _brain2()
    harness = SlicerHarness()
    try:
        node = harness.load_volume(shared_path("pyradiomics", "brain2_image.nrrd"))
        grid = volume_from_node(node)
    finally:
        harness.close()
    volume = grid.volume
    assert volume.frame == "LPS"
    # Slicer's reader keeps the physical grid but may order the voxels differently (it stores brain2 with k
    # reversed): the two index spaces differ by an exact flip/permutation, the physical points are the same.
    to_file = np.linalg.inv(from_file.ijk_to_lps()) @ volume.ijk_to_lps()
    np.testing.assert_allclose(to_file, np.round(to_file), atol=1e-4)
    flips = tuple(slice(None, None, -1) if to_file[2 - a, 2 - a] < 0 else slice(None) for a in range(3))
    assert np.allclose(np.abs(np.round(to_file[:3, :3])), np.eye(3))  # no permutation here, only flips
    assert np.array_equal(volume.array, from_file.array[flips])
    ras = volume_from_matrix(volume.array, grid.ijk_to_world, "RAS")  # the world matrix Slicer's views use
    np.testing.assert_allclose(ras.ijk_to_lps(), volume.ijk_to_lps(), atol=1e-6)
    sent, sent_from_ras = SessionSpec.of_volume(volume).to_json(), SessionSpec.of_volume(ras).to_json()
    for field in ("spacing", "origin", "direction"):  # what goes to the server, from either frame
        np.testing.assert_allclose(sent[field], sent_from_ras[field], atol=1e-6)
