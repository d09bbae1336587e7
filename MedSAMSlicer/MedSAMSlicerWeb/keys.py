"""The Slicer panel's shortcuts (``MedSAMSlicerLogic.shortcuts``) in the browser: one window-level key listener.

The browser reports ``KeyboardEvent.code`` ("KeyB") with the modifier flags; the table's Qt spelling ("Ctrl+Alt+B")
is turned into the same form here, so the browser and the Slicer panel can never disagree on a key.
"""

from __future__ import annotations

from pathlib import Path

from MedSAMSlicerLogic.shortcuts import key_sequences, normalized


def browser_key(ctrl: bool, alt: bool, shift: bool, code: str) -> str:
    """A browser key event in the table's spelling: (True, True, False, "KeyB") -> "Ctrl+Alt+B"."""
    key = code[3:] if code.startswith("Key") else code[5:] if code.startswith("Digit") else code
    parts = [name for name, on in (("Ctrl", ctrl), ("Alt", alt), ("Shift", shift)) if on]
    return normalized("+".join(parts + [key]))


def action_for(ctrl: bool, alt: bool, shift: bool, code: str) -> str | None:
    pressed = browser_key(ctrl, alt, shift, code)
    return next((action for action, keys in key_sequences().items() if normalized(keys) == pressed), None)


# The page side is static/keys.js (loaded as a trame module script): a template's ``mounted`` expression cannot
# reach ``window``, so the listener is a plain script that calls ``window.trame.trigger('on_key', ...)``.
STATIC = Path(__file__).resolve().parent / "static"
MODULE = {"serve": {"__medsam_slicer": str(STATIC)}, "scripts": ["__medsam_slicer/keys.js"]}
