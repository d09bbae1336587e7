"""The "MedSAM" Segment Editor effect: the panel's box actions, writing into the segment selected in Segment Editor.

Registered by ``MedSAMSlicer.registerEditorEffect`` at start-up.  It shares the module's logic (one engine, one MRML
logic) with the panel.  The target segment is read when the user clicks; the result is written through Segment
Editor's own ``modifySegmentByLabelmap`` into that segment (``MedSAMSlicerLogic.editor_writes``), so the editable
area, the intensity mask and the overwrite settings are honoured.  Undo is Segment Editor's: the effect saves its
state before each operation and never records effect writes on MedSAM's own undo stack, because overwriting
"all segments" also takes voxels from other segments, which only Segment Editor's history restores.  The polling
timer runs only while an operation is pending and stops when the effect is deactivated; shortcuts exist only while
the effect is active.  The options (view, window, slice range) are stored in the segment editor node, so they are
saved with the scene.
"""

from __future__ import annotations

import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer before 5.4
    def _(text: str) -> str:
        return text

from MedSAMSlicerLogic.choices import (DEFAULT_RANGE_MODE, DEFAULT_VIEW, DEFAULT_WINDOW, RANGE_MODES, VIEWS,
                                       WINDOW_NAMES)
from MedSAMSlicerLogic.engine_jobs import ProgressState
from MedSAMSlicerLogic.shortcuts import key_sequences

POLL_MS = 100


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM"  # the registered name (setActiveEffectByName): never translated
        if hasattr(scriptedEffect, "title"):
            scriptedEffect.title = _("MedSAM")
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
                f"({keys['propagate']}). Undo with Segment Editor's Undo ({keys['undo']} or Ctrl+Z): it restores every "
                "segment the result overwrote. The engine is set up in the MedSAM "
                "module (Model section).</html>")

    def createCursor(self, widget):
        return qt.QCursor(qt.Qt.ArrowCursor)

    def setupOptionsFrame(self):
        self.viewComboBox = qt.QComboBox()
        self.viewComboBox.addItems(list(VIEWS))
        self.scriptedEffect.addLabeledOptionsWidget(_("Draw in view:"), self.viewComboBox)
        self.windowComboBox = qt.QComboBox()
        self.windowComboBox.editable = True
        self.windowComboBox.addItems(list(WINDOW_NAMES))
        self.scriptedEffect.addLabeledOptionsWidget(_("Window:"), self.windowComboBox)
        self.rangeComboBox = qt.QComboBox()
        for choice in RANGE_MODES:
            self.rangeComboBox.addItem(choice.title, choice.mode)
        self.scriptedEffect.addLabeledOptionsWidget(_("Slice range:"), self.rangeComboBox)
        buttons = qt.QHBoxLayout()
        self.drawBoxButton = qt.QPushButton(_("Draw box"))
        self.addKeyBoxButton = qt.QPushButton(_("Add key box"))
        self.segmentSliceButton = qt.QPushButton(_("Segment slice"))
        self.propagateButton = qt.QPushButton(_("Propagate 3D"))
        self.cancelButton = qt.QPushButton(_("Cancel"))
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
        for combo in (self.viewComboBox, self.windowComboBox, self.rangeComboBox):
            combo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.windowComboBox.connect("editTextChanged(QString)", self.updateMRMLFromGUI)
        self.windowComboBox.connect("currentTextChanged(QString)", self.onWindowChanged)

    # -- options in the segment editor node (saved with the scene), as Slicer's effect template does --------------
    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("MedSAM.View", DEFAULT_VIEW)
        self.scriptedEffect.setParameterDefault("MedSAM.Window", DEFAULT_WINDOW)
        self.scriptedEffect.setParameterDefault("MedSAM.Range", DEFAULT_RANGE_MODE)

    def updateGUIFromMRML(self):
        for combo in (self.viewComboBox, self.windowComboBox, self.rangeComboBox):
            combo.blockSignals(True)
        try:
            for combo, name, default in ((self.viewComboBox, "MedSAM.View", DEFAULT_VIEW),
                                         (self.windowComboBox, "MedSAM.Window", DEFAULT_WINDOW)):
                wanted = self.scriptedEffect.parameter(name) or default
                if combo.currentText != wanted:  # never rewrite a window being typed ("L,W")
                    combo.currentText = wanted
            index = max(self.rangeComboBox.findData(self.scriptedEffect.parameter("MedSAM.Range")), 0)
            if self.rangeComboBox.currentIndex != index:
                self.rangeComboBox.currentIndex = index
        finally:
            for combo in (self.viewComboBox, self.windowComboBox, self.rangeComboBox):
                combo.blockSignals(False)

    def onWindowChanged(self, *args):
        """Show the source volume with the display W/L of the window MedSAM will use (choices.py)."""
        from MedSAMSlicerLogic.volume_nodes import show_window

        if self.scriptedEffect.parameterSetNode() is not None:
            show_window(self.sourceVolume(), self.windowComboBox.currentText)

    def updateMRMLFromGUI(self, *args):
        self.scriptedEffect.setParameter("MedSAM.View", self.viewComboBox.currentText)
        self.scriptedEffect.setParameter("MedSAM.Window", self.windowComboBox.currentText)
        self.scriptedEffect.setParameter("MedSAM.Range", self.rangeComboBox.currentData or DEFAULT_RANGE_MODE)

    # -- lifetime -------------------------------------------------------------------------------------------------
    def activate(self):
        import MedSAMSlicer

        if not self.shortcuts:
            self.shortcuts = MedSAMSlicer.makeShortcuts(MedSAMSlicer.mainWindowOrNone(), {
                "drawBox": lambda: self.onDrawBox(True), "addKeyBox": lambda: self.onDrawBox(False),
                "segmentSlice": self.onSegmentSlice, "propagate": self.onPropagate, "accept": self.onAccept,
                "undo": self.onUndo, "cancel": self.onCancel,
                **MedSAMSlicer.reviewActions(self.logic(), self.sourceVolume, self.startReview, self.showMessage)})
        if self.logic().link.client is None:
            self.showMessage(_("The engine is not running: open the MedSAM module and click 'Start engine' (Model "
                               "section), or set a remote server there"))

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

    def showMessage(self, text, error=False, popup=False):
        """The status line (red for a problem); ``popup`` (a real failure only) also opens one message box."""
        self.statusLabel.text = text
        self.statusLabel.setStyleSheet("color: #c0392b" if error else "")
        if popup:
            slicer.util.errorDisplay(text, windowTitle=_("MedSAM"))

    def guarded(self, what, action):
        import MedSAMSlicer

        MedSAMSlicer.runGuarded(what, action, self.showMessage)

    def writer(self):
        """Write through Segment Editor (editable area, intensity mask, overwrite) into the segment the click
        fixed, naming it (Segment Editor's selection is left alone); its history holds the undo step."""
        from MedSAMSlicerLogic.editor_writes import SegmentEditorWriter

        def modify(segmentationNode, segmentId, labelmap):
            self.scriptedEffect.modifySegmentByLabelmap(segmentationNode, segmentId, labelmap,
                                                        slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)

        return SegmentEditorWriter(modify, lambda: self.scriptedEffect.parameterSetNode().GetSegmentationNode())

    def editorWidget(self):
        """The Segment Editor widget whose active effect is this one (the module's, or a test's own)."""
        for editor in qt.QApplication.allWidgets():  # also an editor without a parent (a test's, a script's)
            if not isinstance(editor, slicer.qMRMLSegmentEditorWidget):
                continue
            active = editor.activeEffect()
            if active is not None and hasattr(active, "self") and active.self() is self:
                return editor
        return None

    # -- actions --------------------------------------------------------------------------------------------------
    def onDrawBox(self, newObject):
        logic = self.logic()
        if logic.core.busy:
            return

        def draw():
            import MedSAMSlicer

            logic.checkArm("draw_box" if newObject else "key_box")  # a study's manual arm refuses MedSAM
            sliceNode = MedSAMSlicer.sliceNodeOfView(self.viewComboBox.currentText)
            logic.core.prefetch_window = self.windowComboBox.currentText  # the engine encodes ahead for it
            _, _, note = logic.core.draw_box(self.sourceVolume(), sliceNode, newObject)
            self.showMessage(note + _("; drag the handles around the object"))
            if logic.core.preparing:  # the volume goes to the engine over the next polls, then the prefetch
                self.pollTimer.start()

        self.guarded(_("Draw box"), draw)

    def start(self, title, action, startOperation):
        logic = self.logic()
        if logic.core.busy:
            return
        if logic.link.client is None or logic.core.engine is not logic.link.client:
            self.showMessage(_("The MedSAM engine is not running: open the MedSAM module and click 'Start engine' "
                               "(Model section), or set a remote server there"))
            return
        parameters = self.scriptedEffect.parameterSetNode()
        segmentation, segmentId = parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID()  # at click
        if not segmentId:
            self.showMessage(_("Select a segment in Segment Editor first"))
            return

        def begin():
            logic.checkArm(action)  # a study's manual arm refuses MedSAM
            self.scriptedEffect.saveStateForUndo()  # Segment Editor's Undo takes back the whole operation
            startOperation(logic.core, segmentation, segmentId, self.writer())

        self.guarded(title, begin)
        if logic.core.busy:
            self.progressBar.setRange(0, 0)
            self.progressBar.show()
            self.showMessage(_("{title}: running...").format(title=title))
            self.pollTimer.start()

    def onSegmentSlice(self):
        volume, window = self.sourceVolume(), self.windowComboBox.currentText
        self.start(_("Segment slice"), "segment_slice", lambda core, segmentation, segmentId, writer:
                   core.start_segment_slice(volume, None, segmentation, segmentId, window, writer=writer))

    def onPropagate(self):
        volume, window, mode = self.sourceVolume(), self.windowComboBox.currentText, self.rangeComboBox.currentData
        self.start(_("Propagate 3D"), "propagate", lambda core, segmentation, segmentId, writer: core.start_propagation(
            volume, None, segmentation, segmentId, window, mode, writer=writer))

    def startReview(self, title, begin):
        """A review action on the object the MedSAM panel propagated for review (its writes are MedSAM's)."""
        self.start(title, "propagate", lambda core, segmentation, segmentId, writer: begin())

    def onCancel(self):
        self.logic().core.cancel()

    def onUndo(self):
        """Segment Editor's Undo: effect writes are in its history (MedSAM's own stack has none of them), and only it
        restores the voxels an overwrite took from other segments."""
        if self.logic().core.busy:
            self.showMessage(_("Cancel the running operation before undoing"))
            return
        editor = self.editorWidget()
        if editor is None:
            self.showMessage(_("Use Segment Editor's Undo (Ctrl+Z)"))
            return
        editor.undo()
        self.showMessage(_("Undone with Segment Editor's Undo"))

    def onAccept(self):
        self.guarded(_("Accept"), lambda: (self.logic().core.accept(self.sourceVolume()),
                                           self.showMessage(_("Accepted; the next box starts a new segment"))))

    def onPoll(self):
        progress = self.logic().core.poll()
        if progress.total:
            self.progressBar.setRange(0, progress.total)
            self.progressBar.setValue(progress.done)
        if progress.busy:
            if progress.message:
                self.statusLabel.text = f"{progress.title}: {progress.message}"
            return
        if progress.state == ProgressState.IDLE and self.logic().core.preparing:
            return  # a prefetch is still sending the volume
        self.pollTimer.stop()
        self.progressBar.hide()
        if progress.state == ProgressState.DONE and progress.operation is None:  # a review action writing nothing
            self.showMessage(progress.message)
        elif progress.state == ProgressState.DONE:
            self.showMessage(f"{progress.operation.description}: done in {progress.outcome.seconds:.1f} s")
        elif progress.state == ProgressState.CANCELLED:
            self.showMessage(progress.message)
        elif progress.state == ProgressState.FAILED:
            self.showMessage(f"{progress.title}: {progress.message}", error=True, popup=True)
