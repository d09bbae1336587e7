"""The model engine: models, official pre/post-processing, encoder runtimes, embedding cache, 3D propagation.

Imports only the foundations (:mod:`MedSAMSlicerLib.errors`, :mod:`~MedSAMSlicerLib.atomic`,
:mod:`~MedSAMSlicerLib.paths`) and the contract (:mod:`MedSAMSlicerLib.protocol`: Box, Volume, axes, settings,
results); never Slicer, Qt, file formats (:mod:`MedSAMSlicerLib.volumeio`), the client, the server or the command line.

The names below are the engine's public face.  They load on first use (PEP 562), so that importing a light module
such as ``engine.weights`` (the Slicer panel reads the model manifest) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..protocol import Box, Volume, axes

if TYPE_CHECKING:
    from .backends import make_segmenter
    from .cache import EmbeddingCache, default_disk_dir, volume_fingerprint
    from .corrections import CorrectableObject
    from .intensity import CT_WINDOWS, Window, choose_window
    from .pipelines import Pipeline, SliceGeometry, pipeline_for
    from .predictor import Segmenter, SliceEmbedding
    from .propagation import AUTO, CancelToken, PropagationOptions, PropagationResult, propagate
    from .session import SliceResult, VolumeSession
    from .settings import propagation_options, propagation_settings
    from .weights import load_manifest

_LAZY = {
    "make_segmenter": "backends", "EmbeddingCache": "cache", "default_disk_dir": "cache", "volume_fingerprint": "cache",
    "CorrectableObject": "corrections", "CT_WINDOWS": "intensity", "Window": "intensity", "choose_window": "intensity",
    "Pipeline": "pipelines", "SliceGeometry": "pipelines", "pipeline_for": "pipelines", "Segmenter": "predictor",
    "SliceEmbedding": "predictor",
    "AUTO": "propagation", "CancelToken": "propagation", "PropagationOptions": "propagation",
    "PropagationResult": "propagation", "propagate": "propagation", "SliceResult": "session",
    "VolumeSession": "session", "propagation_options": "settings", "propagation_settings": "settings",
    "load_manifest": "weights",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = ["AUTO", "Box", "CT_WINDOWS", "CancelToken", "CorrectableObject", "EmbeddingCache", "Pipeline",
           "PropagationOptions", "PropagationResult", "Segmenter", "SliceEmbedding", "SliceGeometry", "SliceResult",
           "Volume", "VolumeSession", "Window", "axes", "choose_window", "default_disk_dir", "load_manifest",
           "make_segmenter", "pipeline_for", "propagate", "propagation_options", "propagation_settings",
           "volume_fingerprint"]
