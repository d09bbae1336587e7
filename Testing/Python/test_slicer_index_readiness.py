"""Ready for the Slicer Extensions Index, as far as it can be before a public home exists.

- One place holds the repository URL (``scm_url`` of ``Resources/MedSAMSlicer.json``); every copy the Index's checks
  and the module read is derived from it by ``Utilities/sync_repository_url.py``: publishing is a one-line change.
- The Index's own script (Slicer/ExtensionsIndex ``scripts/check_description_files.py``) runs every check that needs
  no network on this checkout: JSON format, extension name, category, repository name, scm_url syntax, repository
  size, licence file, and the CMakeLists.txt content (project name, icon and screenshot URLs present; whether they
  download is the one part that needs the network).  That script is not on PyPI: set ``SLICER_EXTENSIONS_INDEX`` to
  a checkout of github.com/Slicer/ExtensionsIndex to run it; without it that test skips with one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_script(path: Path):
    """A script of Utilities/ (not a package) as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


urls = _load_script(REPO / "Utilities" / "sync_repository_url.py")


def test_every_copy_of_the_repository_url_comes_from_scm_url():
    assert urls.differences() == []


def test_publishing_is_a_one_line_change(tmp_path, monkeypatch):
    for relative in ("Resources/MedSAMSlicer.json", "CMakeLists.txt", "MedSAMSlicer/MedSAMSlicer.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    monkeypatch.setattr(urls, "REPO", tmp_path)
    entry_path = tmp_path / "Resources" / "MedSAMSlicer.json"
    entry = json.loads(entry_path.read_text())
    entry["scm_url"] = "https://github.com/example-lab/SlicerMedSAM.git"  # the one line
    entry_path.write_text(json.dumps(entry, indent=2) + "\n")
    assert len(urls.differences()) == 4  # homepage, icon, screenshot, help link all still point at the old home
    urls.sync()
    assert urls.differences() == []
    cmake = (tmp_path / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_ICONURL "https://raw.githubusercontent.com/example-lab/SlicerMedSAM/main/' in cmake
    assert "https://github.com/example-lab/SlicerMedSAM#use-in-3d-slicer" in \
        (tmp_path / "MedSAMSlicer" / "MedSAMSlicer.py").read_text()
    for _, _, wanted in urls.derived():  # every image URL names a file of this repository
        for url in wanted.split():
            if "raw.githubusercontent.com" in url:
                assert (REPO / url.split("/main/", 1)[1]).is_file(), url


DRIVER = """
import importlib.util, json, sys
path, name, entry, clone = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("check_description_files", path)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
images = []
script.validate_image_url = lambda url, *args: images.append(url)  # downloading them needs the network
metadata = script.parse_json(entry)
script.check_json_file_format(name, metadata, entry)
script.check_extension_name(name, metadata)
script.check_category(name, metadata)
script.check_git_repository_name(name, metadata)
script.check_scm_url_syntax(name, metadata)
script.check_repository_size(name, metadata, clone)
script.check_license_file(name, metadata, clone)
script.check_cmakelists_content(name, metadata, clone)
print(json.dumps({"passed": True, "images": images}))
"""


def index_script() -> tuple[str, Path]:
    """(a Python >= 3.12, which the script's f-strings need; the script), else skip with one line."""
    folder = os.environ.get("SLICER_EXTENSIONS_INDEX")
    script = Path(folder or ".") / "scripts" / "check_description_files.py"
    if not folder or not script.is_file():
        pytest.skip("SLICER_EXTENSIONS_INDEX does not point at a Slicer/ExtensionsIndex checkout (its script is not "
                    "on PyPI)")
    python = sys.executable if sys.version_info >= (3, 12) else os.environ.get("SLICER_EXTENSIONS_INDEX_PYTHON")
    if not python:
        pytest.skip("the ExtensionsIndex script needs Python >= 3.12: set SLICER_EXTENSIONS_INDEX_PYTHON")
    return python, script


def test_the_index_scripts_offline_checks_pass(tmp_path):
    python, script = index_script()
    name = "MedSAMSlicer"
    entry = tmp_path / f"{name}.json"
    shutil.copy(REPO / "Resources" / "MedSAMSlicer.json", entry)
    clone = tmp_path / "clone"  # what "Clone repository" would give: the tracked files
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for relative in filter(None, files.decode().split("\0")):
        if (REPO / relative).is_file():
            (clone / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / relative, clone / relative)
    done = subprocess.run([python, "-c", DRIVER, str(script), name, str(entry), str(clone)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["passed"] and len(result["images"]) == 2  # icon and screenshot: left for the network check
