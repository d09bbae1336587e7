"""MedSAMSlicer in a web browser: real Slicer views served by trame-slicer, on the shared MRML logic and the engine
service (issue 12).  Imports trame-slicer, slicer-core and the engine *client*; never torch."""
