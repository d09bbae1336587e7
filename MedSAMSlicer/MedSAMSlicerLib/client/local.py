"""Starting a private engine server as a child process (what Slicer and ``--server local`` do).

The child is ``python -m MedSAMSlicerLib.cli serve --port 0 --token-file <private folder>/token``: it binds a free
loopback port, prints its URL as the first stdout line, and writes a fresh token (mode 0600) that only this user can
read.  It exits when we call :func:`stop_process`, at our exit (atexit), or when it notices its parent is gone.
"""

from __future__ import annotations

import atexit
import collections
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from ..errors import EngineUnavailable

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding MedSAMSlicerLib/


def _drain(stream, keep: collections.deque) -> None:
    """Read a child's pipe to its end so it never blocks on a full pipe; keep the last lines for error messages."""
    for line in iter(stream.readline, ""):
        keep.append(line.rstrip())
    stream.close()


def start_local_server(cls, python: str | None, args: Sequence[str], startup_timeout: float):
    folder = tempfile.mkdtemp(prefix="medsam-client-")  # mode 0700: the token is readable by this user only
    token_file = os.path.join(folder, "token")
    command = [python or sys.executable, "-m", "MedSAMSlicerLib.cli", "serve", "--port", "0",
               "--token-file", token_file, "--parent-pid", str(os.getpid()), *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise EngineUnavailable(f"cannot start the engine with {command[0]}: {error}") from None
    errors: collections.deque = collections.deque(maxlen=20)
    threading.Thread(target=_drain, args=(process.stderr, errors), daemon=True, name="engine-stderr").start()
    url = _first_line(process, startup_timeout, errors)
    threading.Thread(target=_drain, args=(process.stdout, collections.deque(maxlen=20)), daemon=True,
                     name="engine-stdout").start()
    try:
        token = Path(token_file).read_text().strip()
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the server read or wrote it already; no copy stays on disk
    client = cls(url, token)
    client.process = process
    client.process_errors = errors
    atexit.register(stop_process, process)
    client.health(timeout=startup_timeout)
    return client


def _first_line(process: subprocess.Popen, timeout: float, errors: collections.deque) -> str:
    deadline = time.monotonic() + timeout
    stdout = process.stdout
    assert stdout is not None, "the child is started with stdout=PIPE"
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stdout], [], [], 0.1)
        if ready:
            line = stdout.readline().strip()
            if line.startswith("http"):
                return line
            if not line and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    stop_process(process)
    time.sleep(0.1)
    last = next((line for line in reversed(errors) if line.strip()), "")
    if process.returncode is not None and last:
        raise EngineUnavailable(f"the engine did not start: {last.removeprefix('medsam-slicer: ')}")
    raise EngineUnavailable(f"the engine did not print its address within {timeout:g} s")


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
