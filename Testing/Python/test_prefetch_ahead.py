"""Prefetch ahead (issue 18, the simulated reader's wait), on a real engine server process and the real client.

The browser app asks the engine to encode the slices around the one the reader looks at, outwards in both directions
(``MedSAMSlicerWeb.app.outwards``), so a propagation from a box there finds them cached; and the engine's prefetch
waits while a job runs, so that it never slips an encoder call in between two calls of a propagation (or of a
correction, or a click).  Counts of encoder calls only, no timing asserted.  A small synthetic volume (a bright disc
through every slice): every slice is one encoder call, whatever the content.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

SLICES = 40


@pytest.fixture(scope="module")
def server(onnx_dir):
    from MedSAMSlicerLib.client import EngineClient

    client = EngineClient.start_local(args=("--device", "cpu", "--memory-mb", "1024"))
    client.wait_ready()
    yield client
    client.stop()


def cylinder(level: int) -> np.ndarray:
    """A disc of radius 20 through every slice of 96x96 (uint8, already windowed); ``level`` makes the content (and
    so the cache's key) differ between tests."""
    yy, xx = np.mgrid[:96, :96]
    plane = np.where((yy - 48) ** 2 + (xx - 48) ** 2 <= 20 ** 2, 200, level).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(plane[None], SLICES, axis=0))


BOX = (26.0, 26.0, 70.0, 70.0)


def encoder_calls(volume) -> int:
    return int(volume.info()["encoder_calls"])


def wait_calls(volume, at_least: int, timeout: float = 600.0) -> int:
    """Poll the session until its encoder calls reach ``at_least`` (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while (calls := encoder_calls(volume)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return calls


def test_prefetch_around_the_shown_slice_covers_the_propagation_from_it(server):
    pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")
    from MedSAMSlicerWeb.app import outwards

    assert outwards(10, 3, SLICES) == [10, 11, 9, 12, 8, 13, 7]
    assert outwards(1, 3, 5) == [1, 2, 0, 3, 4]  # clipped at both ends
    volume = server.open_volume(cylinder(10), already_normalized=True)
    ahead = outwards(10, 3, SLICES)
    volume.prefetch(ahead)
    assert wait_calls(volume, len(ahead)) == len(ahead)
    result = volume.start_object({10: BOX}, {"slice_range": [7, 13], "stop": False}).result()
    assert sorted(result["changed"]) == list(range(7, 14))
    assert result["encoder_calls"] == 0  # every slice of the propagation was encoded ahead
    assert encoder_calls(volume) == len(ahead)
    volume.close()


def test_prefetch_waits_while_a_propagation_and_a_click_run(server):
    volume = server.open_volume(cylinder(20), already_normalized=True)
    far = list(range(SLICES - 1, SLICES - 9, -1))  # 8 slices the jobs below never touch
    volume.prefetch(far)
    wait_calls(volume, 1)  # the prefetch is under way
    before = encoder_calls(volume)
    result = volume.start_object({3: BOX}, {"slice_range": [0, 6], "stop": False}).result()
    assert result["encoder_calls"] == 7  # its own slices, all cold
    slipped = encoder_calls(volume) - before - result["encoder_calls"]
    # One prefetch call may be running when the job starts (an encoder call cannot be interrupted), one more may
    # finish between reading the count and the job's start; before the engine waited for jobs, a prefetch call went
    # in between every two calls of the propagation (about one per slice: 6 or 7 here).
    assert slipped <= 2, f"{slipped} prefetch encoder calls ran during the propagation"
    before = encoder_calls(volume)
    mask, _ = volume.segment_slice(15, BOX)  # a click on a cold slice while the prefetch still has slices left
    assert mask.any()
    slipped = encoder_calls(volume) - before - 1
    assert slipped <= 2, f"{slipped} prefetch encoder calls ran before the click's"
    total = result["encoder_calls"] + 1 + len(far)
    assert encoder_calls(volume) < total  # the click was answered before the prefetch ended
    assert wait_calls(volume, total) == total  # and the prefetch then went on to its end
    volume.close()
