"""Running the server: bind the socket ourselves (so ``--port 0`` knows its port), print the URL as the first
stdout line, serve with uvicorn until SIGTERM/SIGINT (or until the parent process that started us is gone).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time

from ..errors import OptionError, first_line
from .app import create_app
from .engine import Engine, ServerConfig

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # accepted connections inherit it.  With proto 0 every answer on a kept-alive connection waited
        # ~40 ms (Nagle's algorithm against the client's delayed ACK; bench/server_overhead.py).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except (OSError, OverflowError) as error:
        raise OptionError(f"cannot listen on {host}:{port}: {first_line(error)}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    elif ":" in host:
        shown = f"[{host}]"
    return f"http://{shown}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _watch_parent(parent: int, stop) -> None:
    """Exit when the process that started us (Slicer, a CLI) dies without stopping us."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            log.warning("the parent process %d is gone; stopping the engine", parent)
            stop()
            return


def serve(config: ServerConfig, host: str, port: int, tokens: list[str], parent_pid: int | None = None,
          sock: socket.socket | None = None) -> int:
    """Serve until stopped.  ``sock``: already bound by the caller (who needed the port first), else bound here."""
    import uvicorn

    sock = sock if sock is not None else bind(host, port)
    if not is_loopback(host):
        log.warning("listening on %s: reachable from other machines; put it behind TLS (README: Local and remote "
                    "engine)", host)
    print(url_of(sock, host), flush=True)  # the first stdout line; a parent process reads it
    engine = Engine(config)
    engine.start()
    app = create_app(engine, tokens)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30,
                                           lifespan="off"))
    def stop(*_: object) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)  # uvicorn runs in a thread below, so the main thread handles signals
    signal.signal(signal.SIGINT, stop)
    if parent_pid:
        threading.Thread(target=_watch_parent, args=(parent_pid, stop), daemon=True).start()
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="medsam-http", daemon=True)
    http.start()  # /health answers "loading" while the main thread loads the model
    try:
        engine.load()
        while http.is_alive():
            http.join(0.5)
    finally:
        server.should_exit = True
        http.join(15)
        engine.shutdown()
        sock.close()
    print("medsam-slicer: engine stopped", file=sys.stderr)
    return 0
