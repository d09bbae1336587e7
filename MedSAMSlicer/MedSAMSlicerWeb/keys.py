"""The Slicer panel's shortcuts (``MedSAMSlicerLogic.shortcuts``) in the browser: one window-level key listener.

The browser reports ``KeyboardEvent.code`` ("KeyB") with the modifier flags; the table's Qt spelling ("Ctrl+Alt+B")
is turned into the same form here, so the browser and the Slicer panel can never disagree on a key.
"""

from __future__ import annotations

from MedSAMSlicerLogic.shortcuts import key_sequences, normalized


def browser_key(ctrl: bool, alt: bool, shift: bool, code: str) -> str:
    """A browser key event in the table's spelling: (True, True, False, "KeyB") -> "Ctrl+Alt+B"."""
    key = code[3:] if code.startswith("Key") else code[5:] if code.startswith("Digit") else code
    parts = [name for name, on in (("Ctrl", ctrl), ("Alt", alt), ("Shift", shift)) if on]
    return normalized("+".join(parts + [key]))


def action_for(ctrl: bool, alt: bool, shift: bool, code: str) -> str | None:
    pressed = browser_key(ctrl, alt, shift, code)
    return next((action for action, keys in key_sequences().items() if normalized(keys) == pressed), None)


# Sent to the page once: every Ctrl+Alt key goes to the server's "on_key" trigger (the server looks it up), and the
# browser's own use of it is prevented only when it is one of ours.
LISTENER_JS = (
    "window.addEventListener('keydown', (e) => {"
    " if (!(e.ctrlKey && e.altKey) || ['Control','Alt','Shift'].includes(e.key)) return;"
    " const ours = %s; const k = e.code.replace(/^Key|^Digit/, '');"
    " if (ours.includes(k)) { e.preventDefault(); trigger('on_key', [e.ctrlKey, e.altKey, e.shiftKey, e.code]); }"
    "})"
)


def listener_js() -> str:
    letters = sorted({normalized(keys).split("+")[-1] for keys in key_sequences().values()})
    return LISTENER_JS % ("[" + ",".join(f"'{k}'" for k in letters) + "]")
