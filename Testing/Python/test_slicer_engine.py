"""The MRML logic against a live local engine service, the way the panel drives it (start, then ``poll()`` from a
timer): cancel, the server killed mid-job, the scene closed during a job, undo after a remote propagation.

The engine of this module keeps no disk cache (a private empty folder), so a propagation over lung1's slices
really encodes them (about 0.3 s each): the job is still running when the test cancels, kills or closes.
Encoder work: lung1 axial slices from 26 up, a few per test, stopped early; slice 33 in two more windows and its
two neighbours in one of them (the short-request and prefetch tests).
"""

import time

import numpy as np
import pytest

from slicer_fixtures import roi_in_ras, start_engine, tight_box, user_segmentation

LUNG_KEY = 33


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    link = start_engine(tmp_path_factory.mktemp("engine-cache"))
    yield link
    link.stop()


@pytest.fixture
def logic(harness, engine):
    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic

    if engine.client is None:
        restarted = start_engine(engine.log_path.parent)
        engine.process, engine.client, engine.log_path = restarted.process, restarted.client, restarted.log_path
    logic = BoxSegmentationLogic(harness.scene, engine.client)
    yield logic
    logic.reset()
    logic.detach()


def read(node, segment_id, volume):
    from MedSAMSlicerLogic.segments import read_segment

    return read_segment(node, segment_id, volume)


def start_long_propagation(logic, harness, lung, node=None, segment_id=None):
    """A propagation into the user's segment over many uncached slices; polled until the engine runs it."""
    volume, label = lung
    roi = roi_in_ras(harness.scene, volume, "k", 10, 47, tight_box(label[LUNG_KEY], 3))  # thick box: range 10..47
    logic.start_propagation(volume, [roi], node, segment_id, window="lung", range_mode="roi")
    for _ in range(400):
        progress = logic.poll()
        assert not progress.finished, progress
        if progress.state == "running" and logic.pending.job is not None:
            return progress
    raise AssertionError("the engine never started the job")


def test_segment_slice_and_propagate_through_polling(harness, logic, lung):
    volume, label = lung
    roi = roi_in_ras(harness.scene, volume, "k", 32, 34, tight_box(label[LUNG_KEY], 3))
    logic.start_segment_slice(volume, roi, window="lung")
    states = []
    while True:
        progress = logic.poll()
        states.append(progress.state)
        if progress.finished:
            break
    assert progress.state == "done", progress.message
    segmentation = harness.scene.GetNodeByID(progress.operation.snapshot.segmentation_node_id)
    segment_id = progress.operation.snapshot.segment_id
    written = read(segmentation, segment_id, volume)
    assert written[LUNG_KEY].any() and not np.delete(written, LUNG_KEY, axis=0).any()
    assert np.logical_and(written, label).sum() > 0.5 * written.sum()  # on the tumour

    logic.start_propagation(volume, [roi], window="lung", range_mode="roi")
    seen = []
    while True:
        progress = logic.poll()
        seen.append((progress.state, progress.done, progress.total))
        if progress.finished:
            break
    assert progress.state == "done", progress.message
    assert progress.outcome.propagation.segmented_slices == 3
    written = read(segmentation, segment_id, volume)  # the object's own segment, now 3 slices
    assert sorted(np.flatnonzero(written.any(axis=(1, 2)))) == [32, 33, 34]
    assert logic.poll().state == "idle"


def record_requests(client) -> tuple[list, object]:
    """Every request ``client`` makes from now on as (method, path, json body, timeout); and a function to stop."""
    calls = []
    send = client._http.request

    def request(method, url, *args, **kwargs):
        calls.append((method, url[len(client.url):], kwargs.get("json"), kwargs.get("timeout")))
        return send(method, url, *args, **kwargs)

    client._http.request = request  # the instance's attribute shadows requests.Session.request
    return calls, lambda: delattr(client._http, "request")


def test_segment_slice_polls_make_only_short_requests_and_match_the_blocking_call(harness, logic, lung, engine):
    """A cold slice: poll() reports "running" while the engine encodes (no poll waits for the encoder: the slice is
    a job), every request made from poll() carries a timeout of at most POLL_TIMEOUT, and the mask written is the
    one the blocking RemoteVolume.segment_slice gives."""
    from MedSAMSlicerLogic.box_segmentation import POLL_TIMEOUT

    volume, label = lung
    roi = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, tight_box(label[LUNG_KEY], 3))
    logic.start_segment_slice(volume, roi, window="mediastinum")  # a window no other test uses: nothing cached
    calls, stop_recording = record_requests(engine.client)
    states = []
    try:
        while True:
            progress = logic.poll()
            states.append(progress.state)
            if progress.finished:
                break
    finally:
        stop_recording()
    assert progress.state == "done", progress.message
    assert {"running", "waiting"} & set(states[:-1]), states
    assert calls and all(timeout is not None and timeout <= POLL_TIMEOUT for *_, timeout in calls), calls
    starts = [body for method, path, body, _ in calls if method == "POST" and path.endswith("/segment")]
    assert starts and all(body["async"] for body in starts)  # the slice ran as a job on the engine
    assert progress.outcome.encoder_calls == 1

    result = progress.outcome.slice_result
    grid = logic.grid(volume).volume
    remote = engine.client.open_volume(grid.array, grid.spacing, grid.origin, grid.direction, window="mediastinum",
                                       modality=grid.modality)
    mask, score = remote.segment_slice(LUNG_KEY, (result.box.x0, result.box.y0, result.box.x1, result.box.y1))
    remote.close()
    assert mask.any() and np.array_equal(result.mask, mask) and result.score == pytest.approx(score, abs=1e-6)
    segmentation = harness.scene.GetNodeByID(progress.operation.snapshot.segmentation_node_id)
    written = read(segmentation, progress.operation.snapshot.segment_id, volume)
    assert np.array_equal(written[LUNG_KEY], mask)


def test_a_drawn_box_has_its_slice_and_neighbours_encoded_before_segment_slice(harness, logic, lung, engine):
    """draw_box asks the engine to encode the box's slice and its neighbours (idle polls send the volume first);
    "Segment slice" afterwards finds its slice cached: no encoder call."""
    from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points

    volume, label = lung
    logic.prefetch_neighbours = 1
    logic.prefetch_window = "bone"  # a window no other test uses: nothing cached
    shape = label.shape
    harness.slice_nodes["Red"].JumpSliceByCentering(
        *ijk_to_world_points(ijk_to_world(volume), (shape[2] / 2, shape[1] / 2, LUNG_KEY))[0])
    roi, prompt, _ = logic.draw_box(volume, harness.slice_nodes["Red"])
    assert prompt.index == LUNG_KEY and logic.preparing
    for _ in range(3000):
        assert logic.poll().state == "idle"  # no operation: the polls only send the volume, then the prefetch
        if not logic.preparing:
            break
    assert not logic.preparing

    grid = logic.grid(volume).volume
    remote = engine.client.open_volume(grid.array, grid.spacing, grid.origin, grid.direction, window="bone",
                                       axis=prompt.axis, modality=grid.modality)  # the same prepared volume
    deadline = time.monotonic() + 600
    while remote.info()["encoder_calls"] < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # the engine encodes in the background
    assert remote.info()["encoder_calls"] == 3  # slices 32, 33, 34
    operation, outcome = logic.segment_slice(volume, roi, window="bone")
    assert outcome.encoder_calls == 0 and outcome.slice_result.index == LUNG_KEY
    assert remote.info()["encoder_calls"] == 3
    remote.close()


def test_cancel_mid_job_writes_nothing(harness, logic, lung):
    volume, label = lung
    node, mine, mask = user_segmentation(harness, volume, label.shape)
    start_long_propagation(logic, harness, lung, node, mine)
    logic.cancel()
    progress = logic.wait()
    assert progress.state == "cancelled", progress
    assert "nothing was written" in progress.message
    np.testing.assert_array_equal(read(node, mine, volume), mask)
    assert len(logic.undo_stack) == 0 and logic.poll().state == "idle"


def test_server_killed_mid_job_leaves_the_segment_untouched(harness, logic, lung, engine):
    volume, label = lung
    node, mine, mask = user_segmentation(harness, volume, label.shape)
    start_long_propagation(logic, harness, lung, node, mine)
    engine.process.kill()  # the engine crashes (or the user kills it) while propagating
    engine.process.wait()
    progress = logic.wait()
    assert progress.state == "failed"
    assert "engine" in progress.message and "nothing was written" in progress.message and "\n" not in progress.message
    np.testing.assert_array_equal(read(node, mine, volume), mask)
    assert node.GetSegmentation().GetNumberOfSegments() == 1 and len(logic.undo_stack) == 0
    engine.stop()  # the next test's fixture starts a fresh engine


def test_scene_close_during_a_job_resets_everything(harness, logic, lung):
    volume, label = lung
    roi = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, tight_box(label[LUNG_KEY], 3))
    logic.segment_slice(volume, roi, window="lung")  # something to undo, a current object
    assert len(logic.undo_stack) == 1 and logic.current.segment_id
    start_long_propagation(logic, harness, lung)
    job = logic.pending.job

    harness.scene.Clear(0)  # File > Close Scene: the logic observes the scene's StartCloseEvent

    assert logic.pending is None and logic.poll().state == "idle"
    assert len(logic.undo_stack) == 0 and logic.current.segment_id == "" and logic.current.box_ids == []
    assert harness.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    for _ in range(200):  # the engine was told to stop the job
        status = job.poll(timeout=1.0)
        if status.finished:
            break
    assert status.state == "cancelled"


def test_undo_after_a_remote_propagation_restores_the_segment(harness, logic, lung):
    volume, label = lung
    node, mine, mask = user_segmentation(harness, volume, label.shape)
    roi = roi_in_ras(harness.scene, volume, "k", 32, 34, tight_box(label[LUNG_KEY], 3))
    operation, outcome = logic.propagate(volume, [roi], node, mine, window="lung", range_mode="roi")
    assert outcome.propagation.segmented_slices == 3
    assert not np.array_equal(read(node, mine, volume), mask)
    assert logic.undo() is operation
    np.testing.assert_array_equal(read(node, mine, volume), mask)
    assert node.GetSegmentation().GetSegment(mine).GetName() == "Mine"


def test_mask_to_labelmap_round_trip(harness, lung):
    """The labelmap the Segment Editor effect hands to modifySelectedSegmentByLabelmap lands on the same voxels
    (checked through the segmentations logic, as Segment Editor's own write would; no Qt here)."""
    import slicer

    from MedSAMSlicerLogic.segments import mask_to_labelmap

    volume, label = lung
    node = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "effect target")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = node.GetSegmentation().AddEmptySegment("", "target")
    labelmap = mask_to_labelmap(label, volume, node)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    np.testing.assert_array_equal(read(node, segment_id, volume), label)
