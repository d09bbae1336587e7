"""Install the engine's packages, then start the local engine, then say so: one non-blocking step per poll.

The panel's *Start engine* button and its actions (Segment slice, Propagate) share this sequence.  Before, the start
after an install was chained to "the action that triggered it", and *Start engine* has no action: the install
finished, the timer stopped, the status line still said "Installing: ..." and the engine never started (audit W4).
Here the start after an install belongs to the sequence itself, whatever the click was.

No Qt and no waiting: the front end's timer calls :meth:`EngineSetup.poll` (each call is a ``Popen.poll`` and a
small file read) and shows :attr:`EngineSetup.status`.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Optional

from .dependencies import EngineInstall


class SetupState(str, Enum):
    """What :meth:`EngineSetup.poll` says (a ``str`` enum: equal to the plain strings)."""

    INSTALLING = "installing"
    STARTING = "starting"
    READY = "ready"  # the engine answers
    IDLE = "idle"  # nothing under way, no engine

    def __str__(self) -> str:
        return self.value


class EngineSetup:
    """``link``: the :class:`.engine_link.EngineLink`; ``start_engine()``: starts the local engine without waiting
    (the front end's ``startLocalEngine(wait=False)`` with the device and model chosen at the click)."""

    def __init__(self, link, start_engine: Callable[[], None]) -> None:
        self.link = link
        self.start_engine = start_engine
        self.install: Optional[EngineInstall] = None
        self.status = ""  # one line for the status label
        self._announced = False  # "engine started" said once per start
        self.announcement = ""  # that line, until the front end takes it (pop_announcement)

    def begin_install(self, install: EngineInstall) -> None:
        self.install = install
        self.status = "Installing the engine's packages (a few minutes)..."

    def begin_start(self) -> None:
        self.start_engine()
        self._announced = False
        self.status = "Starting the engine..."

    @property
    def busy(self) -> bool:
        return self.install is not None or (self.link.process is not None and self.link.client is None)

    def poll(self) -> SetupState:
        """"installing", "starting", "ready" (the engine answers) or "idle" (nothing under way, no engine).
        Raises (once) when the install or the start failed; the sequence is then over."""
        if self.install is not None:
            install = self.install
            try:
                finished = install.poll()
            except Exception:
                self.install = None
                self.status = ""
                raise
            if not finished:
                self.status = f"Installing: {install.last_line()[:120]}"
                return SetupState.INSTALLING
            self.install = None
            self.begin_start()  # whatever click asked for the install, the engine is what it was for
            self.status = "Packages installed; starting the engine..."
            return SetupState.STARTING
        if self.link.process is not None and self.link.client is None:
            if not self.link.poll_start():
                return SetupState.STARTING
        if self.link.client is None:
            return SetupState.IDLE
        if not self._announced:
            self._announced = True
            self.status = self.announcement = "Engine started; loading the model"
        return SetupState.READY

    def pop_announcement(self) -> str:
        """"Engine started..." once after each start (the front end shows it), then ""."""
        text, self.announcement = self.announcement, ""
        return text

    def cancel(self) -> None:
        if self.install is not None:
            self.install.cancel()
