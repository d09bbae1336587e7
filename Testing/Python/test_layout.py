"""The package's rooms import only the rooms below them, and no module imports itself back through others.

Rooms, lowest first: foundations (errors, atomic), engine, volumeio, evaluation, study, client, server, cli.  The
client is special: Slicer and the browser app import it, so it may use the foundations only (no torch, no engine).
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "MedSAMSlicer" / "MedSAMSlicerLib"
ROOMS = ["", "engine", "volumeio", "pacs", "evaluation", "study", "client", "server", "cli"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every MedSAMSlicerLib module ``path`` imports, resolved to a module name (a package counts as itself)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "MedSAMSlicerLib":
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if module_path(candidate) else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "MedSAMSlicerLib")
    found.discard(name)
    return found


def module_path(name: str) -> Path | None:
    base = LIB.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (LIB / parts[1]).is_dir()) else ""


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in LIB.rglob("*.py")}


def test_every_room_is_known():
    rooms = {room(name) for name in graph()}
    assert rooms <= set(ROOMS), rooms - set(ROOMS)


def test_rooms_import_only_rooms_below():
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            if target == "MedSAMSlicerLib":
                continue
            if ROOMS.index(room(target)) > ROOMS.index(room(name)):
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_client_uses_only_the_foundations():
    wrong = [f"{name} -> {target}" for name, targets in graph().items() if room(name) == "client"
             for target in targets if room(target) not in ("", "client")]
    assert not wrong, wrong


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in edges.get(node, ()):
            if target.endswith("__init__") or target not in edges:
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target] if target in stack else [node, target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing its own modules is not a cycle worth failing on
    cycles = [c for c in cycles if not any(edges.get(m) is None for m in c)]
    assert not cycles, cycles
