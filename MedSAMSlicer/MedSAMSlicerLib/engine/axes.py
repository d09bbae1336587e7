"""Slice axes: moved to :mod:`MedSAMSlicerLib.protocol.axes` (issue 17); this module keeps the old name working."""

from ..protocol.axes import (
                             ANATOMICAL_AXES,
                             AXIS_CHOICES,
                             INDEX_AXES,
                             index_axis,
                             index_name,
                             numpy_axis,
                             put_slice,
                             slice_count,
                             take_slice,
)

__all__ = ["ANATOMICAL_AXES", "AXIS_CHOICES", "INDEX_AXES", "index_axis", "index_name", "numpy_axis", "put_slice",
           "slice_count", "take_slice"]
