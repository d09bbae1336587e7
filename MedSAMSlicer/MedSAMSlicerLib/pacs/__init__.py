"""A PACS over DICOMweb (QIDO-RS search, WADO-RS fetch, STOW-RS store), through ``dicomweb-client``.

A room at the level of :mod:`~MedSAMSlicerLib.volumeio` (it uses its DICOM reader and SEG writer); the CLI and the
browser app call it, the engine server never does (DICOM and its patient tags stay on the client side).
"""
