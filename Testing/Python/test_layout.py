"""The package's rooms import only the rooms below them, and no module imports itself back through others.

Rooms, lowest first: foundations (errors, atomic, paths), protocol, engine, volumeio, evaluation, study, client,
server, cli.  The protocol (the values that cross rooms and the wire) stands on numpy, the standard library and the
foundations only.  The client is special: Slicer and the browser app import it, so it may use the foundations and
the protocol only (no torch, no engine); the server shares the protocol with it but never imports it.  The Slicer
logic (``MedSAMSlicerLogic``) uses the client, the protocol and the study room, never the engine.  Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "MedSAMSlicer" / "MedSAMSlicerLib"
ROOMS = ["", "protocol", "engine", "volumeio", "pacs", "evaluation", "study", "client", "server", "cli"]
LOGIC = LIB.parent / "MedSAMSlicerLogic"


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


def test_client_uses_only_the_foundations_and_the_protocol():
    wrong = [f"{name} -> {target}" for name, targets in graph().items() if room(name) == "client"
             for target in targets if room(target) not in ("", "protocol", "client")]
    assert not wrong, wrong


def test_server_does_not_import_the_client():
    wrong = [f"{name} -> {target}" for name, targets in graph().items() if room(name) == "server"
             for target in targets if room(target) == "client"]
    assert not wrong, wrong


def test_protocol_stands_on_numpy_the_standard_library_and_the_foundations():
    wrong = []
    for path in (LIB / "protocol").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            wrong += [f"{path.name}: {top}" for top in tops
                      if top not in sys.stdlib_module_names and top not in ("numpy", "__future__")]
    wrong += [f"{name} -> {target}" for name, targets in graph().items() if room(name) == "protocol"
              for target in targets if room(target) not in ("", "protocol")]
    assert not wrong, wrong


def in_fresh_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, sys.argv[1]); {code}", str(LIB.parent)],
                   check=True)


def test_protocol_loads_nothing_heavy():
    """In a fresh interpreter: the contract loads no model, HTTP or file-format package."""
    in_fresh_python("import MedSAMSlicerLib.protocol as p; p.SessionSpec().to_json(); "
                    "bad = [m for m in ('torch', 'scipy', 'requests', 'fastapi', 'pydantic', 'SimpleITK', "
                    "'MedSAMSlicerLib.engine', 'MedSAMSlicerLib.client') if m in sys.modules]; assert not bad, bad")


def test_engine_face_loads_lazily():
    """``engine``'s re-exports load on first use: a light module (the panel reads the model manifest) stays light."""
    in_fresh_python("import MedSAMSlicerLib.engine.weights; from MedSAMSlicerLib.engine import Box, Volume, axes; "
                    "assert 'torch' not in sys.modules; "
                    "from MedSAMSlicerLib.engine import VolumeSession, propagation_options; "
                    "assert 'torch' in sys.modules")


def test_slicer_logic_uses_the_client_protocol_and_study_never_the_engine():
    allowed = ("", "protocol", "client", "study")
    wrong = [f"{path.name} -> {target}" for path in LOGIC.glob("*.py") for target in imported_modules(path)
             if target != "MedSAMSlicerLib" and room(target) not in allowed]
    assert not wrong, wrong
    assert any(room(t) == "protocol" for path in LOGIC.glob("*.py") for t in imported_modules(path))


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
