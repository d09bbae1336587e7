"""MedSAMSlicer engine: box-prompted MedSAM / LiteMedSAM segmentation of CT and MR volumes.

This package imports neither Slicer nor Qt, so that the same code runs in 3D Slicer, in the ``medsam-slicer`` command
line tool and under pytest.  Heavy dependencies (torch, SimpleITK) are imported by the modules that need them, not
here, so that ``import MedSAMSlicerLib`` stays cheap for the Slicer panel's first-use dependency check.
"""

__version__ = "0.1.0"
