"""The engine on Ray Serve (``serve --ray``), as a real local Ray cluster on loopback with 2 CPU model replicas.

One server for the whole module, started the way Slicer starts one (``EngineClient.start_local`` with ``--ray``):
the cluster, its controller, the HTTP proxy and the replicas' model loads are the cost of this file.  Volumes are
small synthetic ones (the routing is under test, not the model), except one real CT lesion, where the masks must
equal the in-process ones byte for byte.  Encoder calls are counted per replica (each replica's ``/info``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from conftest import REPO, shared_path

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'medsam-slicer[ray]'; "
                                        ".ci/setup installs it)")

RECIST = "CT_Lesion_000009_03_01_036-048.npz"  # lesion on slices 3..9 (as in test_server.py)
MAX_ONGOING = 12  # per replica: the 12 readers stay within it, the flood of test_spill goes 3x above it
BOX = (10.0, 10.0, 38.0, 38.0)


@pytest.fixture(scope="module")
def ray_server(segmenter, onnx_dir):
    """2 replicas of 0.5 CPU each on a local cluster with a 100 MB object store; the replicas reuse the ONNX
    export of the in-process ``segmenter`` (same runtime, so masks can be compared byte for byte)."""
    from MedSAMSlicerLib.client import EngineClient

    client = EngineClient.start_local(args=(
        "--ray", "--replicas", "2", "--replica-cpus", "0.5", "--object-store-mb", "100",
        "--max-ongoing", str(MAX_ONGOING), "--device", "cpu", "--memory-mb", "512", "--job-heartbeat", "20",
        "--max-sessions", "100"),
        startup_timeout=600)
    try:
        client.wait_ready()
        yield client
    finally:
        client.process.terminate()  # Ray's shutdown takes longer than stop()'s grace
        try:
            client.process.wait(90)
        except subprocess.TimeoutExpired:
            client.process.kill()
            client.process.wait()


def synthetic(seed: int, slices: int = 4, size: int = 48) -> np.ndarray:
    """A bright disc (radius varying by slice) on noise: a different content, hence fingerprint, per seed."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 40, (slices, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in range(slices):
        radius = 8 + k % 5
        volume[k][(yy - size // 2) ** 2 + (xx - size // 2 - seed % 4) ** 2 < radius * radius] = 170 + seed % 50
    return volume


def in_process(segmenter, cache, array: np.ndarray):
    from MedSAMSlicerLib.engine.session import VolumeSession
    from MedSAMSlicerLib.protocol import Volume

    return VolumeSession(segmenter, Volume(array, (1.0, 1.0, 1.0), (0, 0, 0), tuple(np.eye(3).ravel()),
                                           already_normalized=True), "auto", "axial", cache)


def box_of(values):
    from MedSAMSlicerLib.protocol import Box

    return Box(*values)


def client_of(server):
    from MedSAMSlicerLib.client import EngineClient

    return EngineClient(server.url, server.token)


def calls_by_replica(server, fingerprint: str) -> dict[str, int]:
    """Encoder calls made for ``fingerprint`` on each replica alive now."""
    replicas = server.info()["replicas"]
    return {tag: r["encoder_calls_by_fingerprint"].get(fingerprint, 0) for tag, r in replicas.items()}


# -- the same API --------------------------------------------------------------------------------------------------
def test_the_same_api_tokens_and_errors(ray_server):
    assert requests.get(ray_server.url + "/health", timeout=10).json()["ready"] is True
    response = requests.get(ray_server.url + "/info", timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    info = ray_server.info()
    assert info["ray"] and len(info["replicas"]) == 2 and info["model"] == "litemedsam"
    assert info["local_dir"] is None  # replicas may be on other machines: volumes go as uploads
    response = requests.post(ray_server.url + "/sessions", json={"fingerprint": "0" * 64},
                             headers={"Authorization": f"Bearer {ray_server.token}"}, timeout=10)
    assert response.status_code == 422 and "\n" not in response.json()["error"]["message"]
    from MedSAMSlicerLib.errors import ServiceError

    volume = client_of(ray_server).open_volume(synthetic(40, slices=2), already_normalized=True)
    with pytest.raises(ServiceError) as refused:  # another client's session does not exist for it
        client_of(ray_server).request("GET", f"/sessions/{volume.session_id}")
    assert refused.value.status == 404
    volume.close()


def test_masks_equal_in_process_on_a_real_lesion(ray_server, segmenter, cache):
    from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate

    with np.load(shared_path("medsam2_recist", RECIST)) as data:
        window = (slice(4, 8), slice(150, 262), slice(180, 292))
        image, gts = np.ascontiguousarray(data["imgs"][window]), data["gts"][window] > 0
    rows, cols = np.nonzero(gts[2])
    box = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    local = in_process(segmenter, cache, image)
    remote = ray_server.open_volume(image, already_normalized=True)
    mask, score = remote.segment_slice(2, box)
    expected = local.segment_slice(2, box_of(box))
    assert mask.any() and np.array_equal(mask, expected.mask) and score == pytest.approx(expected.score, abs=1e-6)
    result = remote.propagate({2: box}, {"slice_range": (0, 3)}).result()
    reference = propagate(local, {2: box_of(box)}, PropagationOptions(slice_range=(0, 3)))
    assert result["mask"].any() and np.array_equal(result["mask"], reference.mask)
    assert result["segmented_slices"] == reference.segmented_slices
    remote.close()


def test_object_review_actions_on_the_replica_holding_the_object(ray_server, segmenter, cache):
    """An object started, corrected, accepted, undone and edited by hand through the Ray deployment (``/objects``
    and its ``actions``, as the review front ends send them): each answer equals the in-process
    CorrectableObject's, every action runs on the replica that holds the object (no encoder call after the start,
    none elsewhere), another client cannot act on the object, one request sent twice at once (a client repeating a
    request that timed out) is one job applied once, and closing the session drops the ingress's routing entry of
    its objects (``/info`` ``objects``: it does not grow with every object ever started)."""
    from MedSAMSlicerLib.engine.corrections import CorrectableObject
    from MedSAMSlicerLib.engine.propagation import PropagationOptions
    from MedSAMSlicerLib.errors import ServiceError
    from MedSAMSlicerLib.protocol import wire

    volume = synthetic(21, slices=6)
    local = CorrectableObject(in_process(segmenter, cache, volume), PropagationOptions(slice_range=(0, 5)))
    local.start({2: box_of(BOX)})
    objects = ray_server.info()["objects"]
    remote = client_of(ray_server).open_volume(volume, already_normalized=True)
    started = remote.start_object({2: BOX}, {"slice_range": [0, 5]}).result()
    assert ray_server.info()["objects"] == objects + 1
    assert started["mask"].any() and np.array_equal(started["mask"], local.mask)
    object_id, fingerprint = started["object_id"], wire.content_fingerprint(volume)
    encoded = calls_by_replica(ray_server, fingerprint)
    corrective = (14.0, 14.0, 34.0, 34.0)
    change = local.add_box(4, box_of(corrective))
    boxed = remote.correct(object_id, "box", 4, corrective).result()
    assert boxed["changed"] == change.changed and boxed["decoder_calls"] == change.decoder_calls
    assert boxed["encoder_calls"] == 0 and np.array_equal(boxed["mask"], local.mask)
    accepted = remote.correct(object_id, "accept", 3).result()
    assert accepted["locked"] == [3] and np.array_equal(accepted["mask"], boxed["mask"])
    undone = remote.correct(object_id, "undo").result()  # the accept
    assert undone["locked"] == [] and np.array_equal(undone["mask"], boxed["mask"])
    undone = remote.correct(object_id, "undo").result()  # the corrective box
    assert np.array_equal(undone["mask"], started["mask"]) and undone["keys"] == started["keys"]
    edited = np.zeros(volume.shape[1:], dtype=bool)
    edited[20:28, 20:30] = True  # a hand edit: its packed mask crosses to the replica too
    answer = remote.correct(object_id, "edit", 5, mask=edited).result()
    assert answer["locked"] == [5] and np.array_equal(answer["mask"][5], edited)
    jobs: list = []
    together = threading.Barrier(6)

    def send() -> None:  # the same request id at once: the others arrive while the first is being started
        together.wait(60)
        jobs.append(remote.correct(object_id, "accept", 1, request_id="repeated-accept"))

    repeats = [threading.Thread(target=send) for _ in range(6)]
    for thread in repeats:
        thread.start()
    for thread in repeats:
        thread.join(120)
    assert len(jobs) == 6 and len({job.job_id for job in jobs}) == 1 and jobs[0].result()["locked"] == [1, 5]
    assert remote.correct(object_id, "undo").result()["locked"] == [5]  # one accept to undo, not two
    assert calls_by_replica(ray_server, fingerprint) == encoded and sorted(encoded.values())[0] == 0
    other = client_of(ray_server).open_volume(volume, already_normalized=True)
    with pytest.raises(ServiceError) as refused:
        other.correct(object_id, "accept", 3).result()
    assert refused.value.status == 404
    other.close()
    remote.close()
    assert ray_server.info()["objects"] == objects


# -- routing by volume -----------------------------------------------------------------------------------------------
def test_twelve_readers_on_four_volumes_each_volume_encoded_on_one_replica(ray_server, segmenter, cache):
    volumes = [synthetic(seed) for seed in range(4)]
    plan = {reader: [(reader // 4 + step) % 4 for step in range(3)] for reader in range(12)}  # 36 requests
    results, errors, resent = {}, [], []

    def read(reader: int) -> None:
        client = client_of(ray_server)
        try:
            remote = client.open_volume(volumes[reader % 4], already_normalized=True)
            for index in plan[reader]:
                results[(reader, index)] = remote.segment_slice(index, BOX)[0]
            remote.close()
        except Exception as error:  # collected: the test says which reader failed and how
            errors.append(f"reader {reader}: {error}")
        resent.append(client.resent)

    threads = [threading.Thread(target=read, args=(reader,)) for reader in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    assert sum(resent) == 0  # below max_ongoing_requests nothing spills
    from MedSAMSlicerLib.protocol import wire

    for number, volume in enumerate(volumes):
        calls = calls_by_replica(ray_server, wire.content_fingerprint(volume))
        assert sorted(calls.values()) == [0, 4], (number, calls)  # one replica, each slice once
        local = in_process(segmenter, cache, volume)
        for reader in range(number, 12, 4):
            for index in plan[reader]:
                assert np.array_equal(results[(reader, index)], local.segment_slice(index, box_of(BOX)).mask)


def test_above_max_ongoing_requests_spills_are_re_sent_and_right(ray_server, segmenter, cache):
    """3x max_ongoing_requests at once on one volume: Ray sends the overflow to the other replica, which asks for
    the volume; every mask is still the in-process one, the re-sends are counted, and a propagation started
    meanwhile is polled on its own replica throughout (never restarted, never a 404)."""
    from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate

    volume = synthetic(7, slices=12)
    before = ray_server.info()
    owner = client_of(ray_server)
    remote = owner.open_volume(volume, already_normalized=True)
    job = remote.propagate({5: BOX})
    results, errors, clients = {}, [], []
    start = threading.Barrier(3 * MAX_ONGOING)
    propagated = {}
    poller = threading.Thread(target=lambda: propagated.update(job.result()))  # polls all along
    poller.start()

    def read(reader: int) -> None:
        client = client_of(ray_server)
        clients.append(client)
        try:
            mine = client.open_volume(volume, already_normalized=True)
            start.wait(60)
            results[reader] = mine.segment_slice(reader % 12, BOX)[0]
        except Exception as error:
            errors.append(f"reader {reader}: {error}")

    threads = [threading.Thread(target=read, args=(reader,)) for reader in range(3 * MAX_ONGOING)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    poller.join(600)
    assert not errors, errors
    local = in_process(segmenter, cache, volume)
    for reader, mask in results.items():
        assert np.array_equal(mask, local.segment_slice(reader % 12, box_of(BOX)).mask), reader
    assert np.array_equal(propagated["mask"], propagate(local, {5: box_of(BOX)}, PropagationOptions()).mask)
    after = ray_server.info()
    resent = sum(c.resent for c in clients) + owner.resent
    # every "re-send the volume" answer was followed by a re-send, and at least one volume reached the replica that
    # asked (concurrent re-sends of one volume after the first find it there already)
    assert resent >= 1 and after["resend_answers"] - before["resend_answers"] == resent
    assert after["resent_volumes"] > before["resent_volumes"]
    assert after["job_restarts"] == before["job_restarts"]  # every poll reached the job's replica
    remote.close()


def test_a_replica_killed_mid_propagation(ray_server, segmenter, cache):
    """SIGKILL the replica running a propagation: the client's job completes by itself (the volume re-sent, the
    job started again where the volume now is) with the same mask; another reader meanwhile sees no error.  A
    correctable object on that replica is gone: an action started before the kill and polled after it is not
    applied again elsewhere, and both it and a new action fail with one line saying to start the object again."""
    from MedSAMSlicerLib.client.engine_client import OBJECT_GONE
    from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
    from MedSAMSlicerLib.errors import ServiceError

    volume, other = synthetic(11, slices=10), synthetic(12, slices=3)
    local = in_process(segmenter, cache, volume)
    expected = propagate(local, {4: box_of(BOX)}, PropagationOptions()).mask
    reader = client_of(ray_server)
    theirs = reader.open_volume(other, already_normalized=True)
    theirs_expected = in_process(segmenter, cache, other).segment_slice(1, box_of(BOX)).mask
    client = client_of(ray_server)
    remote = client.open_volume(volume, already_normalized=True)
    object_id = remote.start_object({9: BOX}, {"slice_range": [9, 9]}).result()["object_id"]  # the last slice
    accept = remote.correct(object_id, "accept", 9)  # started on the replica, polled only after the kill
    objects = ray_server.info()["objects"]
    job = remote.propagate({4: BOX})
    while job.poll(timeout=0.2).done < 2 and not job.status.finished:
        pass
    assert not job.status.finished, "the propagation ended before the kill; make the volume longer"
    replicas = ray_server.info()["replicas"]
    running = [r for r in replicas.values() if r["encoder_calls_by_fingerprint"].get(remote.fingerprint)]
    assert len(running) == 1
    stop, seen = threading.Event(), []

    def keep_reading() -> None:
        while not stop.is_set():
            try:
                seen.append(np.array_equal(theirs.segment_slice(1, BOX)[0], theirs_expected))
            except Exception as error:
                seen.append(f"{type(error).__name__}: {error}")

    other_reader = threading.Thread(target=keep_reading)
    other_reader.start()
    os.kill(running[0]["pid"], signal.SIGKILL)
    try:
        result = job.result()
    finally:
        stop.set()
        other_reader.join(600)
    assert np.array_equal(result["mask"], expected)
    assert client.resent >= 1 and ray_server.info()["job_restarts"] >= 1
    assert seen and all(s is True for s in seen), [s for s in seen if s is not True][:3]
    assert running[0]["replica"] not in ray_server.info()["replicas"]
    for action in (lambda: accept.result(), lambda: remote.correct(object_id, "undo").result()):
        with pytest.raises(ServiceError) as gone:
            action()
        assert gone.value.code == OBJECT_GONE and gone.value.status == 410
        assert "start the object again" in str(gone.value) and "\n" not in str(gone.value)
    assert ray_server.info()["objects"] == objects - 1


def test_ray_options_need_ray():
    command = [sys.executable, "-m", "MedSAMSlicerLib.cli", "serve", "--ray-address", "127.0.0.1:6379"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "MedSAMSlicer")})
    assert done.returncode == 2 and "--ray-address needs --ray" in done.stderr and len(done.stderr.splitlines()) == 1
