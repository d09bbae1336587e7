"""The MedSAM panel of the page: widgets bound to the typed state, and signals for what the reader asks.

Built as trame-slicer's own UI components are (``trame_slicer.app.ui``): the panel knows the state's names and
emits a signal per button; it calls nothing in the app.  ``app.WebApp`` connects the signals to its handlers.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3
from undo_stack import Signal

from MedSAMSlicerLogic.choices import RANGE_MODES
from MedSAMSlicerLogic.shortcuts import SHORTCUTS

from .state import SAVE_FORMATS, TOOLS


class MedSAMPanel(v3.VContainer):
    """The drawer's content.  ``controls`` and ``panel``: ``TypedState[ControlsState]``, ``TypedState[PanelState]``."""

    box_clicked = Signal()  # arm the drag for a new object's box
    key_box_clicked = Signal()  # arm the drag for a key box of the same object
    segment_slice_clicked = Signal()
    propagate_clicked = Signal()
    cancel_clicked = Signal()
    undo_clicked = Signal()
    accept_clicked = Signal()
    next_object_clicked = Signal()
    tool_changed = Signal(object)  # the tool the page chose (untrusted: the handler checks it)
    fill_between_clicked = Signal()  # Segment Editor's "Fill between slices" on the current segment
    save_clicked = Signal()
    log_clicked = Signal()
    report_clicked = Signal()
    case_clicked = Signal(object)  # a worklist row's number (untrusted)
    next_case_clicked = Signal()
    finish_case_clicked = Signal()
    pacs_open_clicked = Signal()

    def __init__(self, controls, panel, **kwargs) -> None:
        super().__init__(classes="pa-2", style="font-size: 13px", **kwargs)
        c, p = controls.name, panel.name
        with self:
            self._worklist(p)
            with html.Div(v_if=(p.pacs,), id="pacs"):  # --dicomweb: choose a series in the PACS
                v3.VSelect(label="PACS study", v_model=(c.pacs_study,), items=(p.pacs_studies,), id="pacs-study",
                           density="compact", hide_details=True, classes="mb-1")
                v3.VSelect(label="Series", v_model=(c.pacs_series,), items=(p.pacs_series_items,), id="pacs-series",
                           density="compact", hide_details=True, classes="mb-1")
                self._button("Open from PACS", "btn-pacs-open", self.pacs_open_clicked,
                             disabled=f"{p.busy} || !{c.pacs_series}", classes="mb-2")
            v3.VSelect(label="Window", v_model=(c.window,), items=(p.windows,), id="window", density="compact",
                       hide_details=True, classes="mb-2")
            in_study = f"{p.study} && {p.arm}"
            html.Div(f"Study: {{{{ {p.arm} }}}} arm", v_show=(in_study,), id="arm", classes="text-subtitle-2")
            self._button("Finish case", "btn-finish-case", self.finish_case_clicked, disabled=p.busy,
                         v_show=(in_study,), color="primary", classes="mb-2")
            with html.Div(v_show=(f"{p.arm} !== 'manual'",), id="medsam-controls"):  # the manual arm hides MedSAM
                self._medsam(c, p)
            html.Div("Refine", classes="text-caption mt-2")
            with v3.VBtnToggle(v_model=(c.tool,), density="compact", mandatory=True, divided=True,
                               update_modelValue=(self.tool_changed, "[$event]")):
                for tool in TOOLS:
                    v3.VBtn(tool, value=tool, id=f"tool-{tool}", size="small")
            self._button("Fill between slices", "btn-fill-between", self.fill_between_clicked, disabled=p.busy,
                         classes="mt-1")
            self._save(c, p)
            self._time_log(p)
            html.Div(f"{{{{ {p.status} }}}}", id="status", classes="mt-2", style="white-space: pre-wrap")
            html.Div(f"{{{{ {p.error} }}}}", id="error", classes="text-error", style="white-space: pre-wrap")
            html.Div(f"boxes {{{{ {p.boxes} }}}} | voxels {{{{ {p.voxels} }}}}", id="counts", classes="text-caption")
            html.Div(f"{{{{ {p.last_action} }}}}", id="last-action", style="display: none")
            with html.Details(classes="text-caption mt-2"):
                html.Summary("Shortcuts")
                for sequence, what in SHORTCUTS.values():
                    html.Div(f"{sequence}: {what}")

    @staticmethod
    def _button(label: str, element_id: str, signal, disabled: str = "", shortcut: str = "", **kwargs) -> None:
        if disabled:
            kwargs["disabled"] = (disabled,)
        if shortcut:
            kwargs["title"] = SHORTCUTS[shortcut][0]
        v3.VBtn(label, id=element_id, click=signal, block=True, **kwargs)

    def _grid(self, cols: int, buttons) -> None:
        """Buttons side by side, ``cols`` of twelve columns each: (label, id, signal, disabled, shortcut[, extra])."""
        with v3.VRow(dense=True, classes="mt-1"):
            for label, element_id, signal, disabled, shortcut, *extra in buttons:
                with v3.VCol(cols=cols):
                    self._button(label, element_id, signal, disabled, shortcut, **(extra[0] if extra else {}))

    def _worklist(self, p) -> None:
        with html.Div(v_show=(f"{p.cases}.length > 1",), id="worklist", classes="mb-2"):
            html.Div("Worklist", classes="text-caption")
            with html.Div(v_for=f"(c, i) in {p.cases}", key="i", classes="case-row",
                          style=(f"i === {p.case_index} ? 'font-weight: bold' : ''",),
                          click=(self.case_clicked, "[i]")):
                html.Span("{{ i + 1 }}. {{ c.name }}")
                html.Span(" ({{ c.status }})", classes="text-caption")
            self._button("Next case", "btn-next-case", self.next_case_clicked, disabled=p.busy, classes="mt-1")

    def _medsam(self, c, p) -> None:
        self._grid(6, [("Draw box", "btn-box", self.box_clicked, "", "drawBox",
                        dict(color=(f"{p.drawing} ? 'primary' : undefined",))),
                       ("Key box", "btn-key-box", self.key_box_clicked, "", "addKeyBox"),
                       ("Segment slice", "btn-slice", self.segment_slice_clicked, p.busy, "segmentSlice"),
                       ("Propagate", "btn-propagate", self.propagate_clicked, p.busy, "propagate")])
        v3.VSelect(label="Range", v_model=(c.range_mode,), id="range-mode", density="compact",
                   items=(str([dict(title=r.short, value=r.mode) for r in RANGE_MODES]),), hide_details=True,
                   classes="mt-2")
        for label, name, element_id in (("Stop rule", c.stop_rule, "stop-rule"),
                                        ("Largest component", c.largest_component, "largest-component"),
                                        ("Fill holes", c.fill_holes, "fill-holes")):
            v3.VCheckbox(label=label, v_model=(name,), id=element_id, density="compact", hide_details=True)
        total = p.progress_total
        v3.VProgressLinear(model_value=(f"{total} ? 100 * {p.progress_done} / {total} : 0",),
                           indeterminate=(f"{p.busy} && !{total}",), v_show=(p.busy,), height=6, id="progress")
        html.Div(f"{{{{ {p.progress_title} }}}} {{{{ {p.progress_done} }}}}/{{{{ {total} }}}}", v_show=(p.busy,),
                 id="progress-text")
        self._grid(4, [("Cancel", "btn-cancel", self.cancel_clicked, f"!{p.busy}", "cancel"),
                       ("Undo", "btn-undo", self.undo_clicked, f"{p.busy} || !{p.can_undo}", "undo"),
                       ("Accept", "btn-accept", self.accept_clicked, p.busy, "accept")])
        self._grid(12, [("Next object", "btn-next", self.next_object_clicked, p.busy, "")])

    def _save(self, c, p) -> None:
        html.Div("Save (into the output folder)", classes="text-caption mt-2")
        v3.VTextField(label="File name", v_model=(c.save_name,), id="save-name", density="compact", hide_details=True,
                      hint=" or ".join(SAVE_FORMATS))
        v3.VCheckbox(label="Overwrite an existing file", v_model=(c.save_overwrite,), id="save-overwrite",
                     density="compact", hide_details=True)
        self._button("Save segmentation", "btn-save", self.save_clicked, disabled=p.busy, classes="mt-1")
        html.Div(f"{{{{ {p.warning} }}}}", id="warning", classes="text-warning", v_show=(p.warning,))

    def _time_log(self, p) -> None:
        html.Div(f"Time log: reader {{{{ {p.reader} }}}}", classes="text-caption mt-2", id="reader")
        with v3.VRow(dense=True, classes="mt-1"):
            with v3.VCol(cols=6, v_show=(f"!{p.study}",)):
                v3.VBtn(f"{{{{ {p.log_running} ? 'Stop log' : 'Start log' }}}}", id="btn-log", click=self.log_clicked,
                        block=True)
            with v3.VCol(cols=6):
                v3.VBtn("Export report", id="btn-report", click=self.report_clicked, block=True)
        html.Div(f"active time {{{{ {p.active_time} }}}}", id="active-time", v_show=(p.log_running,))
