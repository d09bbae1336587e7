"""Who may talk to the server: a bearer token (one shared token, or one API key per annotator).

- ``--token-file F``: the token is F's first line; when F does not exist a fresh random token is written there
  (mode 0600, atomically) for local clients to read.  Without any option a fresh token goes to the default file.
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

from ..atomic import write_bytes_atomically
from ..errors import OptionError, first_line

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json")  # no data behind any of them
CLIENT_HEADER = b"x-medsam-client"


def default_token_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "medsam-slicer" / "server.token"


def token_from_file(path: str | os.PathLike, create: bool) -> str:
    """The token in ``path``; with ``create`` a missing file gets a fresh random token (mode 0600)."""
    path = Path(path).expanduser()
    if create and not path.exists():
        token = secrets.token_urlsafe(32)
        old = os.umask(0o077)  # the temp file is private from its first byte
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(path, (token + "\n").encode())
            os.chmod(path, 0o600)
        except OSError as error:
            raise OptionError(f"cannot write the token file {path}: {first_line(error)}") from None
        finally:
            os.umask(old)
        return token
    keys = api_keys_from_file(path)
    return keys[0]


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
