"""The "MedSAM" Segment Editor effect: the panel's box actions, writing into the segment selected in Segment Editor.

Registered by ``MedSAMSlicer.registerEditorEffect`` at start-up.  It shares the module's logic (one engine, one MRML
logic) with the panel.  The target segment is read when the user clicks; the result is written through Segment
Editor's own ``modifySelectedSegmentByLabelmap``, so the editable area, the intensity mask and the overwrite
settings are honoured, and Segment Editor's Undo takes back a whole operation.  The polling timer runs only while
an operation is pending and stops when the effect is deactivated; shortcuts exist only while the effect is active.
"""

from __future__ import annotations

import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from MedSAMSlicerLogic.shortcuts import key_sequences

VIEWS = ("Red", "Green", "Yellow")
WINDOWS = ("auto", "soft_tissue", "lung", "bone", "brain", "mediastinum", "mr", "none")
RANGE_MODES = (("auto", "From box thickness, else stop rule"), ("roi", "From box thickness"),
               ("stop", "Stop rule (whole volume)"))
POLL_MS = 100


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM"
        scriptedEffect.perSegment = True  # writes the selected segment only
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.shortcuts = []
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "MedSAMSlicer.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        keys = key_sequences()
        return ("<html>Box-prompted segmentation with MedSAM / LiteMedSAM into the selected segment.<p>"
                f"<b>Draw box</b> ({keys['drawBox']}) on the slice shown in the chosen view, drag its handles around "
                f"the object, then <b>Segment slice</b> ({keys['segmentSlice']}) or <b>Propagate 3D</b> "
                f"({keys['propagate']}). Undo with Segment Editor's Undo. The engine is set up in the MedSAM "
                "module (Model section).</html>")

    def createCursor(self, widget):
        return qt.QCursor(qt.Qt.ArrowCursor)

    def setupOptionsFrame(self):
        self.viewComboBox = qt.QComboBox()
        self.viewComboBox.addItems(list(VIEWS))
        self.scriptedEffect.addLabeledOptionsWidget("Draw in view:", self.viewComboBox)
        self.windowComboBox = qt.QComboBox()
        self.windowComboBox.editable = True
        self.windowComboBox.addItems(list(WINDOWS))
        self.scriptedEffect.addLabeledOptionsWidget("Window:", self.windowComboBox)
        self.rangeComboBox = qt.QComboBox()
        for mode, title in RANGE_MODES:
            self.rangeComboBox.addItem(title, mode)
        self.scriptedEffect.addLabeledOptionsWidget("Slice range:", self.rangeComboBox)
        buttons = qt.QHBoxLayout()
        self.drawBoxButton = qt.QPushButton("Draw box")
        self.addKeyBoxButton = qt.QPushButton("Add key box")
        self.segmentSliceButton = qt.QPushButton("Segment slice")
        self.propagateButton = qt.QPushButton("Propagate 3D")
        self.cancelButton = qt.QPushButton("Cancel")
        for button in (self.drawBoxButton, self.addKeyBoxButton, self.segmentSliceButton, self.propagateButton,
                       self.cancelButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.hide()
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.drawBoxButton.connect("clicked()", lambda: self.onDrawBox(True))
        self.addKeyBoxButton.connect("clicked()", lambda: self.onDrawBox(False))
        self.segmentSliceButton.connect("clicked()", self.onSegmentSlice)
        self.propagateButton.connect("clicked()", self.onPropagate)
        self.cancelButton.connect("clicked()", self.onCancel)

    # -- lifetime -------------------------------------------------------------------------------------------------
    def activate(self):
        import MedSAMSlicer

        if not self.shortcuts:
            self.shortcuts = MedSAMSlicer.makeShortcuts(MedSAMSlicer.mainWindowOrNone(), {
                "drawBox": lambda: self.onDrawBox(True), "addKeyBox": lambda: self.onDrawBox(False),
                "segmentSlice": self.onSegmentSlice, "propagate": self.onPropagate, "accept": self.onAccept,
                "undo": self.onUndo, "cancel": self.onCancel})

    def deactivate(self):
        """Hidden: no shortcuts, no timer.  A pending operation is cancelled (nothing is written)."""
        import MedSAMSlicer

        MedSAMSlicer.deleteShortcuts(self.shortcuts)
        self.pollTimer.stop()
        logic = self.logic()
        if logic.core.busy and getattr(logic.core.pending, "writer", None) is not None:
            logic.core.cancel()  # ours: it would write through this effect, which is going away
            logic.core.poll()
            self.progressBar.hide()

    def cleanup(self):
        """Segment Editor is being destroyed: release the timer and the shortcuts (Slicer calls this)."""
        import MedSAMSlicer

        self.pollTimer.stop()
        MedSAMSlicer.deleteShortcuts(self.shortcuts)
        self.pollTimer = None

    # -- helpers --------------------------------------------------------------------------------------------------
    @staticmethod
    def logic():
        import MedSAMSlicer

        return MedSAMSlicer.sharedLogic()

    def sourceVolume(self):
        parameters = self.scriptedEffect.parameterSetNode()
        getter = getattr(parameters, "GetSourceVolumeNode", None) or parameters.GetMasterVolumeNode  # Slicer < 5.4
        return getter()

    def showMessage(self, text, error=False):
        self.statusLabel.text = text
        if error:
            slicer.util.errorDisplay(text, windowTitle="MedSAM")

    def guarded(self, what, action):
        from MedSAMSlicerLogic.messages import user_message

        try:
            action()
        except Exception as error:  # noqa: BLE001 - one message box, never only the console
            self.showMessage(f"{what}: {user_message(error)}", error=True)

    def writer(self, segmentId):
        """Write through Segment Editor (editable area, intensity mask, overwrite) into ``segmentId``, the segment
        selected when the user clicked, even if the selection changed meanwhile."""
        from MedSAMSlicerLogic.segments import mask_to_labelmap

        def write(target, mask, volumeNode):
            parameters = self.scriptedEffect.parameterSetNode()
            selected = parameters.GetSelectedSegmentID()
            parameters.SetSelectedSegmentID(target.segment_id)
            try:
                labelmap = mask_to_labelmap(mask, volumeNode, target.segmentation_node)
                self.scriptedEffect.modifySelectedSegmentByLabelmap(
                    labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
            finally:
                if selected != target.segment_id:
                    parameters.SetSelectedSegmentID(selected)

        return write

    # -- actions --------------------------------------------------------------------------------------------------
    def onDrawBox(self, newObject):
        logic = self.logic()
        if logic.core.busy:
            return

        def draw():
            sliceNode = slicer.app.layoutManager().sliceWidget(self.viewComboBox.currentText).mrmlSliceNode()
            logic.core.prefetch_window = self.windowComboBox.currentText  # the engine encodes ahead for it
            _, _, note = logic.core.draw_box(self.sourceVolume(), sliceNode, newObject)
            self.showMessage(note + "; drag the handles around the object")
            if logic.core.preparing:  # the volume goes to the engine over the next polls, then the prefetch
                self.pollTimer.start()

        self.guarded("Draw box", draw)

    def start(self, title, startOperation):
        logic = self.logic()
        if logic.core.busy:
            return
        if logic.link.client is None or logic.core.engine is not logic.link.client:
            self.showMessage("The MedSAM engine is not running: open the MedSAM module and click 'Start engine' "
                             "(Model section), or set a remote server there", error=True)
            return
        parameters = self.scriptedEffect.parameterSetNode()
        segmentation, segmentId = parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID()  # at click
        if not segmentId:
            self.showMessage("Select a segment in Segment Editor first", error=True)
            return

        def begin():
            self.scriptedEffect.saveStateForUndo()  # Segment Editor's Undo takes back the whole operation
            startOperation(logic.core, segmentation, segmentId, self.writer(segmentId))

        self.guarded(title, begin)
        if logic.core.busy:
            self.progressBar.setRange(0, 0)
            self.progressBar.show()
            self.showMessage(f"{title}: running...")
            self.pollTimer.start()

    def onSegmentSlice(self):
        volume, window = self.sourceVolume(), self.windowComboBox.currentText
        self.start("Segment slice", lambda core, segmentation, segmentId, writer: core.start_segment_slice(
            volume, None, segmentation, segmentId, window, writer=writer))

    def onPropagate(self):
        volume, window, mode = self.sourceVolume(), self.windowComboBox.currentText, self.rangeComboBox.currentData
        self.start("Propagate 3D", lambda core, segmentation, segmentId, writer: core.start_propagation(
            volume, None, segmentation, segmentId, window, mode, writer=writer))

    def onCancel(self):
        self.logic().core.cancel()

    def onUndo(self):
        self.guarded("Undo", lambda: self.showMessage("Undone: " + self.logic().core.undo().description))

    def onAccept(self):
        self.guarded("Accept", lambda: (self.logic().core.accept(self.sourceVolume()),
                                        self.showMessage("Accepted; the next box starts a new segment")))

    def onPoll(self):
        progress = self.logic().core.poll()
        if progress.total:
            self.progressBar.setRange(0, progress.total)
            self.progressBar.setValue(progress.done)
        if progress.busy:
            if progress.message:
                self.statusLabel.text = f"{progress.title}: {progress.message}"
            return
        if progress.state == "idle" and self.logic().core.preparing:
            return  # a prefetch is still sending the volume
        self.pollTimer.stop()
        self.progressBar.hide()
        if progress.state == "done":
            self.showMessage(f"{progress.operation.description}: done in {progress.outcome.seconds:.1f} s")
        elif progress.state == "cancelled":
            self.showMessage(progress.message)
        elif progress.state == "failed":
            self.showMessage(f"{progress.title}: {progress.message}", error=True)
