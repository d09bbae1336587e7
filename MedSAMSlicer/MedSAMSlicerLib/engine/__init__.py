"""The model engine: models, official pre/post-processing, encoder runtimes, embedding cache, 3D propagation.

Imports only :mod:`MedSAMSlicerLib.errors` and :mod:`MedSAMSlicerLib.atomic` from the rest of the package; never
Slicer, Qt, file formats (:mod:`MedSAMSlicerLib.volumeio`) or the command line.
"""
