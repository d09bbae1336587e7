"""Who may talk to the server: a bearer token (one shared token, or one API key per annotator).

- ``--token-file F``: the token is F's first line; when F does not exist a fresh random token is written there
  (mode 0600, atomically) for local clients to read.  Without any option a fresh token goes to the default file of
  the server's port (``server-PORT.token``), so two servers on one machine never overwrite each other's token; a
  client given only the URL finds it there.  The file names the server's process and goes when the server stops; a
  file that belongs to a server still running is never overwritten.
- ``--api-key-file F``: one key per line (``#`` comments); each annotator gets their own key.
The guard is plain ASGI middleware, so a request without a valid token is answered 401 before its body is read,
and a body announced larger than the upload limit is answered 413 before it is read.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlparse

from ..atomic import write_bytes_atomically
from ..errors import OptionError, first_line

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json")  # no data behind any of them
CLIENT_HEADER = b"x-medsam-client"


def default_token_file(server: str | int | None = None) -> Path:
    """The token file ``serve`` writes when given no ``--token-file``: one per port (``server`` is the port or the
    server's URL), in the user's config folder.  Without ``server``: the single file of versions before 0.2."""
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "medsam-slicer"
    if server is None:
        return base / "server.token"
    if isinstance(server, int):
        port = server
    else:
        parsed = urlparse(server)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return base / f"server-{port}.token"


def _write_token(path: Path, text: str) -> None:
    old = os.umask(0o077)  # the temp file is private from its first byte
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, text.encode())
        os.chmod(path, 0o600)
    except OSError as error:
        raise OptionError(f"cannot write the token file {path}: {first_line(error)}") from None
    finally:
        os.umask(old)


def token_from_file(path: str | os.PathLike, create: bool) -> str:
    """The token in ``path``; with ``create`` a missing file gets a fresh random token (mode 0600)."""
    path = Path(path).expanduser()
    if create and not path.exists():
        token = secrets.token_urlsafe(32)
        _write_token(path, token + "\n")
        return token
    keys = api_keys_from_file(path)
    return keys[0]


def claim_default_token_file(path: Path) -> str:
    """A fresh token in this server's default file ``path`` (its port's), naming this process on a comment line.
    A file naming another process that still runs (a server on the same port of another address) is refused."""
    owner = token_file_owner(path)
    if owner is not None and owner != os.getpid() and _running(owner):
        raise OptionError(f"{path} holds the token of another engine that is still running (process {owner}); "
                          f"stop it, or give this one its own --token-file")
    token = secrets.token_urlsafe(32)
    _write_token(path, f"{token}\n# pid {os.getpid()}: medsam-slicer serve (removed when it stops)\n")
    return token


def release_default_token_file(path: Path) -> None:
    """Remove ``path`` when it is still this process's (a server that stops leaves no stale token behind)."""
    if token_file_owner(path) == os.getpid():
        path.unlink(missing_ok=True)


def token_file_owner(path: Path) -> int | None:
    """The process named by a default token file's ``# pid N`` line, None when there is none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.lstrip("# ").split()
        if line.startswith("#") and len(words) >= 2 and words[0] == "pid" and words[1].rstrip(":").isdigit():
            return int(words[1].rstrip(":"))
    return None


def _running(pid: int) -> bool:
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:
        pass
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def api_keys_from_file(path: str | os.PathLike) -> list[str]:
    path = Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
        mode = path.stat().st_mode
    except OSError as error:
        raise OptionError(f"cannot read the key file {path}: {first_line(error)}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise OptionError(f"{path} holds no token; write one per line")
    if any(len(k) < 16 for k in keys):
        raise OptionError(f"{path}: every token must be at least 16 characters long")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s can be read by other users; chmod 600 it", path)
    return keys


class Guard:
    """ASGI middleware: bearer token check (sets ``request.state.owner``) and the early 413."""

    def __init__(self, app, tokens: list[str], max_body: int) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.max_body = max_body

    def owner(self, headers: dict[bytes, bytes]) -> str | None:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        found = None
        for number, known in enumerate(self.tokens):  # compare with every key: the time says nothing
            if secrets.compare_digest(token.strip(), known):
                found = number
        if found is None:
            return None
        client = headers.get(CLIENT_HEADER, b"")[:64].decode("ascii", "replace")
        return f"{found}:{client}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"] not in OPEN_PATHS:
            owner = self.owner(headers)
            if owner is None:
                return await reply(send, 401, "unauthorized", "missing or wrong token: send 'Authorization: "
                                   "Bearer <token>' with the token from the server's --token-file")
            scope.setdefault("state", {})["owner"] = owner
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await reply(send, 400, "bad_request", "the Content-Length header is not a number")
            if too_big:
                return await reply(send, 413, "too_large", f"the request body of {int(length) >> 20} MiB exceeds "
                                   f"this server's limit of {self.max_body >> 20} MiB (serve --max-upload-mb)")
        await self.app(scope, receive, send)


async def reply(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread body must not be taken for the next request
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
