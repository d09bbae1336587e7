"""Static checks of the Slicer-side code (the module, the effect, the MRML logic):

- no ``threading.Thread`` (PythonQt holds the GIL while Slicer idles) and no torch import: the model runs in the
  engine process; importing the MRML logic in a fresh interpreter loads no torch either;
- the minimum Slicer version (5.10: Python >= 3.10, as the engine run by PythonSlicer needs) is stated in CMake,
  the module and the README;
- the Extension Index naming and URL rules of Slicer/ExtensionsIndex ``scripts/check_description_files.py``
  (repository name starts with "Slicer", extension name does not, project() matches the extension name, the icon
  and screenshot URLs are set); the public home does not exist yet, so the URLs stay marked as placeholders.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedSAMSlicer"
SLICER_SIDE = [MODULE / "MedSAMSlicer.py", *sorted((MODULE / "MedSAMSlicerEffect").glob("*.py")),
               *sorted((MODULE / "MedSAMSlicerLogic").glob("*.py"))]


def imported_modules(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", SLICER_SIDE, ids=lambda p: p.name)
def test_no_thread_and_no_torch_in_slicer_side_code(path):
    tree = ast.parse(path.read_text(), str(path))
    roots = {name.split(".")[0] for name in imported_modules(tree)}
    assert not roots & {"torch", "torchvision", "onnxruntime", "threading", "concurrent", "_thread",
                        "multiprocessing"}, f"{path.name} imports {sorted(roots)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("Thread", "ThreadPoolExecutor", "start_new_thread"):
            raise AssertionError(f"{path.name}:{node.lineno} uses {node.attr}")
        if isinstance(node, ast.ImportFrom) and any(a.name == "Thread" for a in node.names):
            raise AssertionError(f"{path.name}:{node.lineno} imports Thread")
    # The engine rooms that need torch are never imported here (only the light engine modules: axes, boxes,
    # volume, weights).
    heavy = {"MedSAMSlicerLib.engine." + m for m in ("backends", "session", "propagation", "cache", "predictor",
                                                     "models", "tiny_vit", "pipelines", "prefetch", "memory")}
    assert not imported_modules(tree) & (heavy | {"MedSAMSlicerLib.server"}), path.name


CHECK = """
import importlib, pkgutil, sys
sys.path.insert(0, {path!r})
import MedSAMSlicerLogic
for info in pkgutil.iter_modules(MedSAMSlicerLogic.__path__):
    importlib.import_module("MedSAMSlicerLogic." + info.name)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "cv2", "scipy", "skimage")))
"""


def test_mrml_logic_imports_no_engine_packages():
    pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")
    result = subprocess.run([sys.executable, "-c", CHECK.format(path=str(MODULE))], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_minimum_slicer_version_is_stated():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "find_package(Slicer 5.10 REQUIRED)" in cmake
    assert "5.10" in (MODULE / "MedSAMSlicer.py").read_text()
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use in 3D Slicer"):]
    assert "Slicer 5.10" in section
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in pyproject  # what Slicer 5.10's Python satisfies and 5.8's (3.9) does not


def test_extension_index_naming_and_urls():
    entry = json.loads((REPO / "Resources" / "MedSAMSlicer.json").read_text())
    extension_name = "MedSAMSlicer"  # the index file's name
    assert not extension_name.lower().startswith("slicer")
    url = entry["scm_url"]
    assert urlsplit(url).scheme in ("git", "https") and "://" in url
    repo_name = Path(urlsplit(url.strip().strip("/")).path).stem
    assert repo_name.startswith(("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_"))
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake, re.I)[0] == extension_name
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake, re.I)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake, re.I)
    assert icon and shots
    for image_url in [icon[0], *shots[0].split()]:
        assert image_url.startswith("https://") and f"/{repo_name}/" in image_url
    homepage = re.findall(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake)[0]
    assert f"/{repo_name}" in homepage and f"/{repo_name}" in (MODULE / "MedSAMSlicer.py").read_text()
    assert "PLACEHOLDER" in cmake  # until the public repository exists
