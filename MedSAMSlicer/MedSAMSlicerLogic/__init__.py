"""MedSAMSlicer's MRML logic: Slicer nodes in, segments out.  Imports slicer and vtk, never qt.

- :mod:`.volume_nodes`: a volume node as the engine's ``Volume`` (a copy; the user's volume is never modified)
- :mod:`.roi_prompts`: Markups ROI boxes <-> (slice axis, slice index, box)
- :mod:`.segments`: writing one segment, refusing a segmentation on another grid
- :mod:`.undo`: one undo step per whole operation
- :mod:`.worker`: engine work on a thread, polled by the panel
- :mod:`.messages`: any error as one line for the user
- :mod:`.timelog_table`, :mod:`.edit_watch`: the annotation-time log and manual-edit detection
- :mod:`.dependencies`: missing Python packages, installed with the user's consent
- :mod:`.box_segmentation`: the logic the panel and the self-test drive

The submodules import the engine (numpy, torch...) lazily through :mod:`.box_segmentation`; import that module only
after :mod:`.dependencies` says the packages are present.
"""
