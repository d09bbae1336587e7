"""Client of the engine server (``medsam-slicer serve``): numpy, the standard library and ``requests`` only.

Slicer's panel, the browser app's helpers and ``medsam-slicer segment|eval --server URL`` import this; it must
never import torch or the engine (a test checks it in a fresh interpreter).
"""

from ..errors import EngineUnavailable, MedSAMError, ServiceError
from .engine_client import EngineClient, JobStatus, RemoteJob, RemoteVolume, read_token_file
from .opening import VolumeOpening

__all__ = ["EngineClient", "RemoteVolume", "RemoteJob", "JobStatus", "EngineUnavailable", "MedSAMError",
           "ServiceError", "VolumeOpening", "read_token_file"]
