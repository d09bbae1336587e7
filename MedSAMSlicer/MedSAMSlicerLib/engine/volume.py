"""The volume container: moved to :mod:`MedSAMSlicerLib.protocol.volume` (issue 17); the old name keeps working."""

from ..protocol.volume import FRAMES, Frame, Volume, check_voxels, other_frame, volume_from_matrix

__all__ = ["FRAMES", "Frame", "Volume", "check_voxels", "other_frame", "volume_from_matrix"]
