"""Review in the browser: corrective boxes, accept / wrong / ends here, next doubtful slice (a logic/UI pair).

``ReviewActions`` is what the buttons and keys do, over the shared ``MedSAMSlicerLogic.object_review.ObjectReview``
(the engine keeps the object; a corrective box recomputes only its stretch; accepted and hand-edited slices are
locked there).  ``ReviewPanel`` is the drawer's part: buttons that emit signals, the doubtful slices shown.  The app
connects them with a few hooks (``app.WebApp``): with review on, Propagate starts a correctable object, a box
dragged on a slice of it (Draw box or Key box) is a corrective box, Undo undoes the last review action, and the
manual tools' edits are sent to the engine as hand edits.  "This slice" is the slice the red view shows.

Nothing here is writable by the page: the review state is the server's (``ReviewPanelState``, refused from a page
by ``security.StateGate``), and the page's only input is which button or key it pressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from undo_stack import Signal

from MedSAMSlicerLogic.shortcuts import SHORTCUTS

# action of the shortcut table -> ReviewActions method name (the app's key handler looks keys up here)
REVIEW_KEYS = {"acceptSlice": "accept_slice", "wrongSlice": "wrong_slice", "endHere": "end_here",
               "nextDoubtful": "next_doubtful"}


@dataclass
class ReviewPanelState:
    """What the page shows of the review (server-only)."""

    review_mode: bool = False
    review_active: bool = False  # an object is under review
    review_slice: int = -1  # the slice the last "next doubtful" went to
    review_doubtful: list = field(default_factory=list)
    review_locked: list = field(default_factory=list)
    review_wrong: list = field(default_factory=list)


@dataclass
class ReviewHost:
    """What the review needs from the app (its own private helpers, handed over by the app itself)."""

    volume: Callable[[], Any]
    segmentation: Callable[[], Any]
    say: Callable[..., None]  # say(text, action="")
    start: Callable[[Callable[[], Any]], None]  # start an operation the app's timer polls
    show_slice: Callable[[str, list], None]  # scroll a view to the slice through a voxel
    slice_node: Callable[[str], Any]  # a slice view's MRML node


class ReviewActions:
    """The review's buttons and keys.  ``data``: the ``ReviewPanelState`` (``TypedState(...).data``)."""

    def __init__(self, logic, host: ReviewHost, data) -> None:
        from MedSAMSlicerLogic.object_review import ObjectReview

        self.logic, self.host, self.data = logic, host, data
        self.review = ObjectReview(logic)

    @property
    def taking_boxes(self) -> bool:
        """A dragged box is a corrective box (review on, an object under review)."""
        return bool(self.data.review_mode) and self.review.active

    def toggle(self) -> None:
        self.data.review_mode = not self.data.review_mode
        self.host.say(f"review {'on: Propagate makes a correctable object' if self.data.review_mode else 'off'}",
                      action="review_mode")

    def propagate(self, window: str, range_mode: str, stop: bool) -> None:
        volume = self.host.volume()
        self.host.start(lambda: self.review.start(volume, None, self.host.segmentation(), None, window, range_mode,
                                                  stop))

    def corrective_box(self, roi_node) -> None:
        self.host.start(lambda: self.review.corrective_box(self.host.volume(), roi_node))

    def accept_slice(self) -> None:
        index = self.current_slice()
        self.host.start(lambda: self.review.accept_slice(self.host.volume(), index))

    def end_here(self) -> None:
        index = self.current_slice()
        self.host.start(lambda: self.review.end_here(self.host.volume(), index))

    def wrong_slice(self) -> None:
        index = self.current_slice()
        self.review.mark_wrong(index)
        self.refresh()
        self.host.say(f"slice {index} marked wrong: draw a box on it or edit it", action="review_wrong")

    def next_doubtful(self) -> None:
        index = self.review.next_doubtful(self.current_slice())
        if index is None:
            self.host.say("no doubtful slice left", action="review_none")
            return
        grid = self.logic.grid(self.host.volume())
        k, j, i = grid.shape_kji
        self.host.show_slice("Red", [(i - 1) / 2, (j - 1) / 2, index])
        self.data.review_slice = index
        score = self.review.state.scores.get(index) if self.review.state else None
        self.host.say(f"slice {index}" + (f": predicted IoU {score:.2f}" if score is not None else ": marked wrong"),
                      action="review_jump")

    def undo(self) -> None:
        self.host.start(lambda: self.review.undo(self.host.volume()))

    @property
    def handles_undo(self) -> bool:
        return self.review.active and bool(self.review.state and self.review.state.history)

    def end(self) -> None:
        """The object is accepted (or a new one starts): nothing is under review any more."""
        self.review.state = None
        self.review.queue.clear()
        self.refresh()

    def manual_edit(self, slices) -> None:
        if self.taking_boxes:
            self.review.note_manual_edit(self.host.volume(), slices)

    def start_queued(self) -> None:
        """Start a queued hand edit when the logic is free (the app's timer then polls it as any operation)."""
        if self.review.queue and not self.logic.busy:
            pending = self.review.start_queued()
            if pending is not None:
                self.host.start(lambda: pending)

    def refresh(self) -> None:
        state = self.review.state
        self.data.review_active = self.review.active
        self.data.review_doubtful = list(state.doubtful) if state else []
        self.data.review_locked = list(state.locked) if state else []
        self.data.review_wrong = sorted(state.wrong) if state else []

    def current_slice(self) -> int:
        """The slice the red view shows, along the object's axis (k)."""
        from MedSAMSlicerLogic.object_review import view_slice_index

        volume = self.host.volume()
        if volume is None:
            raise ValueError("no volume: load one first")
        return view_slice_index(self.host.slice_node("Red"), volume, self.logic.grid(volume).shape_kji[0])

    def slice_answer(self, index) -> dict:
        """The read-only trigger ``review_slice``: the object's segment on slice ``index`` (packed as the wire does)
        and the review's lists, for a script that checks what the reader sees."""
        from MedSAMSlicerLib.protocol.wire import pack_mask
        from MedSAMSlicerLogic.segments import read_segment, segment_exists

        volume = self.host.volume()
        if volume is None or isinstance(index, bool) or not isinstance(index, int):
            raise ValueError("a slice number")
        shape = self.logic.grid(volume).shape_kji
        if not 0 <= index < shape[0]:
            raise ValueError("the slice is outside the volume")
        plane = np.zeros(shape[1:], dtype=bool)
        node, segment_id = self.host.segmentation(), self.logic.current.segment_id
        if node is not None and segment_id and segment_exists(node, segment_id):
            plane = read_segment(node, segment_id, volume)[index]
        state = self.review.state
        return {"mask": pack_mask(plane), "active": self.review.active,
                "doubtful": list(state.doubtful) if state else [], "locked": list(state.locked) if state else [],
                "wrong": sorted(state.wrong) if state else [], "keys": {str(k): v for k, v in state.keys.items()}
                if state else {}, "range": list(state.slice_range) if state else [None, None]}

    def app_state(self) -> dict:
        return {"review_mode": bool(self.data.review_mode), "review_active": self.review.active,
                "review_slice": int(self.data.review_slice)}


class ReviewPanel(v3.VContainer):
    """The drawer's review part: a toggle, four actions with their keys, the doubtful slices."""

    mode_clicked = Signal()
    accept_slice_clicked = Signal()
    wrong_slice_clicked = Signal()
    end_here_clicked = Signal()
    next_doubtful_clicked = Signal()

    def __init__(self, review, busy: str, **kwargs) -> None:
        super().__init__(classes="pa-0 mt-2", **kwargs)
        r = review.name
        with self:
            v3.VBtn(f"{{{{ {r.review_mode} ? 'Review: on' : 'Review: off' }}}}", id="btn-review-mode",
                    click=self.mode_clicked, block=True, size="small",
                    color=(f"{r.review_mode} ? 'primary' : undefined",))
            with html.Div(v_show=(r.review_active,), id="review"):
                with v3.VRow(dense=True, classes="mt-1"):
                    for label, element_id, signal, action in (
                            ("Accept slice", "btn-accept-slice", self.accept_slice_clicked, "acceptSlice"),
                            ("Slice wrong", "btn-wrong-slice", self.wrong_slice_clicked, "wrongSlice"),
                            ("Ends here", "btn-end-here", self.end_here_clicked, "endHere"),
                            ("Next doubtful", "btn-next-doubtful", self.next_doubtful_clicked, "nextDoubtful")):
                        with v3.VCol(cols=6):
                            v3.VBtn(label, id=element_id, click=signal, block=True, size="small",
                                    disabled=(busy,), title=SHORTCUTS[action][0])
                html.Div(f"doubtful: {{{{ {r.review_doubtful}.join(', ') || 'none' }}}}", id="review-doubtful",
                         classes="text-caption")
                html.Div(f"accepted or edited: {{{{ {r.review_locked}.join(', ') || 'none' }}}}",
                         id="review-locked", classes="text-caption")
                html.Div(f"marked wrong: {{{{ {r.review_wrong}.join(', ') }}}}", v_show=(f"{r.review_wrong}.length",),
                         id="review-wrong", classes="text-caption")

