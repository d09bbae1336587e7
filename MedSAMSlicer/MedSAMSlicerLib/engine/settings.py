"""The one translation between the wire's :class:`~MedSAMSlicerLib.protocol.PropagationSettings` and the engine's
:class:`~.propagation.PropagationOptions`, both ways (the server reads settings; ``segment --server`` sends them).

The two differ in one field: on the wire ``stop`` is a yes/no; in the engine it is a stop rule, :data:`AUTO` (the
engine picks the bounded or the open rule by whether a range is given) or None (never stop early).
"""

from __future__ import annotations

from ..protocol import PropagationSettings
from .propagation import AUTO, PropagationOptions


def propagation_options(settings: PropagationSettings) -> PropagationOptions:
    return PropagationOptions(rule=settings.rule, slice_range=settings.slice_range, margin=settings.margin,
                              stop=AUTO if settings.stop else None, largest_component=settings.largest_component,
                              fill_holes=settings.fill_holes)


def propagation_settings(options: PropagationOptions) -> PropagationSettings:
    return PropagationSettings(rule=options.rule, slice_range=options.slice_range, stop=options.stop is not None,
                               largest_component=options.largest_component, fill_holes=options.fill_holes,
                               margin=options.margin)
