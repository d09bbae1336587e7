"""Where packages go (MedSAMSlicerLogic/dependencies.py): Slicer's Python needs only the client's packages, the
engine's go into a private folder through pip child processes that the front end polls; a failure is one message."""

import sys
import time

import pytest

from MedSAMSlicerLogic import dependencies


def test_slicer_side_needs_only_the_client_packages():
    assert [p.module for p in dependencies.CLIENT_PACKAGES] == ["numpy", "requests"]
    assert dependencies.missing_client_packages() == []  # both ship with Slicer (and are here)


def test_presence_is_looked_up_in_the_private_folder(tmp_path):
    assert not dependencies.is_installed("medsam_probe_package", [str(tmp_path)])
    (tmp_path / "medsam_probe_package").mkdir()
    (tmp_path / "medsam_probe_package" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    assert dependencies.is_installed("medsam_probe_package", [str(tmp_path)])  # found, not imported


def test_install_commands_target_the_private_folder(tmp_path):
    missing = [p for p in dependencies.ENGINE_PACKAGES if p.module in ("torch", "scipy")]
    commands = dependencies.install_commands("/opt/Slicer/bin/PythonSlicer", str(tmp_path), missing)
    assert len(commands) == 2  # torch on its own (its index), the others after
    for command in commands:
        assert command[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "pip", "install"]
        assert command[command.index("--target") + 1] == str(tmp_path)
    assert "torch>=2.1" in commands[0] and "scipy>=1.10" in commands[1]
    text = dependencies.consent_text(missing, str(tmp_path))
    assert str(tmp_path) in text and "Slicer's own Python packages are not changed" in text


def wait(install):
    for _ in range(600):
        if install.poll():
            return True
        time.sleep(0.05)
    raise AssertionError("the install never finished")


def test_engine_install_runs_steps_and_reports_a_failure_once(tmp_path):
    ok = [sys.executable, "-c", "print('step done')"]
    install = dependencies.EngineInstall([ok, ok], str(tmp_path / "log.txt"))
    assert wait(install) and install.step == 2
    assert (tmp_path / "log.txt").read_text().count("\nstep done\n") == 2

    bad = [sys.executable, "-c", "import sys; print('ERROR: No matching distribution found for torch'); sys.exit(1)"]
    failing = dependencies.EngineInstall([bad, ok], str(tmp_path / "bad.txt"))
    with pytest.raises(dependencies.InstallFailed) as raised:
        wait(failing)
    message = str(raised.value)
    assert "No matching distribution found for torch" in message and str(tmp_path / "bad.txt") in message
    assert "\n" not in message and failing.step == 0  # the second step never ran


def test_every_engine_dependency_of_the_package_is_installed_for_slicer():
    """The engine that Slicer starts runs from the private folder: every runtime dependency in pyproject.toml must be
    in ENGINE_PACKAGES (or be one of the client's packages that Slicer ships), else `serve` fails there."""
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    wanted = {re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower() for spec in project["project"]["dependencies"]}
    listed = {re.split(r"[<>=!~ \[]", p.requirement, maxsplit=1)[0].lower()
              for p in (*dependencies.ENGINE_PACKAGES, *dependencies.CLIENT_PACKAGES)}
    assert wanted - listed == set()


def test_the_engine_gets_the_weights_folder_under_the_name_it_reads():
    """The panel hands the engine a checkpoint folder outside the extension (audit R9) in this variable."""
    from MedSAMSlicerLib.engine import weights

    assert dependencies.WEIGHTS_VARIABLE == weights.WEIGHTS_ENV
