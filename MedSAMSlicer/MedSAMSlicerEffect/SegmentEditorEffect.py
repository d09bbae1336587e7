"""The "MedSAM" Segment Editor effect: the panel's box actions, writing into the segment selected in Segment Editor.

Registered by ``MedSAMSlicer.registerEditorEffect`` at start-up.  It shares the module's logic (one model, one
embedding cache) and its worker: the model runs off the GUI thread, the result is written on it.  Before each write
the effect saves Segment Editor's undo state, so Segment Editor's Undo takes back a whole propagation.
"""

import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

VIEWS = ("Red", "Green", "Yellow")
WINDOWS = ("auto", "soft_tissue", "lung", "bone", "brain", "mediastinum", "mr", "none")
RANGE_MODES = (("auto", "From box thickness, else stop rule"), ("roi", "From box thickness"),
               ("stop", "Stop rule (whole volume)"))


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM"
        scriptedEffect.perSegment = True  # writes the selected segment only
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.task = None
        self.taskApply = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
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
        return ("<html>Box-prompted segmentation with MedSAM / LiteMedSAM into the selected segment.<p>"
                "<b>Draw box</b> on the slice shown in the chosen view, drag its handles around the object, then "
                "<b>Segment slice</b> or <b>Propagate 3D</b>. Undo with Segment Editor's Undo. The MedSAM module "
                "has the same actions with more options.</html>")

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

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

    # -- helpers --------------------------------------------------------------------------------------------------
    def core(self):
        import MedSAMSlicer

        if not MedSAMSlicer.ensureDependencies(self.showMessage):
            return None
        return MedSAMSlicer.sharedLogic().core

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

    # -- actions --------------------------------------------------------------------------------------------------
    def onDrawBox(self, newObject):
        core = self.core()
        if core is None or self.task is not None:
            return

        def draw():
            sliceNode = slicer.app.layoutManager().sliceWidget(self.viewComboBox.currentText).mrmlSliceNode()
            _, _, note = core.draw_box(self.sourceVolume(), sliceNode, newObject)
            self.showMessage(note + "; drag the handles around the object")

        self.guarded("Draw box", draw)

    def start(self, title, makeRequest, apply):
        core = self.core()
        if core is None or self.task is not None:
            return
        from MedSAMSlicerLogic.messages import user_message

        try:
            request = makeRequest(core)
        except Exception as error:  # noqa: BLE001
            self.showMessage(f"{title}: {user_message(error)}", error=True)
            return
        self.task = core.start(title, request)
        self.taskApply = lambda outcome: apply(core, request, outcome)
        self.progressBar.setRange(0, 0)
        self.progressBar.show()
        self.showMessage(f"{title}: running...")
        self.pollTimer.start()

    def writeArguments(self):
        parameters = self.scriptedEffect.parameterSetNode()
        return parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID()

    def onSegmentSlice(self):
        volume = self.sourceVolume()

        def apply(core, request, outcome):
            segmentation, segmentId = self.writeArguments()
            return core.apply_slice(volume, request, outcome, segmentation, segmentId)

        self.start("Segment slice", lambda core: core.slice_request(volume, None, self.windowComboBox.currentText),
                   apply)

    def onPropagate(self):
        volume = self.sourceVolume()

        def apply(core, request, outcome):
            segmentation, segmentId = self.writeArguments()
            return core.apply_propagation(volume, request, outcome, segmentation, segmentId)

        self.start("Propagate 3D", lambda core: core.propagation_request(
            volume, None, self.windowComboBox.currentText, self.rangeComboBox.currentData), apply)

    def onCancel(self):
        if self.task is not None:
            self.task.cancel()

    def onPoll(self):
        from MedSAMSlicerLogic.messages import user_message
        from MedSAMSlicerLogic.worker import TaskState

        task = self.task
        if task is None:
            self.pollTimer.stop()
            return
        done, total = task.progress
        if total:
            self.progressBar.setRange(0, total)
            self.progressBar.setValue(done)
        if not task.finished:
            return
        self.pollTimer.stop()
        self.progressBar.hide()
        self.task = None
        if task.state is TaskState.DONE:
            try:
                self.scriptedEffect.saveStateForUndo()  # Segment Editor's Undo takes back the whole operation
                operation = self.taskApply(task.result)
                self.showMessage(f"{operation.description}: done in {task.seconds:.1f} s")
            except Exception as error:  # noqa: BLE001
                self.showMessage(f"{task.title}: {user_message(error)}", error=True)
        elif task.state is TaskState.CANCELLED:
            self.showMessage(task.message)
        else:
            self.showMessage(f"{task.title}: {task.message}", error=True)
