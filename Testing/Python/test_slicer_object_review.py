"""Review of a propagated object in the MRML logic (``MedSAMSlicerLogic.object_review``) on slicer-core, against a
live local engine on loopback and a real scan (lung2's lesion, 11 slices): the object starts as a correctable one,
a slice is accepted and another edited by hand, then corrective boxes on their neighbours recompute only their
stretch; the accepted and the hand-edited slices keep their voxels; undo brings the segment and the engine back;
each action is a time-log event; a hand edit the review was not told of is kept too.  Every engine action is stepped by the logic's ``poll()`` as the panel does.
"""

import json

import numpy as np
import pytest

from conftest import shared_path
from slicer_fixtures import label_array, roi_in_ras, tight_box  # harness, engine, logic: conftest's plugin


@pytest.fixture
def lung(harness):
    volume = harness.load_volume(shared_path("pyradiomics", "lung2_image.nrrd"))
    return volume, label_array(shared_path("pyradiomics", "lung2_label.nrrd"))


def done(logic, pending):
    progress = logic.wait(pending)
    assert progress.state == "done", progress.message
    return progress


def segment(logic, volume):
    from MedSAMSlicerLogic.segments import read_segment

    node = logic.scene.GetNodeByID(logic.current.segmentation_id)
    return read_segment(node, logic.current.segment_id, volume)


def test_accepted_and_hand_edited_slices_survive_corrections(harness, logic, lung, tmp_path):
    import slicer

    from MedSAMSlicerLogic.object_review import ObjectReview

    volume, label = lung
    labelled = np.flatnonzero(label.any(axis=(1, 2)))
    key = int(labelled[len(labelled) // 2])
    logic.open_case(volume, str(tmp_path), "tester")
    review = ObjectReview(logic)
    roi = roi_in_ras(harness.scene, volume, "k", key, key, tight_box(label[key], 2))
    done(logic, review.start(volume, [roi], window="lung"))
    first = segment(logic, volume)
    assert review.active and first[key].any()
    assert set(review.state.scores) >= {key} and all(0 <= s <= 1 for s in review.state.scores.values())

    accepted, edited = key + 2, key - 2
    done(logic, review.accept_slice(volume, accepted))
    assert accepted in review.state.locked
    # A hand edit with the manual tools: a square on slice `edited`, written straight into the segment.
    node = logic.scene.GetNodeByID(logic.current.segmentation_id)
    mask = first.copy()
    mask[edited] = False
    mask[edited, 200:215, 300:320] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), node, logic.current.segment_id, volume)
    review.note_manual_edit(volume, [edited])
    done(logic, review.start_queued())
    assert edited in review.state.locked
    kept = segment(logic, volume)

    # Corrective boxes beside each locked slice (deliberately loose: they would change their neighbours).
    for index in (key + 1, key - 1, int(labelled[-1]), int(labelled[0])):
        box = roi_in_ras(harness.scene, volume, "k", index, index, tight_box(label[index], 8), name=f"box {index}")
        progress = done(logic, review.corrective_box(volume, box))
        changed = progress.operation.details["changed"]
        assert accepted not in changed and edited not in changed and index in changed
        if abs(index - key) == 1:  # inside the propagated object: its embeddings are cached on the engine
            assert progress.operation.details["encoder_calls"] == 0
        now = segment(logic, volume)
        assert np.array_equal(now[accepted], kept[accepted]) and np.array_equal(now[edited], kept[edited])
        unchanged = [s for s in range(label.shape[0]) if s not in changed]
        assert np.array_equal(now[unchanged], kept[unchanged])  # only the stretch the engine recomputed
        kept = now

    # "The object ends here" past the label's last slice, then undo of that step (segment and engine).
    beyond = int(labelled[-1]) + 1
    before_cut = segment(logic, volume)
    done(logic, review.end_here(volume, beyond))
    assert not segment(logic, volume)[beyond:].any()
    done(logic, review.undo(volume))
    assert np.array_equal(segment(logic, volume), before_cut)
    # A hand edit the review was not told of (no time log, no watcher): the next write keeps it, and sends it.
    node = logic.scene.GetNodeByID(logic.current.segmentation_id)
    mask = segment(logic, volume)
    mask[beyond + 1] = False
    mask[beyond + 1, 200:210, 300:310] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), node, logic.current.segment_id, volume)
    done(logic, review.end_here(volume, beyond))
    assert np.array_equal(segment(logic, volume)[beyond + 1], mask[beyond + 1])
    if review.queue:
        done(logic, review.start_queued())
        assert beyond + 1 in review.state.locked
    review.mark_wrong(key)
    assert review.next_doubtful(key - 1) == key  # a slice marked wrong is one to go to

    logic.close_case()
    (log_file,) = tmp_path.glob("*.jsonl")
    kinds = [json.loads(line)["kind"] for line in log_file.read_text().splitlines() if line.strip()]
    assert kinds.count("corrective_box") == 4 and kinds.count("slice_accepted") == 1
    assert {"propagate", "slice_edited", "object_cut", "undo", "slice_rejected", "doubtful_jump"} <= set(kinds)
