"""A real PACS (Orthanc + DICOMweb on loopback): the CLI fetches a series by its dicomweb:// address, segments it,
stores the DICOM SEG back (STOW-RS), and QIDO finds it with the same mask; a PACS that is down, slow or refuses the
password is one line; credentials never come from the command line; no patient identifier reaches the logs."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from MedSAMSlicerLib.cli.main import main
from MedSAMSlicerLib.volumeio.files import read_label, read_volume

from dicom_helpers import PATIENT_ID, PATIENT_NAME, load_series, save, shared_label


pytest_plugins = ["orthanc_server"]  # the `orthanc` fixture (a real Orthanc per module)

@pytest.fixture(autouse=True)
def shared_disk_cache(cache, monkeypatch):
    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(cache.disk_dir))
    for name in ("MEDSAM_PACS_USER", "MEDSAM_PACS_PASSWORD", "MEDSAM_PACS_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory):
    series = load_series()
    folder = save(series, tmp_path_factory.mktemp("series"))
    orthanc.upload(folder)
    return folder, str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)


def one_line_error(capsys, argv, words):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("medsam-slicer: error: "), err
    assert words in err, err
    return err


def test_cli_fetches_from_the_pacs_and_stores_the_seg_back(capsys, monkeypatch, tmp_path, orthanc,
                                                          uploaded):
    from MedSAMSlicerLib.pacs.dicomweb import Pacs
    from MedSAMSlicerLib.volumeio.dicomseg import read_seg_mask

    folder, study, series = uploaded
    volume = read_volume(folder)
    rows, cols = np.nonzero(read_label(shared_label(), volume)[10] == 1)
    box = f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}"
    credentials = tmp_path / "pacs.txt"
    credentials.write_text(f"{orthanc.user}:{orthanc.password}\n")
    credentials.chmod(0o600)
    address = f"{orthanc.dicomweb}/studies/{study}/series/{series}"
    code = main(["-v", "segment", address, "--box", box, "--slice", "10", "--out", str(tmp_path / "seg.dcm"),
                 "--store", "--pacs-credentials", str(credentials), "--label", "Spleen", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert "modality CT" in summary["window_reason"] and summary["stored"].startswith("PACS at 127.0.0.1")
    for text in (PATIENT_NAME, PATIENT_ID, "Doe", orthanc.password):  # not in the -v log nor in the summary
        assert text not in captured.err and text not in captured.out
    local = read_seg_mask(tmp_path / "seg.dcm", volume)  # the SEG references the PACS's instances = the local ones
    assert local.sum() == summary["voxels"] > 1000
    pacs = Pacs(orthanc.dicomweb, orthanc.auth)
    segs = pacs.segmentations(study)
    assert len(segs) == 1 and "Spleen" in segs[0]["description"]
    stored, = pacs.fetch(study, segs[0]["series"])
    assert np.array_equal(read_seg_mask(stored, volume), local)
    listed = pacs.series(study)
    assert {s["modality"] for s in listed} == {"CT", "SEG"}
    assert [s["patient_id"] for s in pacs.studies()] == [PATIENT_ID]  # shown as the PACS gives it, never logged


def test_wrong_password_down_and_slow_pacs_are_one_line(capsys, monkeypatch, tmp_path, orthanc,
                                                       uploaded):
    _, study, series = uploaded
    out = tmp_path / "seg.dcm"
    common = ["--box", "200,200,260,260", "--slice", "10", "--out", str(out)]
    monkeypatch.setenv("MEDSAM_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDSAM_PACS_PASSWORD", "not-the-password")
    err = one_line_error(capsys, ["segment", f"{orthanc.dicomweb}/studies/{study}/series/{series}", *common],
                         "refused the user name or password")
    assert "not-the-password" not in err
    with socket.socket() as closed:  # a port nobody listens on: the PACS is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    one_line_error(capsys, ["segment", f"dicomweb://127.0.0.1:{port}/dicom-web/studies/{study}/series/{series}",
                            *common], "is not reachable (connection refused)")
    with socket.socket() as slow:  # accepts connections, never answers
        slow.bind(("127.0.0.1", 0))
        slow.listen(4)
        port = slow.getsockname()[1]
        one_line_error(capsys, ["segment", f"dicomweb://127.0.0.1:{port}/dicom-web/studies/{study}/series/{series}",
                                *common, "--pacs-timeout", "1"], "did not answer within 1 s")
    assert not out.exists()


def test_credentials_only_from_a_private_file_or_the_environment(capsys, tmp_path, orthanc, uploaded):
    _, study, series = uploaded
    common = ["--box", "200,200,260,260", "--slice", "10", "--out", str(tmp_path / "seg.dcm")]
    one_line_error(capsys, ["segment", f"dicomweb://u:secret@127.0.0.1:{orthanc.port}/dicom-web/studies/{study}/"
                                       f"series/{series}", *common], "must not hold a user name or password")
    shared = tmp_path / "shared.txt"
    shared.write_text(f"{orthanc.user}:{orthanc.password}\n")
    shared.chmod(0o644)
    one_line_error(capsys, ["segment", f"{orthanc.dicomweb}/studies/{study}/series/{series}", *common,
                            "--pacs-credentials", str(shared)], "readable by other users")
    one_line_error(capsys, ["segment", f"{orthanc.dicomweb}/studies/{study}/series/{series}", *common],
                   "HTTP 401")  # no credentials at all: the PACS says so, in one line
    one_line_error(capsys, ["segment", f"{orthanc.dicomweb}/studies/{study}", *common], "does not name a series")
