"""DICOMweb client: list studies and series, fetch a series as a volume, store a DICOM SEG back.

- Addresses: ``dicomweb://HOST:PORT/PREFIX/studies/<study>/series/<series>`` (``dicomwebs://`` for HTTPS) names a
  series; the service root is everything before ``/studies`` (Orthanc: ``/dicom-web``).
- Credentials come from a file (``user:password`` on its first line, or the user and the password on two lines;
  the file must not be readable by others) or from the environment (``MEDSAM_PACS_USER`` and
  ``MEDSAM_PACS_PASSWORD``, or ``MEDSAM_PACS_CREDENTIALS`` naming the file) -- never from the command line or the
  address, where ``ps`` and shell histories would show them.
- Every request has a time limit (:data:`DEFAULT_TIMEOUT_S`); a PACS that is down, slow, refuses the password or
  answers an error is one line (:class:`PacsError`, exit code 2).  Nothing here logs patient tags: log lines name
  the PACS and UIDs only.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import MedSAMError, first_line

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 30.0
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PacsError(MedSAMError):
    """The PACS is unreachable, slow, refuses us, or answered something unusable."""


@dataclass(frozen=True)
class SeriesAddress:
    root: str  # http(s)://host:port/prefix (the DICOMweb service root)
    study: str
    series: str

    def __str__(self) -> str:
        return f"{self.root}/studies/{self.study}/series/{self.series}"


def is_dicomweb(text: str) -> bool:
    return str(text).lower().startswith(("dicomweb://", "dicomwebs://"))


def parse_service_url(url: str) -> str:
    """An HTTP(S) service root from ``dicomweb(s)://`` or ``http(s)://`` (credentials in it are refused)."""
    parts = urlsplit(str(url))
    scheme = {"dicomweb": "http", "dicomwebs": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise PacsError(f"{url!r} is not a DICOMweb address; write dicomweb://HOST:PORT/dicom-web (or http(s)://)")
    if parts.username or parts.password:
        raise PacsError("a DICOMweb address must not hold a user name or password (the command line is visible to "
                        "other users); put them in a file (--pacs-credentials) or MEDSAM_PACS_USER/_PASSWORD")
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        raise PacsError(f"{url!r} has an invalid port") from None
    return f"{scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"


def parse_series_address(url: str) -> SeriesAddress:
    root = parse_service_url(url)
    match = re.match(r"^(.*?)/studies/([^/]+)/series/([^/]+)$", root)
    if not match or not _UID.match(match.group(2)) or not _UID.match(match.group(3)):
        raise PacsError(f"{url!r} does not name a series; write dicomweb://HOST:PORT/dicom-web/studies/<study "
                        f"UID>/series/<series UID>")
    return SeriesAddress(*match.groups())


def load_credentials(path: str | os.PathLike | None = None, environ=None) -> tuple[str, str] | None:
    """(user, password) from ``path``, else from the environment; None when neither gives any."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("MEDSAM_PACS_CREDENTIALS")
    if path:
        path = Path(path)
        try:
            info = os.stat(path)
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise PacsError(f"cannot read the PACS credentials file {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise PacsError(f"the PACS credentials file {path} is not text") from None
        if os.name == "posix" and info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            raise PacsError(f"the PACS credentials file {path} is readable by other users; chmod 600 it")
        lines = [line.strip("\r") for line in text.splitlines() if line.strip()]
        if len(lines) == 1 and ":" in lines[0]:
            user, _, password = lines[0].partition(":")
        elif len(lines) == 2:
            user, password = lines
        else:
            raise PacsError(f"the PACS credentials file {path} must hold 'user:password' on one line, or the user "
                            f"and the password on two lines")
        return user.strip(), password
    user, password = environ.get("MEDSAM_PACS_USER"), environ.get("MEDSAM_PACS_PASSWORD")
    if user and password is not None:
        return user, password
    if user or password:
        raise PacsError("set both MEDSAM_PACS_USER and MEDSAM_PACS_PASSWORD (or neither)")
    return None


class Pacs:
    """One DICOMweb service; every call raises :class:`PacsError` with one line on failure."""

    def __init__(self, url: str, credentials: tuple[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.root = parse_service_url(url)
        parts = urlsplit(self.root)
        self.where = f"the PACS at {parts.hostname}{':' + str(parts.port) if parts.port else ''}"
        self.timeout = float(timeout)

        session = requests.Session()
        if credentials is not None:
            session.auth = credentials
        self.client = DICOMwebClient(url=self.root, session=session, timeout=self.timeout)
        # dicomweb-client retries every failure 5 times with exponential waits (30 s and more before a refused
        # connection is reported): one retry, about a second later, covers a passing hiccup
        self.client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=500)

    def _call(self, what: str, function, *args, **kwargs):
        import requests

        try:
            return function(*args, **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise PacsError(f"{self.where} did not accept a connection within {self.timeout:g} s ({what})") from None
        except (requests.exceptions.ReadTimeout, requests.exceptions.Timeout):
            raise PacsError(f"{self.where} did not answer within {self.timeout:g} s ({what}); is it overloaded? "
                            f"try again or raise --pacs-timeout") from None
        except requests.exceptions.ConnectionError as error:
            reason = "connection refused" if "refused" in str(error).lower() else first_line(error, 120)
            raise PacsError(f"{self.where} is not reachable ({reason}); is it running, and is the address "
                            f"right?") from None
        except requests.exceptions.HTTPError as error:
            code = getattr(error.response, "status_code", None)
            if code == 401:
                raise PacsError(f"{self.where} refused the user name or password (HTTP 401); check the "
                                f"credentials file or MEDSAM_PACS_USER/_PASSWORD") from None
            if code == 403:
                raise PacsError(f"{self.where} does not allow this user to {what} (HTTP 403)") from None
            if code == 404:
                raise PacsError(f"{self.where} has no such object ({what}: HTTP 404); check the study and series "
                                f"UIDs") from None
            raise PacsError(f"{self.where} answered HTTP {code} ({what}): {first_line(error, 120)}") from None
        except (ValueError, TypeError, KeyError) as error:  # a non-DICOM answer (an HTML login page...)
            raise PacsError(f"{self.where} sent an answer that is not DICOMweb ({what}: {first_line(error, 120)}); "
                            f"is the address the DICOMweb root (e.g. /dicom-web)?") from None

    # -- QIDO-RS ---------------------------------------------------------------------------------------------------
    def studies(self) -> list[dict]:
        """Studies as the PACS lists them: UID, date, description, patient id as given (never logged here)."""
        found = self._call("list studies", self.client.search_for_studies)
        return [{"study": _value(s, "0020000D"), "date": _value(s, "00080020"), "description": _value(s, "00081030"),
                 "patient_id": _value(s, "00100020"), "modalities": _value(s, "00080061", many=True)}
                for s in found]

    def series(self, study: str) -> list[dict]:
        found = self._call("list series", self.client.search_for_series, study_instance_uid=study)
        return [{"study": study, "series": _value(s, "0020000E"), "modality": _value(s, "00080060"),
                 "description": _value(s, "0008103E"), "number": _value(s, "00200011"),
                 "instances": _value(s, "00201209")} for s in found]

    def segmentations(self, study: str) -> list[dict]:
        """The SEG series of a study (QIDO with Modality=SEG)."""
        found = self._call("find segmentations", self.client.search_for_series, study_instance_uid=study,
                           search_filters={"Modality": "SEG"})
        return [{"study": study, "series": _value(s, "0020000E"), "description": _value(s, "0008103E")}
                for s in found]

    # -- WADO-RS / STOW-RS -----------------------------------------------------------------------------------------
    def fetch(self, study: str, series: str) -> list:
        datasets = self._call("fetch the series", self.client.retrieve_series, study, series)
        if not datasets:
            raise PacsError(f"{self.where} holds no instances of series {series}")
        log.info("fetched %d instances of series %s from %s", len(datasets), series, self.where)
        return list(datasets)

    def open_series(self, study: str, series: str, shown: str | None = None):
        """The series as a :class:`~MedSAMSlicerLib.volumeio.dicom.DicomVolume` (same checks as a folder)."""
        from ..volumeio.dicom import read_datasets

        datasets = self.fetch(study, series)
        return read_datasets(datasets, shown or f"series {series}", series)

    def store(self, dataset) -> None:
        """STOW-RS one dataset (a DICOM SEG) into its study."""
        self._call("store the segmentation", self.client.store_instances, datasets=[dataset],
                   study_instance_uid=str(dataset.StudyInstanceUID))
        log.info("stored %s %s in %s", dataset.Modality, dataset.SOPInstanceUID, self.where)

    def store_segmentation(self, mask, volume, provenance, label: str = "MedSAM") -> str:
        """Build the DICOM SEG of ``mask`` on ``volume`` (a series fetched from this PACS), check it in memory, store
        it, and find it again by QIDO; returns the SEG's series UID."""
        from ..volumeio.dicomseg import checked_seg

        seg = checked_seg(mask, volume, provenance, label)
        self.store(seg)
        found = [s for s in self.segmentations(volume.source.study_uid) if s["series"] == str(seg.SeriesInstanceUID)]
        if not found:
            raise PacsError(f"{self.where} accepted the segmentation but does not list it (QIDO); check the PACS")
        return str(seg.SeriesInstanceUID)

    def store_file(self, path: str | os.PathLike) -> None:
        import pydicom

        self.store(pydicom.dcmread(str(path)))


def _value(item: dict, tag: str, many: bool = False):
    """A value from a DICOM JSON attribute (PN values as their alphabetic form)."""
    values = (item.get(tag) or {}).get("Value") or []
    values = [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
    if many:
        return [str(v) for v in values]
    return str(values[0]) if values else ""


def open_address(url: str, credentials_file: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
    """(Pacs, SeriesAddress) for a ``dicomweb://.../studies/X/series/Y`` address."""
    address = parse_series_address(url)
    return Pacs(address.root, load_credentials(credentials_file), timeout), address


def private_image_copy(volume, folder: str | os.PathLike) -> Path:
    """The voxels and grid of a fetched series as an NRRD file in a private folder (mode 0700), for viewers that
    load files (the browser app's Slicer scene); no DICOM tag goes into it."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    path = folder / "series.nrrd"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path
