"""Which torch device runs the model, and falling back to the CPU when the GPU fails; how many CPU cores there are
to run it on (the runtimes' threads, encode-ahead)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..errors import OptionError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str  # shown to the user: why this device


def choose_device(requested: str = "auto") -> DeviceChoice:
    requested = (requested or "auto").lower()
    if requested not in DEVICE_CHOICES and not requested.startswith("cuda:"):
        raise OptionError(f"--device must be one of {', '.join(DEVICE_CHOICES)} or cuda:N, got {requested!r}")
    if requested == "cpu":
        return DeviceChoice(torch.device("cpu"), "CPU requested")
    if torch.cuda.is_available():
        device = torch.device("cuda" if requested == "auto" else requested)
        return DeviceChoice(device, f"CUDA GPU {torch.cuda.get_device_name(device)}")
    if requested == "auto":
        return DeviceChoice(torch.device("cpu"), "no CUDA GPU found")
    log.warning("%s requested but no CUDA GPU is available; using the CPU", requested)
    return DeviceChoice(torch.device("cpu"), f"{requested} requested but no CUDA GPU is available")


def is_gpu_failure(error: BaseException) -> bool:
    """A CUDA out-of-memory or driver error, after which the same work can be retried on the CPU."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("CUDA" in text or "cuDNN" in text or "CUBLAS" in text)


def physical_cores() -> int:
    """Physical CPU cores (not hyper-threads): one runtime thread per core; at least 1."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or the platform hides the figure
        count = None
    return max(1, count or os.cpu_count() or 1)
