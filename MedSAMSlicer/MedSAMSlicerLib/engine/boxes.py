"""Box prompts: moved to :mod:`MedSAMSlicerLib.protocol.boxes` (issue 17); this module keeps the old name working."""

from ..protocol.boxes import Box, box_from_mask, box_values, checked_box, jittered_box, parse_box

__all__ = ["Box", "box_from_mask", "box_values", "checked_box", "jittered_box", "parse_box"]
