"""Start engine after an install (audit W4), with real processes: a real child for the install step, then the real
engine (``medsam-slicer serve``) started by the sequence itself, polled the way the panel's timer polls it.

Before the fix the start after an install hung on "the action that triggered it"; *Start engine* has none, so the
install ended, the status line kept "Installing: ..." and no engine started.  ``EngineSetup`` now starts the engine
after any install and announces it once.
"""

from __future__ import annotations

import sys
import time

import pytest

from MedSAMSlicerLogic.dependencies import EngineInstall, InstallFailed
from MedSAMSlicerLogic.engine_link import EngineLink
from MedSAMSlicerLogic.engine_setup import EngineSetup


def poll_until(setup, wanted: str, polls: int = 3000) -> list:
    states = []
    for _ in range(polls):
        state = setup.poll()
        if not states or states[-1] != state:
            states.append(state)
        if state == wanted:
            return states
        time.sleep(0.05)  # the panel's timer period is 100 ms
    raise AssertionError(f"never {wanted}: {states}, status {setup.status!r}")


def test_start_engine_after_its_install_starts_the_engine_and_says_so(tmp_path):
    link = EngineLink()
    starts = []

    def start_engine():
        starts.append(1)
        link.start_local(args=("--device", "cpu", "--cache-dir", str(tmp_path / "cache")), log_dir=str(tmp_path))

    setup = EngineSetup(link, start_engine)
    step = [sys.executable, "-c", "print('Successfully installed torch-0')"]  # a real child in pip's place
    setup.begin_install(EngineInstall([step], str(tmp_path / "install.log")))
    assert setup.busy and setup.poll() in ("installing", "starting")
    try:
        states = poll_until(setup, "ready")
        assert states[-2:] == ["starting", "ready"] and starts == [1]  # started once, by the sequence itself
        assert link.client is not None and link.client.health(timeout=5)["status"] in ("ok", "loading")
        assert setup.pop_announcement() == "Engine started; loading the model"
        assert setup.pop_announcement() == "" and setup.poll() == "ready"  # said once
        assert not setup.busy
    finally:
        link.stop()


def test_a_failed_install_is_reported_once_and_starts_nothing(tmp_path):
    link = EngineLink()
    setup = EngineSetup(link, lambda: pytest.fail("the engine must not start after a failed install"))
    failing = [sys.executable, "-c", "import sys; print('ERROR: No matching distribution found for torch'); "
                                     "sys.exit(1)"]
    setup.begin_install(EngineInstall([failing], str(tmp_path / "install.log")))
    with pytest.raises(InstallFailed, match="No matching distribution"):
        poll_until(setup, "never")
    assert setup.poll() == "idle" and not setup.busy and link.process is None


# -- R10: no slot waits on the GUI thread -------------------------------------------------------------------------
# The proof is not a stopwatch (no timed assertions): a request's own timeout is named in the error the client
# raises, so each check below shows the bound a poll used, against a real engine that does not answer.


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP makes the real engine stop answering (POSIX only)")
def test_test_connection_and_stop_never_wait_for_a_slow_engine(tmp_path):
    import os
    import signal

    from MedSAMSlicerLogic.engine_link import CHECK_POLLS, CHECK_TIMEOUT, ConnectionCheck

    link = EngineLink()
    link.start_local_and_wait(args=("--device", "cpu", "--cache-dir", str(tmp_path / "cache")), log_dir=str(tmp_path))
    process = link.process
    try:
        os.kill(process.pid, signal.SIGSTOP)  # a real engine that answers slowly: connected, but silent
        check = link.begin_check()
        assert check.poll() == ""  # pending, not the answer: this poll did not wait for the engine
        assert f"within {CHECK_TIMEOUT:g} s" in check.last_error  # the one request it made: 50 ms at most
        for _ in range(CHECK_POLLS - 2):
            assert check.poll() == ""
        assert check.poll().startswith("not reachable: ")  # after CHECK_POLLS short tries, one line
        os.kill(process.pid, signal.SIGCONT)  # the engine answers again: a new check (a new click) gets the answer
        check, answer = ConnectionCheck(link.client, polls=200), ""  # generous: the engine first drains the backlog
        for _ in range(200):
            answer = check.poll()
            if answer:
                break
            time.sleep(0.05)
        assert answer.startswith(("reachable", "connected")), answer

        os.kill(process.pid, signal.SIGSTOP)
        link.stop(wait=False)  # switching engine mode: terminate, never wait (SIGTERM stays pending while stopped)
        assert process.poll() is None and link.process is None and link.client is None
        assert link.reap()  # still exiting: the timer keeps reaping
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()


def test_test_connection_to_an_unreachable_engine_ends_with_one_line():
    from MedSAMSlicerLib.client import EngineClient
    from MedSAMSlicerLogic.engine_link import CHECK_POLLS, ConnectionCheck

    check = ConnectionCheck(EngineClient(f"http://127.0.0.1:{free_port()}", None))  # nothing listens there
    answers = [check.poll() for _ in range(CHECK_POLLS)]
    assert answers[:-1] == [""] * (CHECK_POLLS - 1)  # each poll one short try, retried by the next
    assert answers[-1].startswith("not reachable: ") and "\n" not in answers[-1]
