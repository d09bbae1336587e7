"""The engine install resolves torch once, from the intended index, with pip's own resolver (audit W2).

The commands are the ones ``dependencies.install_commands`` builds for Slicer, with ``--dry-run --report`` added:
pip resolves them against PyPI (the one index reachable here; PyTorch's CPU index is not, so the torch step itself
is checked as a command, not resolved).  What must hold:

- the step with "every other package" resolves no torch, no torchvision and no nvidia-* wheel;
- the torch-dependent step (``--no-deps``) installs exactly those packages, and every other dependency they
  declare is resolved by the step before;
- control: the same torch-dependent packages *with* their dependencies do pull torch from PyPI (what the old second
  command did, over the CPU build), so the first two checks can fail.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from MedSAMSlicerLogic import dependencies


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not pypi_reachable(), reason="PyPI is not reachable: pip cannot resolve here")


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def resolve(command: list, report) -> dict:
    """Run ``command`` (a pip install) as a dry run; name -> (version, requires_dist) of what pip would install."""
    dry = command[:4] + ["--dry-run", "--quiet", "--report", str(report)] + command[4:]
    done = subprocess.run(dry, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"):
            (item["metadata"]["version"], item["metadata"].get("requires_dist") or []) for item in installs}


def torch_like(names) -> list:
    return sorted(n for n in names if n in ("torch", "torchvision", "triton") or n.startswith("nvidia-"))


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    target = tmp_path_factory.mktemp("engine-packages")
    return dependencies.install_commands(sys.executable, str(target), list(dependencies.ENGINE_PACKAGES),
                                         torch_elsewhere=False, index_url=dependencies.CPU_INDEX)


def test_the_install_resolves_torch_once_from_the_cpu_index(commands, tmp_path):
    torch_step, others_step, dependents_step = commands
    assert f"--index-url={dependencies.CPU_INDEX}" in torch_step
    assert {name_of(r) for r in torch_step if not r.startswith("-") and "/" not in r} >= {"torch", "torchvision"}
    assert "--no-deps" in dependents_step and "--index-url" not in " ".join(others_step + dependents_step)

    others = resolve(others_step, tmp_path / "others.json")
    assert torch_like(others) == [], f"the step without torch resolves {torch_like(others)} from PyPI"

    dependents = resolve(dependents_step, tmp_path / "dependents.json")
    wanted = {name_of(p.requirement) for p in dependencies.ENGINE_PACKAGES
              if p.module in dependencies.TORCH_DEPENDENTS}
    assert set(dependents) == wanted  # --no-deps: nothing else, torch least of all
    for name, (_, requires) in dependents.items():
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            needed = name_of(requirement)
            if needed in ("torch", "torchvision"):
                continue  # step 1's (or the PyTorch extension's)
            assert needed in others or needed in wanted, f"{name} needs {requirement}, which no step installs"


def test_control_with_their_dependencies_the_dependents_pull_torch_from_pypi(commands, tmp_path):
    *_, dependents_step = commands
    with_deps = [arg for arg in dependents_step if arg != "--no-deps"]
    assert "torch" in resolve(with_deps, tmp_path / "control.json")


def test_with_the_pytorch_extensions_torch_only_the_steps_without_torch_run(commands):
    """Slicer's Python has torch (PyTorch extension): steps 2 and 3 as above (resolved above: no torch), no step 1."""
    target = commands[0][commands[0].index("--target") + 1]
    reused = dependencies.install_commands(sys.executable, target, list(dependencies.ENGINE_PACKAGES),
                                           torch_elsewhere=True, index_url=dependencies.CPU_INDEX)
    assert reused == commands[1:]
