"""The engine's sessions for the volume in use: sent once per content, opened once per (window, slice axis).

A session is keyed by ``(grid key, window, axis)`` (:func:`.volume_nodes.grid_key` says when a volume's voxels or
geometry changed).  One volume at a time: opening a session for another volume forgets the sessions of the previous
one (a CT's voxels are hundreds of MB on the engine).  Opening can be done at once (:meth:`RemoteVolumes.open`, for
scripts) or a step at a time from a GUI timer (:meth:`RemoteVolumes.open_step`, each step at most ``budget``
seconds: hashing, writing the hand-over file a slab at a time, then the engine's own opening job).  The content
fingerprint is kept across engines, so a switch between local and remote engines does not hash the volume again.

No MRML here: the caller copies the voxels out of the scene (:class:`.volume_nodes.VolumeOnGrid`) first.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from MedSAMSlicerLib.errors import EngineUnavailable

from .volume_nodes import VolumeOnGrid

RemoteKey = tuple[tuple, str, str]  # (grid key, window, axis)


class RemoteVolumes:
    """The sessions (``RemoteVolume``) and the openings on their way, for one engine."""

    def __init__(self, engine: Any = None) -> None:
        self.engine = engine
        self._sessions: dict = {}  # (grid key, window, axis) -> RemoteVolume
        self._openings: dict = {}  # (grid key, window, axis) -> VolumeOpening on its way (shared by ops and prefetch)
        self._fingerprints: dict = {}  # grid key -> content fingerprint (hashed once per volume)

    def require_engine(self) -> Any:
        if self.engine is None:
            raise EngineUnavailable("no engine: choose 'Local' or enter a server URL under Model, then try again")
        return self.engine

    def set_engine(self, engine: Any) -> None:
        """Another engine: its sessions are opened again (the fingerprints stay: the content did not change)."""
        self.engine = engine
        self._sessions = {}
        self.drop_openings()

    def clear(self) -> None:
        """Forget everything (the scene closed)."""
        self._sessions = {}
        self.drop_openings()
        self._fingerprints = {}

    def session(self, remote_key: RemoteKey) -> Any:
        """The open session for ``remote_key``, or None."""
        return self._sessions.get(remote_key)

    def opening(self, remote_key: RemoteKey) -> Any:
        """The opening on its way for ``remote_key`` (its ``message``, ``done``, ``total``), or None."""
        return self._openings.get(remote_key)

    def forget(self, remote_key: RemoteKey) -> None:
        """The engine no longer knows this session (expired, or the engine restarted): open it again next time."""
        self._sessions.pop(remote_key, None)

    def open(self, grid: VolumeOnGrid, key: tuple, window: str, axis: str) -> Any:
        """The engine's session for this volume, window and slice axis (the voxels are sent once per content)."""
        remote_key = (key, window, axis)
        if remote_key not in self._sessions:
            volume = grid.volume
            remote = self.require_engine().open_volume(
                np.asarray(volume.array), volume.spacing, volume.origin, volume.direction, window=window, axis=axis,
                modality=volume.modality)
            self._keep(key, remote_key, remote)
        return self._sessions[remote_key]

    def open_step(self, grid: VolumeOnGrid, key: tuple, window: str, axis: str, budget: float) -> Any:
        """:meth:`open` a step at a time (at most ``budget`` s): the RemoteVolume once open, else None."""
        remote_key = (key, window, axis)
        if remote_key in self._sessions:
            return self._sessions[remote_key]
        opening = self._openings.get(remote_key)
        if opening is None:
            volume = grid.volume
            opening = self.require_engine().start_opening(
                np.asarray(volume.array), volume.spacing, volume.origin, volume.direction, window=window, axis=axis,
                modality=volume.modality, fingerprint=self._fingerprints.get(key))
            self.drop_openings(keep=key)  # one volume at a time
            self._openings[remote_key] = opening
        remote = opening.step(budget)
        if opening.fingerprint:
            self._fingerprints = {key: opening.fingerprint}
        if remote is None:
            return None
        del self._openings[remote_key]
        self._keep(key, remote_key, remote)
        return remote

    def _keep(self, key: tuple, remote_key: RemoteKey, remote: Any) -> None:
        self._sessions = {k: v for k, v in self._sessions.items() if k[0] == key}  # one volume at a time
        self._sessions[remote_key] = remote

    def drop_openings(self, keep: Optional[tuple] = None) -> None:
        """Close the openings of volumes other than ``keep`` (all when None)."""
        for remote_key in [k for k in self._openings if k[0] != keep]:
            self._openings.pop(remote_key).close()  # a half-written hand-over file goes


__all__ = ["RemoteKey", "RemoteVolumes"]
