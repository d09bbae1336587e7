"""The contract between the rooms: the values that cross them, typed once, with their wire encoding.

numpy and the standard library only (no torch, scipy, requests, fastapi): the engine, the client, the server and the
Slicer logic all stand on this package, so a box, a volume's geometry (with the frame it is in), the propagation
settings, a job's state and a result mean the same thing on every side of every boundary.
"""

from . import axes, wire
from .boxes import Box, box_from_mask, box_values, checked_box, jittered_box, parse_box
from .messages import (
    ACTIONS,
    JobState,
    ObjectAction,
    ObjectStart,
    PropagationResult,
    PropagationSettings,
    SessionSpec,
    SliceRequest,
    SliceResult,
    decode_result,
)
from .volume import FRAMES, Frame, Volume, check_voxels, other_frame, volume_from_matrix

__all__ = ["ACTIONS", "FRAMES", "Box", "Frame", "JobState", "ObjectAction", "ObjectStart", "PropagationResult",
           "PropagationSettings", "SessionSpec", "SliceRequest", "SliceResult", "Volume", "axes", "box_from_mask",
           "box_values", "check_voxels", "checked_box", "decode_result", "jittered_box", "other_frame", "parse_box",
           "volume_from_matrix", "wire"]
