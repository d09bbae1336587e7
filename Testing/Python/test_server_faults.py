"""The engine server under faults, each with servers of its own: SIGKILL mid-propagation and a restart on the same
cache folder; a full disk under the cache folder; the session limit and idle expiry.  Also ``segment|eval --server``
against the in-process run: byte-identical output files, equal scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_path

RECIST = "CT_Lesion_000009_03_01_036-048.npz"


def start(*args: str):
    from MedSAMSlicerLib.client import EngineClient

    client = EngineClient.start_local(args=("--device", "cpu", *args))
    client.wait_ready()
    return client


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    """A real CT lesion cut to 6 slices of 112x112 (imgs, gts, spacing): cheap to encode, real to segment."""
    with np.load(shared_path("medsam2_recist", RECIST)) as data:
        window = (slice(4, 10), slice(150, 262), slice(180, 292))
        path = tmp_path_factory.mktemp("crop") / "lesion.npz"
        np.savez(path, imgs=data["imgs"][window], gts=data["gts"][window], spacing=data["spacing"])
    return path


def key_box(crop: Path, index: int = 2) -> str:
    with np.load(crop) as data:
        rows, cols = np.nonzero(data["gts"][index])
    return f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}"


def cli(*argv, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer"))
    done = subprocess.run([sys.executable, "-m", "MedSAMSlicerLib.cli", *map(str, argv)], capture_output=True,
                          text=True, env=env, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def token_file(client, folder: Path) -> Path:
    path = folder / "token"
    path.write_text(client.token)
    path.chmod(0o600)
    return path


def test_sigkill_mid_propagation_restart_and_byte_identical_output(crop, tmp_path, cache, onnx_dir):
    cache_dir = tmp_path / "server-cache"
    segment = ["segment", crop, "--box", key_box(crop), "--slice", 2, "--range", "0:5", "--no-stop"]

    first = start("--cache-dir", str(cache_dir))
    out = tmp_path / "remote.nii.gz"
    running = subprocess.Popen([sys.executable, "-m", "MedSAMSlicerLib.cli", *map(str, segment), "--out", str(out),
                                "--server", first.url, "--token-file", str(token_file(first, tmp_path))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer")))
    deadline = time.monotonic() + 300
    # Two embeddings written to the cache folder, not merely computed: the write follows the encoder call, and a kill
    # between the two left one on disk (a race that 40 ms-slower answers used to hide).
    while first.info()["cache"]["disk_writes"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    first.process.kill()  # SIGKILL: no goodbye to the client
    first.process.wait()
    _, err = running.communicate(timeout=120)
    assert running.returncode == 2, err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("medsam-slicer: error: the engine at"), err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".remote*"))  # nothing written, not even a temp file

    second = start("--cache-dir", str(cache_dir))  # same cache folder: what the first server encoded is reused
    summary = json.loads(cli(*segment, "--out", out, "--server", second.url, "--token-file",
                             token_file(second, tmp_path), "--json").stdout)
    info = second.info()
    assert info["cache"]["disk_hits"] >= 2 and info["encoder_calls"] == 6 - info["cache"]["disk_hits"]
    assert summary["segmented_slices"] == 6 and summary["voxels"] > 0
    second.stop()

    third = start("--cache-dir", str(cache_dir))  # every slice on disk now: zero encoder calls
    again = tmp_path / "again.nii.gz"
    cli(*segment, "--out", again, "--server", third.url, "--token-file", token_file(third, tmp_path))
    assert third.info()["encoder_calls"] == 0

    # the in-process run (the test session's cache) writes the very same bytes
    local = tmp_path / "local.nii.gz"
    cli(*segment, "--out", local, "--cache-dir", cache.disk_dir)
    assert out.read_bytes() == local.read_bytes() == again.read_bytes()
    local_npz, remote_npz = tmp_path / "local.npz", tmp_path / "remote.npz"
    cli(*segment, "--out", local_npz, "--cache-dir", cache.disk_dir)
    cli(*segment, "--out", remote_npz, "--server", third.url, "--token-file", tmp_path / "token")
    assert local_npz.read_bytes() == remote_npz.read_bytes()

    # eval: the same scores through the server
    evaluate = ["eval", crop, "--mode", "3d", "--range-mode", "label", "--json"]
    local_eval = json.loads(cli(*evaluate, "--cache-dir", cache.disk_dir).stdout)["results"]
    remote_eval = json.loads(cli(*evaluate, "--server", third.url, "--token-file", tmp_path / "token").stdout)
    for mine, theirs in zip(local_eval, remote_eval["results"], strict=True):
        assert (mine["dsc"], mine["nsd"], mine["segmented_slices"]) == (
            theirs["dsc"], theirs["nsd"], theirs["segmented_slices"])
    assert remote_eval["server"] == third.url
    third.stop()


def test_full_cache_disk_degrades_to_memory_and_session_limits(tmp_path):
    from MedSAMSlicerLib.errors import ServiceError

    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here to fill the disk ({mounted.stderr.strip()[:80]})")
    try:
        server = start("--cache-dir", str(disk), "--max-sessions", "1", "--idle-timeout", "5")
        with np.load(shared_path("medsam2_recist", RECIST)) as data:
            image = np.ascontiguousarray(data["imgs"][6:7, 150:262, 180:292])
        volume = server.open_volume(image, already_normalized=True)
        with pytest.raises(ServiceError) as refused:
            server.open_volume(image, already_normalized=True)
        assert refused.value.code == "too_many_sessions" and refused.value.status == 429
        mask, _ = volume.segment_slice(0, (40, 30, 80, 80))  # a 4 MiB embedding cannot fit on a 1 MiB disk
        assert mask.any()
        info = server.info()
        assert info["cache"]["disk_writes"] == 0 and info["encoder_calls"] == 1
        assert any("memory only" in warning for warning in info["warnings"]), info["warnings"]
        deadline = time.monotonic() + 60
        while server.info()["expired_sessions"] == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        with pytest.raises(ServiceError) as gone:
            volume.info()
        assert gone.value.status == 404
        server.open_volume(image, already_normalized=True).segment_slice(0, (40, 30, 80, 80))
        assert server.info()["encoder_calls"] == 1  # the expired session's embedding stayed in memory
        server.stop()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
