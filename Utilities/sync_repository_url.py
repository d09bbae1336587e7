"""One place for the extension's public home: ``scm_url`` in ``Resources/MedSAMSlicer.json`` (the Extensions Index
entry, which needs it anyway).  Every other copy is derived from it by this script:

- ``CMakeLists.txt``: ``EXTENSION_HOMEPAGE``, ``EXTENSION_ICONURL``, ``EXTENSION_SCREENSHOTURLS`` (the Index's check
  script reads them as literal strings, so CMake cannot compute them);
- ``MedSAMSlicer/MedSAMSlicer.py``: the module's help link.

Publishing is a one-line change: set ``scm_url`` to the real repository, run ``python Utilities/sync_repository_url.py``
(``--check`` only reports; ``Testing/Python/test_slicer_index_readiness.py`` runs it).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
BRANCH = "main"
SECTION = "use-in-3d-slicer"  # README anchor of the Slicer section
ICON = "Resources/Icons/MedSAMSlicer.png"
SCREENSHOTS = ("Resources/Screenshots/web-result.png",)


def repository() -> tuple[str, str]:
    """(https URL of the repository without .git, "owner/name") from scm_url."""
    url = json.loads((REPO / "Resources" / "MedSAMSlicer.json").read_text())["scm_url"].strip()
    path = urlsplit(url).path.strip("/")
    path = path[:-4] if path.endswith(".git") else path
    return f"https://github.com/{path}", path


def derived() -> list[tuple[Path, str, str]]:
    """(file, pattern whose group 1 is the URL, the URL it must hold)."""
    home, path = repository()
    raw = f"https://raw.githubusercontent.com/{path}/{BRANCH}"
    return [
        (REPO / "CMakeLists.txt", r'set\(EXTENSION_HOMEPAGE "([^"]*)"\)', f"{home}#{SECTION}"),
        (REPO / "CMakeLists.txt", r'set\(EXTENSION_ICONURL "([^"]*)"\)', f"{raw}/{ICON}"),
        (REPO / "CMakeLists.txt", r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"\)',
         " ".join(f"{raw}/{shot}" for shot in SCREENSHOTS)),
        (REPO / "MedSAMSlicer" / "MedSAMSlicer.py", r"<a href='(https://[^']*)'>documentation", f"{home}#{SECTION}"),
    ]


def differences() -> list[str]:
    found = []
    for path, pattern, wanted in derived():
        match = re.search(pattern, path.read_text())
        if match is None or match.group(1) != wanted:
            found.append(f"{path.relative_to(REPO)}: {match.group(1) if match else 'missing'} != {wanted}")
    return found


def sync() -> None:
    for path, pattern, wanted in derived():
        text = path.read_text()
        match = re.search(pattern, text)
        if match is None:
            raise SystemExit(f"{path.relative_to(REPO)}: no {pattern!r} to update")
        path.write_text(text[:match.start(1)] + wanted + text[match.end(1):])


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        problems = differences()
        print("\n".join(problems) or "every copy of the repository URL agrees with scm_url")
        sys.exit(1 if problems else 0)
    sync()
    print("updated from scm_url:", repository()[0])
