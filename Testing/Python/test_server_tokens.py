"""Two engine servers on one machine, neither given ``--token-file``: each writes a token file of its own (named by
its port), so neither overwrites the other's; a client given only the URL finds the right one; each file goes when
its server stops; a token file naming a server that still runs is never overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import REPO


def start_server(config_home: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer"), XDG_CONFIG_HOME=str(config_home))
    return subprocess.Popen([sys.executable, "-m", "MedSAMSlicerLib.cli", "serve", "--port", "0", "--device", "cpu"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def test_two_servers_keep_their_own_tokens(tmp_path, monkeypatch):
    from MedSAMSlicerLib.client import EngineClient, read_token_file
    from MedSAMSlicerLib.server.auth import default_token_file

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    servers = [start_server(tmp_path), start_server(tmp_path)]  # at once: the second starts while the first runs
    try:
        urls = [server.stdout.readline().strip() for server in servers]
        assert all(url.startswith("http://127.0.0.1:") for url in urls), urls
        files = [default_token_file(url) for url in urls]
        assert files[0] != files[1] and all(f.parent == tmp_path / "medsam-slicer" for f in files)
        for file in files:  # written once the port is bound, before the URL is printed
            assert (file.stat().st_mode & 0o777) == 0o600
        tokens = [read_token_file(f) for f in files]
        assert tokens[0] != tokens[1]
        for n, url in enumerate(urls):  # each token opens its own server and only that one
            own = requests.get(f"{url}/volumes/{'0' * 64}", headers={"Authorization": f"Bearer {tokens[n]}"},
                               timeout=60)
            other = requests.get(f"{url}/volumes/{'0' * 64}", headers={"Authorization": f"Bearer {tokens[1 - n]}"},
                                 timeout=60)
            assert own.status_code == 200 and other.status_code == 401
            assert EngineClient(url, read_token_file(default_token_file(url))).request(
                "GET", f"/volumes/{'0' * 64}") == {"present": False}  # what `--server URL` alone reads
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.communicate(timeout=600)
    assert [server.returncode for server in servers] == [0, 0]
    assert not any(f.exists() for f in files)  # each server removed its own file when it stopped


def test_a_token_file_of_a_running_server_is_not_overwritten(tmp_path):
    from MedSAMSlicerLib.errors import OptionError
    from MedSAMSlicerLib.server.auth import claim_default_token_file, release_default_token_file

    path = tmp_path / "server-8765.token"
    path.write_text("x" * 43 + f"\n# pid {os.getppid()}: medsam-slicer serve\n")  # a process that runs: our parent
    with pytest.raises(OptionError, match="still running"):
        claim_default_token_file(path)
    assert path.read_text().startswith("x" * 43)  # untouched

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text("y" * 43 + f"\n# pid {int(dead.stdout)}: medsam-slicer serve\n")  # a server that crashed
    token = claim_default_token_file(path)
    assert token != "y" * 43 and path.read_text().startswith(token)
    release_default_token_file(path)
    assert not path.exists()
