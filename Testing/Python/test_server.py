"""The engine server (``medsam-slicer serve``) as a real process on loopback, driven by the real client.

One server serves the whole module (its model loads once); volumes are small crops of the shared scans so that the
encoder, the cost of this file, runs on a few dozen slices in all.  Faults (SIGKILL, restart, full disk) are in
test_server_faults.py because they need servers of their own.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from conftest import REPO, shared_path

RECIST = "CT_Lesion_000009_03_01_036-048.npz"  # lesion on slices 3..9, rows 175..235, columns 207..249


@pytest.fixture(scope="module")
def server(onnx_dir, tmp_path_factory):
    """A server started the way Slicer starts one (EngineClient.start_local), with small limits for the tests."""
    from MedSAMSlicerLib.client import EngineClient

    cache_dir = tmp_path_factory.mktemp("server-cache")
    client = EngineClient.start_local(args=("--device", "cpu", "--cache-dir", str(cache_dir), "--max-upload-mb", "4",
                                            "--job-heartbeat", "3", "--memory-mb", "1024", "--max-sessions", "60"))
    client.wait_ready()
    yield client
    client.stop()
    assert client.process.returncode is not None


def lesion_crop(slices: slice = slice(4, 8), rows=(150, 262), cols=(180, 292)) -> tuple[np.ndarray, np.ndarray]:
    """A real CT lesion (already windowed uint8) cropped to a few slices of 112x112: cheap to encode."""
    with np.load(shared_path("medsam2_recist", RECIST)) as data:
        window = (slices, slice(*rows), slice(*cols))
        return np.ascontiguousarray(data["imgs"][window]), np.ascontiguousarray(data["gts"][window] > 0)


def tight_box(mask2d: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask2d)
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def one_line_error(response: requests.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


# -- the client library -------------------------------------------------------------------------------------------
def test_client_imports_no_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import MedSAMSlicerLib.client as c; "
            "c.EngineClient('http://127.0.0.1:1'); "
            "bad = [m for m in ('torch', 'MedSAMSlicerLib.engine', 'fastapi', 'SimpleITK') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(REPO / "MedSAMSlicer")], check=True)


def test_health_is_open_and_info_needs_the_token(server):
    assert requests.get(server.url + "/health", timeout=10).json()["ready"] is True
    one_line_error(requests.get(server.url + "/info", timeout=10), 401, "unauthorized")
    one_line_error(requests.get(server.url + "/info", headers={"Authorization": "Bearer " + "x" * 43}, timeout=10),
                   401, "unauthorized")
    info = server.info()
    assert info["model"] == "litemedsam" and info["backend"] and info["device"] == "cpu"
    assert urlparse(server.url).hostname == "127.0.0.1"  # loopback unless told otherwise


# -- same results as in-process ------------------------------------------------------------------------------------
def test_masks_equal_in_process_masks_on_real_scans(server, open_case):
    """A full real CT (NRRD, int16, lung window on the server) and a real lesion npz: slice masks and a 3D
    propagation through the server equal the in-process ones, bit for bit."""
    from conftest import real_cases
    from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate

    cases = {c.name: c for c in real_cases()}
    if "lung1" not in cases:
        pytest.skip("pyradiomics lung1 not in ../shared/data")
    session, label = open_case(cases["lung1"])
    volume = session.volume
    remote = server.open_volume(volume.array, volume.spacing, volume.origin, volume.direction, window="lung")
    assert remote.window == session.window.describe() and remote.slice_count == session.slice_count
    labelled = np.flatnonzero((label > 0).any(axis=(1, 2)))
    for index in labelled[len(labelled) // 2: len(labelled) // 2 + 2]:
        box = tight_box(label[index] > 0)
        mask, score = remote.segment_slice(int(index), box)
        expected = session.segment_slice(int(index), box_of(box))
        assert mask.any() and np.array_equal(mask, expected.mask) and score == pytest.approx(expected.score, abs=1e-6)
    remote.close()

    image, gts = lesion_crop()
    from MedSAMSlicerLib.engine.session import VolumeSession
    from MedSAMSlicerLib.protocol import Volume

    local = VolumeSession(session.segmenter, Volume(image, (0.8, 0.8, 5.0), (0, 0, 0), tuple(np.eye(3).ravel()),
                                                    already_normalized=True), "auto", "axial", session.cache)
    key = {2: tight_box(gts[2])}
    expected = propagate(local, {2: box_of(key[2])}, PropagationOptions(slice_range=(0, 3)))
    remote = server.open_volume(image, (0.8, 0.8, 5.0), already_normalized=True)
    result = remote.propagate(key, {"slice_range": (0, 3)}).result()
    assert result["mask"].any() and np.array_equal(result["mask"], expected.mask)
    assert result["segmented_slices"] == expected.segmented_slices
    remote.close()


def box_of(values):
    from MedSAMSlicerLib.protocol import Box

    return Box(*values)


def test_a_volume_is_uploaded_once_and_a_second_time_skipped(server):
    image, _ = lesion_crop(slice(3, 5), (170, 234), (200, 264))
    before = server.info()["volume_uploads"]
    server._local_dir = ""  # force the compressed HTTP upload (a remote client's path)
    first = server.open_volume(image, already_normalized=True)
    server._local_dir = None
    second = server.open_volume(image, already_normalized=True)
    assert server.info()["volume_uploads"] == before + 1
    assert first.session_id != second.session_id and first.fingerprint == second.fingerprint
    first.close()
    second.close()


# -- load -----------------------------------------------------------------------------------------------------------
def test_many_clients_at_once_get_their_single_client_results(server):
    """8 clients on 8 different volumes and 4 clients on one shared volume, all at once, each propagating: every
    result equals the same request made alone afterwards; the shared volume's slices are encoded once each."""
    from MedSAMSlicerLib.client import EngineClient

    volumes = [lesion_crop(slice(5, 7), (170 + 4 * n, 250 + 4 * n), (190 + 3 * n, 270 + 3 * n)) for n in range(8)]
    shared = lesion_crop(slice(6, 8), (160, 256), (180, 276))
    work = [(image, gts) for image, gts in volumes] + [shared] * 4
    results: list = [None] * len(work)
    failures: list = []
    encoder_calls_shared = []

    def annotate(n: int) -> None:
        try:
            client = EngineClient(server.url, server.token)
            image, gts = work[n]
            volume = client.open_volume(image, already_normalized=True)
            mask2d, _ = volume.segment_slice(1, tight_box(gts[1]))
            result = volume.propagate({1: tight_box(gts[1])}, {"slice_range": (0, 1)}).result()
            results[n] = (mask2d, result["mask"])
            if n >= 8:
                encoder_calls_shared.append(volume.info()["encoder_calls"])
            client.close()
        except Exception as error:  # reported below with the client's number
            failures.append(f"client {n}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=annotate, args=(n,)) for n in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not failures, failures
    assert max(encoder_calls_shared) == shared[0].shape[0]  # 2 slices, 4 clients: 2 encoder calls
    info = server.info()
    assert info["rss_mb"] < info["memory_budget_mb"]
    for n, (image, gts) in enumerate(work):  # alone, one after the other (embeddings cached: decoder only)
        volume = server.open_volume(image, already_normalized=True)
        mask2d, _ = volume.segment_slice(1, tight_box(gts[1]))
        alone = volume.propagate({1: tight_box(gts[1])}, {"slice_range": (0, 1)}).result()["mask"]
        assert np.array_equal(results[n][0], mask2d) and np.array_equal(results[n][1], alone), n
        assert alone.any()
        volume.close()


# -- jobs -----------------------------------------------------------------------------------------------------------
def test_cancel_and_a_disconnected_client_free_their_jobs(server):
    from MedSAMSlicerLib.client import EngineClient
    from MedSAMSlicerLib.errors import Cancelled

    image, gts = lesion_crop(slice(0, 13), (100, 164), (120, 184))  # 13 slices nobody encoded yet
    image = image[:, ::-1].copy()  # another content than the other tests' crops
    client = EngineClient(server.url, server.token)
    volume = client.open_volume(image, already_normalized=True)
    job = volume.propagate({6: (10, 10, 50, 50)}, {"stop": False})
    while job.poll(timeout=2).done < 1:
        pass
    job.cancel()
    with pytest.raises(Cancelled):
        job.result()
    calls = volume.info()["encoder_calls"]
    assert calls < image.shape[0]

    before = server.info()["cancelled_unpolled_jobs"]
    job = volume.propagate({6: (10, 10, 50, 50)}, {"stop": False})
    client.close()  # the client goes away without cancelling: the server stops polling-less jobs
    watcher = EngineClient(server.url, server.token)
    deadline = time.monotonic() + 120
    while server.info()["cancelled_unpolled_jobs"] == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.info()["cancelled_unpolled_jobs"] == before + 1
    time.sleep(1.5)  # the slice that was being encoded finishes; nothing after it starts
    settled = sum(server.info()["encoder_calls_by_volume"].values())
    time.sleep(2.0)
    assert sum(server.info()["encoder_calls_by_volume"].values()) == settled
    assert server.info()["jobs_running"] == 0
    watcher.close()


def test_prefetch_warms_the_cache_so_segmenting_costs_no_encoder_call(server):
    image, gts = lesion_crop(slice(8, 11), (140, 204), (200, 264))
    volume = server.open_volume(image, already_normalized=True)
    volume.prefetch([0, 1, 2])
    deadline = time.monotonic() + 120
    while volume.info()["encoder_calls"] < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert volume.info()["encoder_calls"] == 3
    volume.segment_slice(1, (10, 10, 40, 40))
    assert volume.info()["encoder_calls"] == 3
    volume.close()


# -- security and bad requests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session_of_a(server):
    image, _ = lesion_crop(slice(3, 5), (170, 234), (200, 264))
    volume = server.open_volume(image, already_normalized=True)
    yield volume
    volume.close()


def raw(server, method: str, path: str, client: str | None = None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.token}", "X-MedSAM-Client": client or server.client_id}
    headers.update(kwargs.pop("headers", {}))
    return requests.request(method, server.url + path, headers=headers, timeout=120, **kwargs)


def test_another_clients_session_and_job_are_404(server, session_of_a):
    from MedSAMSlicerLib.client import EngineClient
    from MedSAMSlicerLib.errors import ServiceError

    other = EngineClient(server.url, server.token)
    for method, suffix, body in [("GET", "", None), ("DELETE", "", None),
                                 ("POST", "/segment", {"index": 0, "box": [1, 1, 9, 9]}),
                                 ("POST", "/prefetch", {"indices": [0]})]:
        response = raw(server, method, f"/sessions/{session_of_a.session_id}{suffix}", client=other.client_id,
                       json=body)
        one_line_error(response, 404, "not_found")
    job = session_of_a.propagate({0: (1, 1, 30, 30)}, {"slice_range": (0, 1)})
    with pytest.raises(ServiceError) as caught:
        other.request("GET", f"/jobs/{job.job_id}")
    assert caught.value.status == 404
    job.result()
    assert session_of_a.info()["session_id"] == session_of_a.session_id  # still there, untouched


def test_an_upload_over_the_limit_is_refused_before_it_is_read(server):
    """Declared 100 MiB against a 4 MiB limit: 413 comes back after only 1 KiB was sent."""
    parsed = urlparse(server.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.putrequest("PUT", "/volumes/" + "0" * 64)
    connection.putheader("Authorization", f"Bearer {server.token}")
    connection.putheader("Content-Length", str(100 << 20))
    connection.endheaders()
    connection.send(b"\0" * 1024)
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 413 and body["error"]["code"] == "too_large"
    connection.close()

    def chunks():  # no Content-Length: the server counts while reading and stops at the limit
        for _ in range(6):
            yield b"\0" * (1 << 20)

    one_line_error(raw(server, "PUT", "/volumes/" + "0" * 64, data=chunks()), 413, "too_large")


def test_bad_requests_get_one_line_4xx(server, session_of_a):
    sid = session_of_a.session_id
    path = f"/sessions/{sid}/segment"
    one_line_error(raw(server, "POST", path, data=b"{not json", headers={"Content-Type": "application/json"}),
                   400, "bad_request")
    one_line_error(raw(server, "POST", path, json={"index": "0", "box": [1, 1, 9, 9]}), 422)  # string index
    one_line_error(raw(server, "POST", path, json={"index": 0, "box": ["a", 1, 9, 9]}), 422)
    one_line_error(raw(server, "POST", path, json={"index": 0, "box": [1, 1, 9]}), 422)  # three numbers
    nan_box = b'{"index": 0, "box": [NaN, 1, 9, 9]}'
    assert "finite" in one_line_error(raw(server, "POST", path, data=nan_box,
                                          headers={"Content-Type": "application/json"}), 400, "box")
    assert "outside" in one_line_error(raw(server, "POST", path, json={"index": 99, "box": [1, 1, 9, 9]}), 400, "box")
    one_line_error(raw(server, "POST", path, json={"index": 0, "box": [9, 9, 1, 1]}), 400, "box")  # inverted
    one_line_error(raw(server, "POST", f"/sessions/{sid}/propagate",
                       json={"key_boxes": {"x": [1, 1, 9, 9]}}), 422)
    one_line_error(raw(server, "POST", "/sessions", json={"fingerprint": "../../etc", "spacing": [1, 1, 1],
                                                          "origin": [0, 0, 0], "direction": [1] * 9}), 422)
    one_line_error(raw(server, "GET", "/no/such/route"), 404, "not_found")

    from MedSAMSlicerLib.protocol import wire

    for array in (np.zeros((4, 5), np.int16), np.zeros((2, 3, 4), np.complex64)):  # 2D; complex voxels
        fingerprint = wire.content_fingerprint(array)
        one_line_error(raw(server, "PUT", f"/volumes/{fingerprint}", data=wire.compress_volume(array)), 400,
                       "input_image")
    array = np.zeros((2, 3, 4), np.int16)
    one_line_error(raw(server, "PUT", "/volumes/" + "a" * 64, data=wire.compress_volume(array)), 400)  # wrong name
    one_line_error(raw(server, "PUT", f"/volumes/{wire.content_fingerprint(array)}", data=b"garbage"), 400)
    bomb = np.zeros((520, 1024, 1024), np.uint8)  # 520 MiB of zeros, 0.5 MiB compressed: inflates past 512 MiB
    one_line_error(raw(server, "PUT", f"/volumes/{wire.content_fingerprint(bomb)}", data=wire.compress_volume(bomb)),
                   413, "too_large")


def test_hand_over_paths_outside_the_private_folder_are_refused(server, tmp_path):
    from MedSAMSlicerLib.protocol import wire

    local_dir = Path(server.info()["local_dir"])
    assert (local_dir.stat().st_mode & 0o777) == 0o700
    array = np.zeros((2, 3, 4), np.int16)
    fingerprint = wire.content_fingerprint(array)
    outside = tmp_path / "volume.npy"
    np.save(outside, array)
    link = local_dir / "link.npy"
    link.symlink_to(outside)
    try:
        for name in ("../../etc/passwd", str(outside), "/etc/passwd", "link.npy", "..", "missing.npy"):
            one_line_error(raw(server, "POST", f"/volumes/{fingerprint}/from-file", json={"name": name}), 403,
                           "bad_path")
    finally:
        link.unlink(missing_ok=True)
    assert outside.exists()  # never touched


def test_the_default_bind_is_loopback():
    from MedSAMSlicerLib.cli.main import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"


def test_served_connections_have_tcp_nodelay():
    """asyncio (under uvicorn) sets TCP_NODELAY on an accepted connection only when the listening socket says TCP;
    without it each answer on a kept-alive connection waited ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from MedSAMSlicerLib.server.run import bind

    async def accepted_nodelay() -> int:
        listening = bind("127.0.0.1", 0)
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                connection = transport.get_extra_info("socket")
                seen.set_result(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


# -- short requests for a GUI: a slice as a job, a volume opened in steps ----------------------------------------------
def test_a_slice_as_a_job_equals_the_synchronous_answer(server):
    """What Slicer's poll does (start, poll, fetch: each request answered at once) gives the mask and score of the
    blocking call; the same request id again is the same job; a bad box is refused at the start."""
    from MedSAMSlicerLib.errors import BoxError

    image, gts = lesion_crop(slice(4, 6), (158, 254), (186, 282))  # content no other test sends: a cold slice
    volume = server.open_volume(image, already_normalized=True)
    box = tight_box(gts[1])
    job = volume.start_segment_slice(1, box, request_id="slice-job-0001")
    assert volume.start_segment_slice(1, box, request_id="slice-job-0001").job_id == job.job_id
    while not job.poll(timeout=0.0, request_timeout=30).finished:
        time.sleep(0.05)
    assert job.status.state == "done", job.status
    result = job.result(timeout=30)
    mask, score = volume.segment_slice(1, box)
    assert result["mask"].any() and np.array_equal(result["mask"], mask)
    assert result["score"] == pytest.approx(score, abs=1e-6)
    assert result["encoder_calls"] == 1 and volume.info()["encoder_calls"] == 1  # one start, one encode
    with pytest.raises(BoxError):
        volume.start_segment_slice(1, (40, 40, 10, 10))  # inverted: refused now, not by a job later
    volume.close()


def test_a_volume_opened_in_steps_is_sent_once_and_leaves_no_file(server):
    """VolumeOpening (the GUI's way: local work a slab at a time, short requests): a local client hands the volume
    over as a file, a remote one compresses and uploads it; both end with the session open_volume gives."""
    from MedSAMSlicerLib.client import EngineClient
    from MedSAMSlicerLib.protocol import wire
    from MedSAMSlicerLib.errors import EngineUnavailable

    image = np.random.default_rng(7).integers(-1000, 1000, (3, 400, 500), dtype=np.int16)  # 1.2 MB: several slabs
    local_dir = Path(server.info()["local_dir"])
    for remote_client in (False, True):
        array = image[::-1].copy() if remote_client else image
        client = EngineClient(server.url, server.token)
        if remote_client:
            client._local_dir = ""  # as a client on another machine: compress, then one upload
        uploads = server.info()["volume_uploads"]
        opening = client.start_opening(array, window="soft_tissue")
        stages = []
        while True:
            try:
                volume = opening.step(0.05)
            except EngineUnavailable:  # a short request timed out: the next step retries it
                continue
            stages.append(opening.stage)
            if volume is not None:
                break
        assert volume.fingerprint == wire.content_fingerprint(array)
        expected = {"compress", "upload"} if remote_client else {"write", "take"}
        assert expected <= set(stages) and not ({"compress", "write"} - expected) & set(stages), stages
        assert server.info()["volume_uploads"] == uploads + 1
        twin = client.open_volume(array, window="soft_tissue")
        assert server.info()["volume_uploads"] == uploads + 1  # the same content is never sent twice
        assert (twin.fingerprint, twin.slice_count, twin.window) == (volume.fingerprint, volume.slice_count,
                                                                     volume.window)
        assert not list(local_dir.glob("*.npy"))  # the hand-over file was read and removed
        volume.close()
        twin.close()
        client.close()


def test_a_corrective_box_through_the_server_equals_the_engine(server, segmenter, cache):
    """An object started and corrected on the server (objects, actions: box, accept, undo) gives the in-process
    CorrectableObject's masks; the correction costs decoder calls only; an accepted slice keeps its voxels."""
    from MedSAMSlicerLib.engine.corrections import CorrectableObject
    from MedSAMSlicerLib.engine.propagation import PropagationOptions
    from MedSAMSlicerLib.engine.session import VolumeSession
    from MedSAMSlicerLib.protocol import Volume
    from MedSAMSlicerLib.errors import BoxError

    image, gts = lesion_crop(slice(3, 10))
    local = CorrectableObject(VolumeSession(segmenter, Volume(image, (1.0, 1.0, 1.0), (0, 0, 0),
                                                              tuple(np.eye(3).ravel()), already_normalized=True),
                                            "auto", "axial", cache), PropagationOptions(slice_range=(0, 6)))
    local.start({3: box_of(tight_box(gts[3]))})
    volume = server.open_volume(image, already_normalized=True)
    started = volume.start_object({3: tight_box(gts[3])}, {"slice_range": [0, 6]}).result()
    assert np.array_equal(started["mask"], local.mask)
    object_id = started["object_id"]
    accepted = volume.correct(object_id, "accept", 2).result()
    assert accepted["locked"] == [2]
    before = started["mask"][2].copy()
    local.accept(2)
    change = local.add_box(1, box_of(tight_box(gts[1])))
    answer = volume.correct(object_id, "box", 1, tight_box(gts[1])).result()
    assert answer["changed"] == change.changed and answer["encoder_calls"] == 0
    assert answer["decoder_calls"] == change.decoder_calls
    assert np.array_equal(answer["mask"], local.mask) and np.array_equal(answer["mask"][2], before)
    undone = volume.correct(object_id, "undo").result()
    assert np.array_equal(undone["mask"], started["mask"])
    with pytest.raises(BoxError):
        volume.correct(object_id, "box", 2, tight_box(gts[2])).result()  # the accepted slice refuses a box
    # A hand edit (the "edit" action, a packed slice mask) locks its slice: a later box beside it keeps its voxels.
    edited = np.zeros(image.shape[1:], dtype=bool)
    edited[5:9, 6:12] = True
    answer = volume.correct(object_id, "edit", 5, mask=edited).result()
    assert 5 in answer["locked"] and np.array_equal(answer["mask"][5], edited) and 5 not in answer["doubtful"]
    answer = volume.correct(object_id, "box", 6, tight_box(gts[6])).result()
    assert np.array_equal(answer["mask"][5], edited) and 5 not in answer["changed"]
    with pytest.raises(BoxError):  # a mask of another shape is refused in one line, nothing changes
        volume.correct(object_id, "edit", 4, mask=np.ones((3, 3), dtype=bool)).result()
    volume.close()
