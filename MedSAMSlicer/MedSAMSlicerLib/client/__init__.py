"""Client of the engine server (``medsam-slicer serve``): numpy, the standard library and ``requests`` only.

Slicer's panel, the browser app's helpers and ``medsam-slicer segment|eval --server URL`` import this; it must
never import torch or the engine (a test checks it in a fresh interpreter).  The values it sends and receives are
:mod:`MedSAMSlicerLib.protocol`'s (re-exported here: what a caller needs to talk to an engine).
"""

from ..errors import EngineUnavailable, MedSAMError, ServiceError
from ..protocol import JobState, PropagationSettings, SessionSpec
from .engine_client import EngineClient, JobStatus, RemoteJob, RemoteVolume, read_token_file
from .opening import VolumeOpening

__all__ = ["EngineClient", "EngineUnavailable", "JobState", "JobStatus", "MedSAMError", "PropagationSettings",
           "RemoteJob", "RemoteVolume", "ServiceError", "SessionSpec", "VolumeOpening", "read_token_file"]
