"""Every shortcut MedSAMSlicer defines is unique and absent from Slicer's default shortcuts, and the front ends
take their keys from the one table (``MedSAMSlicerLogic/shortcuts.py``), never from literals of their own."""

import ast
import re
from pathlib import Path

import xml.etree.ElementTree as ElementTree

from MedSAMSlicerLogic.shortcuts import BUTTONS, SHORTCUTS, key_sequences, normalized, tooltip_with_key

HERE = Path(__file__).resolve().parent
MODULE = HERE.parents[1] / "MedSAMSlicer"
FRONT_ENDS = (MODULE / "MedSAMSlicer.py", MODULE / "MedSAMSlicerEffect" / "SegmentEditorEffect.py")


def slicer_defaults() -> set[str]:
    keys = set()
    for line in (HERE / "slicer_default_shortcuts.txt").read_text().splitlines():
        text = line.split("  #")[0].strip()
        if text and not text.startswith("#"):
            keys.add(normalized(text))
    return keys


def test_the_default_list_is_read():
    defaults = slicer_defaults()
    # A few that must be there (the two that clashed before: Markups' create node and Segment Editor's redo).
    assert {"Ctrl+Shift+A", "Ctrl+Shift+Z", "Ctrl+Z", "Z", "B", "Ctrl+B"} <= defaults
    assert len(defaults) > 80


def test_every_module_shortcut_is_unique_and_not_a_slicer_default():
    ours = [normalized(keys) for keys in key_sequences().values()]
    assert len(ours) == len(set(ours)) == len(SHORTCUTS) >= 7
    assert sorted(set(ours) & slicer_defaults()) == []
    # Bare keys (letters, digits) belong to the slice views and Segment Editor: ours always carry a modifier.
    assert all("+" in keys for keys in ours)


def test_normalized_spellings_agree():
    assert normalized("ctrl+shift+z") == normalized("Shift+Ctrl+Z") == "Ctrl+Shift+Z"
    assert normalized("Ctrl++") == "Ctrl++"


def test_front_ends_use_the_table_and_no_key_literal():
    """No QKeySequence built from a string literal in the panel or the effect: the keys come from the table."""
    for path in FRONT_ENDS:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "QKeySequence":
                assert node.args and not isinstance(node.args[0], ast.Constant), f"{path.name}:{node.lineno}"
        text = path.read_text()
        assert "key_sequences()" in text, f"{path.name} does not read the shortcut table"
        assert not re.search(r"[\"'](Ctrl|Alt|Shift)\+\w", text), f"{path.name} has a key literal"


KEY_LITERAL = re.compile(r"\b(Ctrl|Alt|Shift|Meta|Cmd)\s*\+\s*\S", re.IGNORECASE)


def test_ui_files_hold_no_key_literal():
    """Tooltips once named Ctrl+Shift keys (two of them Slicer's own) while the real keys were Ctrl+Alt (audit W3):
    no .ui string names a key; the panel appends the table's key to each action button's tooltip."""
    ui_files = sorted((MODULE / "Resources").rglob("*.ui"))
    assert ui_files
    for path in ui_files:
        for element in ElementTree.parse(path).iter("string"):
            assert not KEY_LITERAL.search(element.text or ""), f"{path.name}: {element.text!r}"


def test_every_action_button_exists_and_gets_its_key():
    names = {w.get("name") for w in ElementTree.parse(MODULE / "Resources" / "UI" / "MedSAMSlicer.ui").iter("widget")}
    assert set(BUTTONS) == set(SHORTCUTS) and set(BUTTONS.values()) <= names
    assert tooltip_with_key("Segment the slice of the last box", "segmentSlice") == \
        "Segment the slice of the last box (Ctrl+Alt+S)"
    assert "tooltip_with_key(" in (MODULE / "MedSAMSlicer.py").read_text()


def test_readme_table_is_the_shortcut_table():
    readme = (HERE.parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| ([^|]+) \|$", readme, re.MULTILINE))
    assert {normalized(k) for k in rows if "Alt" in k} == {normalized(k) for k in key_sequences().values()}
