"""The connection to the engine service, for any front end and without Qt or threads.

Two modes:

- **local**: :meth:`EngineLink.start_local` starts ``python -m MedSAMSlicerLib.cli serve --port 0`` as a child
  process (in Slicer ``python`` is ``PythonSlicer``, run in Slicer's start-up environment), with its output going to
  a log file, not a pipe: a pipe needs a reader thread, and Slicer's Python must not run one (PythonQt holds the GIL
  while Slicer idles, so a full pipe would stall the engine).  The child prints its URL as the first line of that
  file and writes a fresh token into a private folder; :meth:`EngineLink.poll_start` (called from the front end's
  timer) picks both up without waiting.  The child stops with :meth:`EngineLink.stop`, at interpreter exit, and by
  itself when its parent process is gone (``--parent-pid``).
- **remote**: :meth:`EngineLink.connect_remote` takes a URL and an API key; :meth:`EngineLink.test_connection`
  answers in one short request with a sentence for the user.

``EngineLink.client`` is the :class:`MedSAMSlicerLib.client.EngineClient` the MRML logic talks to.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from MedSAMSlicerLib.errors import EngineUnavailable, MedSAMError

log = logging.getLogger(__name__)

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder holding MedSAMSlicerLib/ and this package
START_TIMEOUT = 120.0  # seconds for the child to print its URL (imports only; the model loads after)
CHECK_TIMEOUT = 0.05  # seconds: one connection-check request, made from a GUI timer (audit R10)
CHECK_POLLS = 30  # failed check requests before "not reachable" (about 3 s at the panel's 100 ms)
STOP_GRACE = 5.0  # seconds a stopped child has to exit after terminate() before it is killed


class ConnectionCheck:
    """*Test connection* without waiting on the GUI thread: each :meth:`poll` makes at most one request of at most
    ``CHECK_TIMEOUT``; one that times out or fails is retried at the next poll, ``CHECK_POLLS`` times in all."""

    def __init__(self, client, polls: int = CHECK_POLLS) -> None:
        self.client = client
        self.left = polls
        self.health: Optional[dict] = None
        self.last_error = ""
        self.result = ""  # the sentence for the user, once known

    def poll(self) -> str:
        """"" while the answer is pending, else one sentence: reachable and ready, loading, or why not."""
        if self.result:
            return self.result
        if self.client is None:
            self.result = "not connected: choose Local, or enter a server URL and click Test connection"
            return self.result
        try:
            if self.health is None:
                self.health = self.client.health(timeout=CHECK_TIMEOUT)
                if not self.health.get("ready"):
                    self.result = f"reachable, still loading: {self.health.get('loading') or 'the model'}"
                return self.result  # "" when ready: /info is the next poll's single request
            info = self.client.info(timeout=CHECK_TIMEOUT)
        except EngineUnavailable as error:  # timed out or no connection: retried
            self.last_error = str(error)
            self.left -= 1
            if self.left <= 0:
                self.result = f"not reachable: {error}"
            return self.result
        except MedSAMError as error:  # /health needs no key; /info does: a wrong key shows here
            self.result = f"reachable, but refused: {error}"
            return self.result
        self.result = f"connected: {info.get('model', '?')} on {info.get('device', '?')} ({info.get('backend', '?')})"
        return self.result


class EngineLink:
    def __init__(self) -> None:
        self.client = None  # EngineClient once connected
        self.mode = ""  # "local" or "remote"
        self.process: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None
        self._folder: Optional[str] = None
        self._started = 0.0
        self._stopping: list = []  # (process, terminated at): children told to stop, killed after STOP_GRACE
        self.check: Optional[ConnectionCheck] = None  # a Test connection under way

    # -- local --------------------------------------------------------------------------------------------------------
    def start_local(self, python: Optional[str] = None, args: Sequence[str] = ("--device", "auto"),
                    env: Optional[dict] = None, extra_paths: Sequence[str] = (),
                    log_dir: Optional[str] = None) -> None:
        """Start the child engine; returns at once (``poll_start`` says when it answers).

        ``extra_paths``: folders put first on the child's ``PYTHONPATH`` (the private engine packages folder).
        """
        self.stop(wait=False)  # a previous child exits meanwhile (reap); the new one gets its own port
        self._folder = tempfile.mkdtemp(prefix="medsam-engine-")  # mode 0700: token readable by this user only
        token_file = os.path.join(self._folder, "token")
        self.log_path = Path(log_dir or self._folder) / "engine.log"
        command = [python or sys.executable, "-u", "-m", "MedSAMSlicerLib.cli", "serve", "--port", "0",
                   "--token-file", token_file, "--parent-pid", str(os.getpid()), *args]
        environment = dict(env if env is not None else os.environ)
        paths = [*extra_paths, PACKAGE_ROOT, environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        environment["PYTHONUNBUFFERED"] = "1"
        kwargs = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else \
            {"start_new_session": True}
        with open(self.log_path, "w", encoding="utf-8") as log_file:  # the child has its own copy once started
            try:
                self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                                stderr=subprocess.STDOUT, env=environment, **kwargs)
            except OSError as error:
                raise EngineUnavailable(f"cannot start the engine with {command[0]}: {error}") from None
        self.mode, self._started = "local", time.monotonic()
        atexit.register(self.stop)

    def poll_start(self, timeout: float = START_TIMEOUT) -> bool:
        """True once the child answered with its URL (``client`` is set); raises when it died or took too long."""
        if self.client is not None:
            return True
        if self.process is None:
            raise EngineUnavailable("the local engine was not started")
        url = self._url_from_log()
        if url is None:
            if self.process.poll() is not None:
                raise EngineUnavailable(f"the engine stopped at start-up: {self.last_log_line() or 'no output'} "
                                        f"(log: {self.log_path})")
            if time.monotonic() - self._started > timeout:
                self.stop()
                raise EngineUnavailable(f"the engine did not start within {timeout:g} s (log: {self.log_path})")
            return False
        from MedSAMSlicerLib.client import EngineClient, read_token_file

        token = read_token_file(os.path.join(self._folder, "token"))
        client = EngineClient(url, token)
        client.process = self.process  # the logic notices a dead child at once
        self.client = client
        return True

    def start_local_and_wait(self, python: Optional[str] = None, args: Sequence[str] = ("--device", "cpu"),
                             timeout: float = START_TIMEOUT, **kwargs):
        """Scripts and tests: start and block until the child answers (the model may still be loading)."""
        self.start_local(python, args, **kwargs)
        deadline = time.monotonic() + timeout
        while not self.poll_start(timeout):
            if time.monotonic() > deadline:
                raise EngineUnavailable("the engine did not start in time")
            time.sleep(0.05)
        return self.client

    def _url_from_log(self) -> Optional[str]:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as stream:
                for line in stream:
                    if line.startswith(("http://", "https://")):
                        return line.strip()
        except OSError:
            return None
        return None

    def last_log_line(self) -> str:
        try:
            lines = [line.strip() for line in Path(self.log_path).read_text(errors="replace").splitlines()]
        except (OSError, TypeError):
            return ""
        return next((line for line in reversed(lines) if line), "")

    # -- remote -------------------------------------------------------------------------------------------------------
    def connect_remote(self, url: str, api_key: str = "") -> None:
        from MedSAMSlicerLib.client import EngineClient

        self.stop(wait=False)
        if not url.strip():
            raise EngineUnavailable("enter the engine server's URL (for example http://gpu-server:8765) under Model")
        self.client = EngineClient(url.strip(), api_key.strip() or None)
        self.mode = "remote"

    def begin_check(self) -> ConnectionCheck:
        """Start a *Test connection* that the front end's timer advances (``check.poll()``), never waiting."""
        self.check = ConnectionCheck(self.client)
        return self.check

    def test_connection(self, timeout: float = 2.0) -> str:
        """Scripts: one sentence for the user (blocks up to twice ``timeout``; front ends use ``begin_check``)."""
        if self.client is None:
            return "not connected: choose Local, or enter a server URL and click Test connection"
        try:
            health = self.client.health(timeout=timeout)
        except MedSAMError as error:
            return f"not reachable: {error}"
        if not health.get("ready"):
            return f"reachable, still loading: {health.get('loading') or 'the model'}"
        try:
            info = self.client.info(timeout=timeout)
        except MedSAMError as error:  # /health needs no key; /info does: a wrong key shows here
            return f"reachable, but refused: {error}"
        return f"connected: {info.get('model', '?')} on {info.get('device', '?')} ({info.get('backend', '?')})"

    # -- lifetime -----------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, wait: bool = True) -> None:
        """Stop a local child (terminate, then kill after ``STOP_GRACE``) and forget the connection.  ``wait=False``
        (a GUI slot): return at once; :meth:`reap`, called from the front end's timer, kills it if it lingers."""
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection must not stop the shutdown
                log.debug("engine connection not closed cleanly", exc_info=True)
        process, self.process = self.process, None
        self.check = None
        if process is not None and process.poll() is None and not wait:
            process.terminate()
            self._stopping.append((process, time.monotonic()))
        elif process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.mode = ""

    def reap(self) -> bool:
        """Kill children told to stop more than ``STOP_GRACE`` ago; True while some are still exiting.  No wait."""
        still = []
        for process, since in self._stopping:
            if process.poll() is not None:
                continue
            if time.monotonic() - since > STOP_GRACE:
                process.kill()
            still.append((process, since))
        self._stopping = still
        return bool(still)
