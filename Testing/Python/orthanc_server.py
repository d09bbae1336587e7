"""A real PACS for tests: Orthanc with its DICOMweb plugin (Debian packages ``orthanc`` and ``orthanc-dicomweb``),
on a free loopback port, with a temporary storage folder and a generated user and password.  Skips with one line
when Orthanc is not installed (``.ci/setup`` installs it where apt works)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicomweb_plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []:
            return str(path)
    return None


class Orthanc:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                                  if os.access(p, os.X_OK)), None)
        plugin = dicomweb_plugin()
        if binary is None or plugin is None:
            pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
        self.port = free_port()
        self.user, self.password = "medsam-test", secrets.token_urlsafe(16)
        config = {"Name": "MedSAMSlicerTest", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "storage"), "HttpPort": self.port, "DicomServerEnabled": False,
                  "DicomPort": free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
                  "RegisteredUsers": {self.user: self.password}, "Plugins": [plugin],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT, cwd=folder)
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"dicomweb://127.0.0.1:{self.port}/dicom-web"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-600:]}")
            time.sleep(0.1)

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def upload(self, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            response = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()
