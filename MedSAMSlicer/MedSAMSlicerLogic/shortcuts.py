"""The module's keyboard shortcuts: one table, read by the panel, the Segment Editor effect, the README and a test.

Plain data (no Qt), so that ``Testing/Python/test_slicer_shortcuts.py`` can check every key against the list of
Slicer's own default shortcuts (``Testing/Python/slicer_default_shortcuts.txt``, gathered from Slicer's sources).

Why Ctrl+Alt: Slicer already uses single letters in the slice views (b, f, g, r, s, t, v), digits and Shift+digits in
Segment Editor, Ctrl+letter/digit in the main window and Ctrl+Shift+letter/arrow in the Markups toolbar and
Sequences; Ctrl+Alt+letter is free in all of them.  T, L and D are left out: Linux desktops take Ctrl+Alt+T/L/D.
The shortcuts only exist while the panel (or the effect) is shown, so they never fire from a hidden module.
"""

from __future__ import annotations

# action -> (key sequence in Qt's portable text form, what it does)
SHORTCUTS = {
    "drawBox": ("Ctrl+Alt+B", "draw a box on the slice shown (new object)"),
    "addKeyBox": ("Ctrl+Alt+K", "add a key box on another slice of the same object"),
    "segmentSlice": ("Ctrl+Alt+S", "segment the box's slice"),
    "propagate": ("Ctrl+Alt+P", "propagate in 3D"),
    "accept": ("Ctrl+Alt+A", "accept the object (the next box starts a new segment)"),
    "undo": ("Ctrl+Alt+U", "undo the last MedSAM operation (in Segment Editor: Segment Editor's Undo)"),
    "cancel": ("Ctrl+Alt+X", "cancel the running operation"),
    # Review of a propagated object (object_review.py): "this slice" is the one the red view shows.
    "acceptSlice": ("Ctrl+Alt+O", "review: accept this slice (no later correction changes it)"),
    "wrongSlice": ("Ctrl+Alt+W", "review: this slice is wrong (listed first for a box or a hand edit)"),
    "endHere": ("Ctrl+Alt+E", "review: the object ends here (this slice and those beyond are cleared)"),
    "nextDoubtful": ("Ctrl+Alt+N", "review: go to the next doubtful slice"),
}

# action -> the panel's button (MedSAMSlicer.ui).  The panel appends the key to the button's tooltip at set-up, so
# the .ui holds no key literal and a changed key cannot leave a stale tooltip (test_slicer_shortcuts checks both).
BUTTONS = {
    "drawBox": "drawBoxButton",
    "addKeyBox": "addKeyBoxButton",
    "segmentSlice": "segmentSliceButton",
    "propagate": "propagateButton",
    "accept": "acceptButton",
    "undo": "undoButton",
    "cancel": "cancelButton",
    "acceptSlice": "acceptSliceButton",
    "wrongSlice": "wrongSliceButton",
    "endHere": "endHereButton",
    "nextDoubtful": "nextDoubtfulButton",
}

_MODIFIER_ORDER = ("Ctrl", "Alt", "Shift", "Meta")
_ALIASES = {"Control": "Ctrl", "Option": "Alt", "Cmd": "Ctrl", "Command": "Ctrl"}


def normalized(keys: str) -> str:
    """A key sequence in one spelling: modifiers in Qt's order, key upper-cased ("ctrl+shift+z" -> "Ctrl+Shift+Z")."""
    keys = keys.strip()
    if keys.endswith("+"):  # the key itself is "+" ("+", "Ctrl++")
        parts = [p.strip() for p in keys[:-1].split("+") if p.strip()] + ["+"]
    else:
        parts = [p.strip() for p in keys.split("+") if p.strip()]
    modifiers = {_ALIASES.get(p.capitalize(), p.capitalize()) for p in parts[:-1]}
    unknown = modifiers - set(_MODIFIER_ORDER)
    if unknown:
        raise ValueError(f"unknown modifier in {keys!r}: {sorted(unknown)}")
    key = parts[-1]
    key = key.upper() if len(key) == 1 else key.capitalize()
    return "+".join([m for m in _MODIFIER_ORDER if m in modifiers] + [key])


def key_sequences() -> dict[str, str]:
    """action -> key sequence, as the front ends pass it to ``qt.QKeySequence``."""
    return {action: keys for action, (keys, _) in SHORTCUTS.items()}


def tooltip_with_key(tooltip: str, action: str) -> str:
    """A button's tooltip with its shortcut from the table: "Segment the slice (Ctrl+Alt+S)"."""
    return f"{tooltip} ({SHORTCUTS[action][0]})" if tooltip else SHORTCUTS[action][0]
