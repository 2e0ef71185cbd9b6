"""Sockets and uvicorn for monoscope's HTTP servers: `listening_socket` binds (and listens)
before the caller prints where, so a taken port is one line and an early client waits;
`run_on` serves an ASGI app on it behind the Host check; `background_server` runs one in a
thread for tests, benchmarks and notebooks."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from monoscope.web.security import HostGuard

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_server_extra() -> None:
    """ImportError naming the extra when the web server's packages are missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"`monoscope serve` and `llm-server` need the web server packages ({err.name} is "
            "missing): "
            'pip install "monoscope[serve]"'
        ) from err


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a ValueError / OSError saying in one line why not (a
    port out of range, one in use, an address this machine does not have)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: a port is a number from 0 to 65535")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    # As uvicorn does: a restarted server may bind while the old one's connections linger.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without, each answer (headers and body written apart)
    # waits for the client's delayed ACK (benchmarks/serve_load.py; docs/LOG.md).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        in_use = err.errno == errno.EADDRINUSE
        why = "it is in use (another server? choose another --port)" if in_use else err.strerror
        raise OSError(f"cannot listen on {host}:{port}: {why}") from None
    # Listening now, not when uvicorn starts: a client that connects as soon as the address is
    # printed waits in the backlog instead of being refused.
    sock.listen(2048)
    return sock


def base_url(sock: socket.socket) -> str:
    """http://HOST:PORT/ of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run_on(app, sock: socket.socket, host: str | None = None) -> None:
    """Serve `app` with uvicorn on the socket bound to `host` (None: the socket's address)
    until interrupted."""
    import uvicorn

    config = uvicorn.Config(host_guarded(app, sock, host), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def host_guarded(app, sock: socket.socket, host: str | None = None):
    """`app` answering only requests whose Host names the bound socket (security.HostGuard),
    against DNS rebinding. Added here, not by the app: the port is known once bound (port 0
    picks one), and in-process clients (TestClient) send no such name."""
    address, port = sock.getsockname()[:2]
    return HostGuard(app, host or address, port)


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a thread; yields its base URL ("http://127.0.0.1:PORT/").

    port 0 picks a free port. For tests, benchmarks and notebooks; `serve` blocks instead."""
    require_server_extra()
    import uvicorn

    sock = listening_socket(host, port)
    config = uvicorn.Config(host_guarded(app, sock, host), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the browser server did not start")
            time.sleep(0.01)
        bound_port = sock.getsockname()[1]
        yield f"http://{host}:{bound_port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
