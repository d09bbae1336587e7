"""Who may use the page, and what a page may make the server do.

Everything a browser sends is untrusted: the login form, the websocket's messages, every trame state value and
every trigger's arguments.  This module holds the checks; ``app.py`` wires them into trame's server:

- **Login** (:class:`Sessions`, :class:`PageGate`).  With a reader token file (one ``READER TOKEN`` per line, read
  by the engine server's own reader ``MedSAMSlicerLib.server.auth.api_keys_from_file``: ``#`` comments, at least 16
  characters, a warning when others can read the file) the page asks for a token; the comparison is the engine's
  constant-time one (``Guard.owner``: every token compared, the time says nothing), failed logins are limited per
  address and in all, and a session (a random cookie: HttpOnly, SameSite=Strict, Secure under TLS) expires.  The
  gate is aiohttp middleware in front of *every* route of trame's server, the websocket upgrade included, and
  wslink's own ``validateToken`` hook (the ``wslink.hello`` handshake) checks the connection's session again, so a
  raw websocket client without a session gets neither state nor triggers.  Off loopback the CLI refuses to start
  without a token file.  On loopback without one there is no login (one user on their own machine) but the Host
  and Origin checks below still stop a web page in that user's browser from driving the app (DNS rebinding,
  cross-site websocket).
- **Saves** (:func:`save_target`): the browser gives a file name only; it is resolved in the output folder the
  admin chose at start (never the process's working folder), checked by the project's output guard
  (``MedSAMSlicerLib.paths.check_output_file``: never an input, whatever the spelling) and never replaces an
  existing file without the reader's explicit "overwrite".
- **State** (:class:`StateGate`): trame applies a client's ``trame.state.update`` to the server's state and pushes
  it to the other clients; the gate stands in front of that RPC, so a value is checked (type, range, enumeration)
  before trame or any ``state.change`` callback sees it.  Keys only the server writes are refused, and so are keys
  the server does not have.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Callable, Iterable, Optional

from MedSAMSlicerLib.errors import OptionError, OutputError
from MedSAMSlicerLib.paths import check_output_file
from MedSAMSlicerLib.server.auth import Guard, api_keys_from_file

log = logging.getLogger(__name__)

COOKIE = "medsam_web_session"
LOGIN_PATH, LOGOUT_PATH = "/medsam-login", "/medsam-logout"
READER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # reader ids go into time-log file names
MIN_TOKEN = 16
FAILURES_PER_ADDRESS = 5  # failed logins an address may make per window...
FAILURES_IN_ALL = 30  # ...and all addresses together (a spread-out guess)
FAILURE_WINDOW_S = 300.0
SAVE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _+.-]{0,149}$")  # a plain file name: no separators, no dotfiles


# -- where the page is served ------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --host value) only listens on this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _host_is_local(host_header: str) -> bool:
    name = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else host_header.split("]")[0] + "]"
    return is_loopback(name)


# -- reader tokens and sessions ------------------------------------------------------------------------------------
def read_reader_tokens(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(reader, token)]`` from the admin's file: ``READER TOKEN`` per line (a line with a token alone is reader
    ``readerN``).  Refused with one line: no token, a short or repeated token, a reader id that is not a plain
    name (letters, digits, ``_ . -``)."""
    pairs = []
    for number, line in enumerate(api_keys_from_file(path), 1):
        words = line.split()
        if len(words) == 1:
            reader, token = f"reader{number}", words[0]
        elif len(words) == 2:
            reader, token = words
        else:
            raise OptionError(f"{path}: line {number} must be 'READER TOKEN' (two words)")
        if not READER_RE.match(reader):
            raise OptionError(f"{path}: line {number}: reader id {reader[:20]!r} must be letters, digits, _ . -")
        if len(token) < MIN_TOKEN:
            raise OptionError(f"{path}: line {number}: the token must be at least {MIN_TOKEN} characters long")
        pairs.append((reader, token))
    if len({token for _, token in pairs}) != len(pairs):
        raise OptionError(f"{path}: two lines have the same token; give each reader their own")
    return pairs


@dataclass
class Session:
    reader: str
    expires: float


class TooManyAttempts(Exception):
    pass


class Sessions:
    """Logins by token, with a failure limit, and the sessions they open (random ids, a fixed lifetime)."""

    def __init__(self, tokens: list[tuple[str, str]], lifetime_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.readers = [reader for reader, _ in tokens]
        self._guard = Guard(None, [token for _, token in tokens], max_body=0)  # the engine's constant-time compare
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque] = {}
        self._all_failures: deque = deque()

    def _recent(self, failures: deque) -> deque:
        while failures and failures[0] < self.clock() - FAILURE_WINDOW_S:
            failures.popleft()
        return failures

    def login(self, token: str, address: str) -> tuple[str, str]:
        """``(session id, reader)`` for a right token; ValueError for a wrong one, TooManyAttempts when the address
        (or everyone together) failed too often lately: then even a right token waits for the window to pass."""
        mine = self._recent(self._failures.setdefault(address, deque()))
        if len(mine) >= FAILURES_PER_ADDRESS or len(self._recent(self._all_failures)) >= FAILURES_IN_ALL:
            raise TooManyAttempts()
        owner = None
        if isinstance(token, str) and 0 < len(token) <= 512:
            owner = self._guard.owner({b"authorization": b"Bearer " + token.strip().encode("utf-8", "replace")})
        if owner is None:
            now = self.clock()
            mine.append(now)
            self._all_failures.append(now)
            raise ValueError("wrong token")
        reader = self.readers[int(owner.split(":")[0])]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(reader, self.clock() + self.lifetime_s)
        self._failures.pop(address, None)
        return session_id, reader

    def reader(self, session_id: Optional[str]) -> Optional[str]:
        """The reader of a live session, None for no, unknown or expired session (an expired one is forgotten)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[session_id]
            return None
        return session.reader

    def logout(self, session_id: Optional[str]) -> None:
        self._sessions.pop(session_id or "", None)


# -- the gate: HTTP middleware and wslink's handshake hook ----------------------------------------------------------
_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>MedSAMSlicer: sign in</title>
<meta name="viewport" content="width=device-width"><style>body{{font-family:sans-serif;max-width:26em;margin:5em auto}}
input{{width:100%;padding:.4em;margin:.3em 0}}.e{{color:#b00}}</style></head><body><h2>MedSAMSlicer</h2>
<form method="post" action="{action}"><label>Reader token<input id="token" name="token" type="password"
autocomplete="current-password" autofocus></label><button id="login" type="submit">Sign in</button></form>
<p class="e" id="login-error">{error}</p></body></html>"""


class PageGate:
    """The page's door: aiohttp middleware for every HTTP request (the websocket upgrade too) and a wslink link
    protocol whose ``validateToken`` admits a websocket only while its session lives."""

    def __init__(self, sessions: Optional[Sessions], secure: bool, owner: Optional[str] = None) -> None:
        from wslink.websocket import LinkProtocol

        self.sessions = sessions
        self.secure = secure
        self.owner = owner  # one scene per process: the first reader to log in owns it (or --reader)
        self.on_owner: Callable[[str], None] = lambda reader: None  # the app shows who owns it
        self.connections: dict[str, Optional[str]] = {}  # websocket client id -> its session id
        gate = self

        class _Handshake(LinkProtocol):
            def onConnect(self, request, client_id):  # wslink's names
                gate.connections[client_id] = request.cookies.get(COOKIE) if request is not None else None

            def onClose(self, client_id):
                gate.connections.pop(client_id, None)

            async def validateToken(self, token, client_id):  # the token is trame's default secret: ignored
                return gate.admits(client_id)

        self.link_protocol = _Handshake()

    def admits(self, client_id: str) -> bool:
        if self.sessions is None:
            return client_id in self.connections
        return self.sessions.reader(self.connections.get(client_id)) is not None

    def expired_clients(self) -> list[str]:
        """Websocket clients whose session has expired (or was logged out): the app closes them."""
        return [client for client in list(self.connections) if not self.admits(client)]

    def reader_of(self, request) -> Optional[str]:
        return self.sessions.reader(request.cookies.get(COOKIE)) if self.sessions is not None else None

    # aiohttp ----------------------------------------------------------------------------------------------------
    def install(self, aiohttp_app) -> None:
        from aiohttp import web

        async def gate(request, handler):
            return await self._middleware(request, handler)

        aiohttp_app.middlewares.append(web.middleware(gate))

    async def _middleware(self, request, handler):
        from aiohttp import web

        host = request.headers.get("Host", "")
        if self.sessions is None and not _host_is_local(host):
            return web.Response(status=403, text="this app only answers on its loopback address")  # DNS rebinding
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != host:
            return web.Response(status=403, text="cross-origin request refused")  # another site's page
        if self.sessions is not None:
            if request.path == LOGIN_PATH:
                return _no_store(await self._login(request))
            if request.path == LOGOUT_PATH:
                self.sessions.logout(request.cookies.get(COOKIE))
                response = web.HTTPFound(LOGIN_PATH)
                response.del_cookie(COOKIE, path="/")
                return response
            if self.reader_of(request) is None:
                if request.method == "GET" and request.headers.get("Upgrade", "").lower() != "websocket":
                    return web.HTTPFound(LOGIN_PATH)
                return web.Response(status=401, text="sign in first")
        response = await handler(request)
        if not getattr(response, "prepared", False):
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    async def _login(self, request):
        from aiohttp import web

        if request.method != "POST":
            return _page(web, "")
        form = await request.post() if (request.content_length or 0) <= 4096 else {}
        address = request.remote or "?"
        try:
            session_id, reader = self.sessions.login(str(form.get("token", "")), address)
        except TooManyAttempts:
            log.warning("login: too many failed attempts from %s", address)
            return _page(web, "Too many failed attempts: wait a few minutes.", 429)
        except ValueError:
            log.warning("login: wrong token from %s", address)
            return _page(web, "Wrong token.", 401)
        if self.owner is None:
            self.owner = reader
            self.on_owner(reader)
        if reader != self.owner:
            self.sessions.logout(session_id)
            return _page(web, f"This app is serving reader {self.owner}; ask the admin for your own.", 409)
        log.info("login: reader %s", reader)
        response = web.HTTPFound("/")
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", secure=self.secure, path="/",
                            max_age=int(self.sessions.lifetime_s))
        return response


def _page(web, error: str, status: int = 200):
    return web.Response(status=status, content_type="text/html",
                        text=_LOGIN_PAGE.format(action=LOGIN_PATH, error=escape(error)))


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


# -- saves ----------------------------------------------------------------------------------------------------------
def save_target(out_folder: Optional[Path], name, formats: Iterable[str], inputs: Iterable[str], overwrite: bool
                ) -> Path:
    """The file a save of ``name`` writes: in ``out_folder``, a plain name with an allowed suffix, never an input,
    never a link, never an existing file unless ``overwrite``.  OutputError (one line) otherwise."""
    formats = tuple(formats)
    if out_folder is None:
        raise OutputError("saving is off: the app was started without --out-folder (or --log-folder)")
    if not isinstance(name, str) or not name.strip():
        raise OutputError("give a file name to save to")
    name = name.strip()
    if any(c in name for c in "/\\\0") or ".." in name:
        raise OutputError(f"{name[:60]!r}: a file name only (no folders, no '..'); it is saved in the output folder")
    if not SAVE_NAME_RE.match(name):
        raise OutputError(f"{name[:60]!r}: use letters, digits, spaces and _ + . - (not first)")
    if not name.endswith(formats):
        raise OutputError(f"{name}: save as {' or '.join(formats)}")
    folder = Path(os.path.realpath(out_folder))
    target = folder / name
    if os.path.islink(target):
        raise OutputError(f"{name} is a link in the output folder; choose another name")
    real = check_output_file(target, list(inputs), what="save")
    if real.parent != folder:
        raise OutputError(f"{name}: not in the output folder")
    if os.path.lexists(real) and not overwrite:
        raise OutputError(f"{name} exists in the output folder; tick 'Overwrite' to replace it, or choose another name")
    return real


# -- state written by the page ----------------------------------------------------------------------------------------
def one_of(*values) -> Callable:
    def check(value):
        if not isinstance(value, str) or value not in values:
            raise ValueError(f"not one of {', '.join(values)}")
        return value
    return check


def boolean(value):
    if not isinstance(value, bool):
        raise ValueError("not true or false")
    return value


def text(limit: int) -> Callable:
    def check(value):
        if not isinstance(value, str) or len(value) > limit or "\0" in value:
            raise ValueError(f"not a text of at most {limit} characters")
        return value
    return check


_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def dicom_uid(value):
    """A DICOM UID (digits and dots, at most 64 characters) or nothing (no choice yet)."""
    if value is None:
        return value
    if not isinstance(value, str) or len(value) > 64 or not _UID_RE.match(value):
        raise ValueError("not a DICOM UID")
    return value


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same_kind(old, new) -> bool:
    """For state the page's widgets own (trame-slicer's sliders and menus): the value keeps its JSON kind."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if _finite(old) or isinstance(old, (int, float)):
        return _finite(new)
    if isinstance(old, str):
        return isinstance(new, str) and len(new) <= 1000
    if old is None:
        return new is None or isinstance(new, bool) or _finite(new) or (isinstance(new, str) and len(new) <= 1000)
    if isinstance(old, list):
        return isinstance(new, list) and len(new) <= 16 and all(_finite(v) or isinstance(v, str) for v in new)
    return False


class StateGate:
    """Checks every ``trame.state.update`` from a page before trame applies it (or shows it to other pages)."""

    def __init__(self, server, validators: dict[str, Callable], server_only: Iterable[str]) -> None:
        self.server = server
        self.validators = validators
        self.server_only = set(server_only)
        self.refused: list[tuple[str, str]] = []  # (key, why): the last refusals, for the log and for tests

    def check(self, key, value) -> str:
        """Why ``key = value`` is refused ("" when it is fine)."""
        if not isinstance(key, str) or len(key) > 200:
            return "not a state name"
        if key in self.validators:
            try:
                self.validators[key](value)
            except ValueError as error:
                return str(error)
            return ""
        if key in self.server_only:
            return "only the server sets it"
        if not self.server.state.has(key):
            return "no such state"
        if not _same_kind(self.server.state[key], value):
            return "wrong type"
        return ""

    def install(self, wslink_server) -> None:
        """Stand in front of ``trame.state.update`` on every websocket handler of the server."""
        for handler in getattr(wslink_server, "_ws_handlers", []):
            protocol, update = handler.functionMap["trame.state.update"]
            handler.functionMap["trame.state.update"] = (self, lambda gate, changes, _p=protocol, _u=update:
                                                         gate.update(changes, _p, _u))

    def update(self, changes, protocol, update):
        accepted, refused = [], []
        for change in changes if isinstance(changes, list) else []:
            key = change.get("key") if isinstance(change, dict) else None
            why = self.check(key, change.get("value") if isinstance(change, dict) else None)
            if why:
                refused.append(key if isinstance(key, str) else None)
                self.refused.append((str(key)[:60], why))
                log.warning("refused state %s from the page: %s", str(key)[:60], why)
            else:
                accepted.append(change)
        del self.refused[:-50]
        if accepted:
            update(protocol, accepted)
        known = [key for key in refused if key and self.server.state.has(key)]
        if known:  # the page shows the server's value again
            protocol.force_push_state(*known)
