"""A corrective box decodes the first slice of both walks at once (OpenVINO's two-stream decoder copy): the same
logits and scores as one call after the other, and corrections that write the same masks with the same counts.
No timing here: bench/correction_speed.py measures it."""

import numpy as np
import pytest

from MedSAMSlicerLib.engine.corrections import CorrectableObject
from MedSAMSlicerLib.engine.propagation import PropagationOptions
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices
from MedSAMSlicerLib.protocol import axes, box_from_mask

from conftest import real_cases

CASE = "CT_Lesion_000015_01_01_081-093"


@pytest.fixture
def lesion(open_case, segmenter):
    runtime = segmenter.runtime
    if runtime is None or not hasattr(runtime, "decode_pair") or not runtime.has_decoder:
        pytest.skip(f"{segmenter.describe_backend()} has no paired decoder (OpenVINO only)")
    cases = [c for c in real_cases() if c.name == CASE]
    if not cases:
        pytest.skip(f"{CASE} not found in ../shared/data")
    session, label = open_case(cases[0])
    present = [int(v) for v in labelled_slices(label > 0, session.np_axis)]
    return session, label > 0, present


def test_a_pair_decodes_like_two_single_calls(lesion, segmenter):
    session, target, present = lesion
    runtime = segmenter.runtime
    prompts = []
    for index in (present[0], present[len(present) // 2], present[-1], present[1]):
        embedding = session.embedding(index)
        box = segmenter.pipeline.box_array(box_from_mask(axes.take_slice(target, session.np_axis, index)),
                                           embedding.geometry)
        prompts.append((embedding.features.numpy(), box[None]))
    pairs = [(prompts[0], prompts[1]), (prompts[2], prompts[3]), (prompts[1], prompts[1])]
    for first, second in pairs:
        together = runtime.decode_pair(first, second)
        if together is None:
            pytest.skip(f"the two-stream decoder is not used on this CPU: {runtime.pair_state}")
        for (logits, score), (embedding, box) in zip(together, (first, second)):
            alone_logits, alone_score = runtime.decode(embedding, box)
            assert np.array_equal(logits, alone_logits) and score == alone_score


def test_corrections_write_the_same_with_and_without_the_pair(lesion, segmenter, monkeypatch):
    session, target, present = lesion
    real, used = segmenter.runtime.decode_pair, []
    monkeypatch.setattr(segmenter.runtime, "decode_pair", lambda *pair: used.append(1) or real(*pair))
    objects = {}
    middle = present[len(present) // 2]
    for paired in (True, False):
        segmenter.pair_decodes = paired
        try:
            obj = CorrectableObject(session, PropagationOptions(slice_range=(present[0], present[-1])))
            obj.start({middle: box_from_mask(axes.take_slice(target, session.np_axis, middle))})
            changes = [obj.add_box(i, box_from_mask(axes.take_slice(target, session.np_axis, i)))
                       for i in (present[1], present[-2], present[2])]
        finally:
            segmenter.pair_decodes = True
        objects[paired] = obj, changes
    (with_pair, changes), (without, changes_alone) = objects[True], objects[False]
    for a, b in zip(changes, changes_alone):
        assert (a.changed, a.decoder_calls, a.encoder_calls, a.stopped) == \
            (b.changed, b.decoder_calls, b.encoder_calls, b.stopped)
    assert with_pair.scores == without.scores and set(with_pair.masks) == set(without.masks)
    assert all(np.array_equal(with_pair.masks[i], without.masks[i]) for i in with_pair.masks)
    assert used  # at least one box had both walks decode a first slice, and those two went together
