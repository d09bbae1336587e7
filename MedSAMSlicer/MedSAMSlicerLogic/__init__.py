"""MedSAMSlicer's MRML logic: Slicer nodes in, segments out.  Imports slicer and vtk, never qt.

- :mod:`.volume_nodes`: a volume node as the engine's ``Volume`` (a copy; the user's volume is never modified)
- :mod:`.roi_prompts`: Markups ROI boxes <-> (slice axis, slice index, box)
- :mod:`.segments`: writing one segment, refusing a segmentation on another grid
- :mod:`.undo`: one undo step per whole operation
- :mod:`.engine_link`: the engine service, started locally (a child process) or remote
- :mod:`.shortcuts`: the keyboard shortcuts of the panel and the effect (plain data)
- :mod:`.messages`: any error as one line for the user
- :mod:`.timelog_table`, :mod:`.edit_watch`: the annotation-time log and manual-edit detection
- :mod:`.dependencies`: where packages go (Slicer's Python: client only; the engine: a private folder)
- :mod:`.box_segmentation`: the logic the panel and the self-test drive (MRML writes, undo, boxes, the time log)
- :mod:`.engine_jobs`: a pending operation and the prefetch, stepped against the engine from the front end's timer
- :mod:`.remote_volumes`: the engine's sessions for the volume in use (sent once per content)
- :mod:`.study_mode`: a reader working through a study plan (arms, order, time log per case, report), any front end
- :mod:`.choices`: the windows, range modes and views every front end offers (one table)
- :mod:`.editor_writes`: the effect's writes through Segment Editor (its history holds their undo)
- :mod:`.engine_setup`: install the engine's packages, then start it, polled from the front end's timer

No module here imports torch or starts a thread: the model runs in the engine process, reached through
``MedSAMSlicerLib.client`` (numpy + requests).  The front ends call ``BoxSegmentationLogic.poll()`` from their own
timer.
"""
