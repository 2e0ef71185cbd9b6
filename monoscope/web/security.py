"""What the browser's HTTP server checks before any route runs, and the headers on every answer.

`Guard` (added by create_app) bounds each request before any work: the path, the query string
and the body (Content-Length up front, then counted while the body streams in, so a chunked
body is cut off at the limit too), and puts the security headers on every response, errors and
static files included. `HostGuard` (added by the server once its socket is bound) refuses Host
headers that are not a name of that socket: a page on another site whose DNS name is rebound to
127.0.0.1 sends its own name as Host, so it cannot read the API.

The Content-Security-Policy allows scripts, styles and data only from the server itself: the
front end has no inline script or handler, and renders corpus text as text (DOM text nodes),
so markup in a corpus never runs even if a bug put it into the page.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP_DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",  # the page's empty favicon is a data: URL
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
)
CSP = "; ".join((*CSP_DIRECTIVES, "frame-ancestors 'none'"))
"""The served pages' policy."""
META_CSP = "; ".join(CSP_DIRECTIVES)
"""The static export's policy, as a <meta> tag: browsers ignore frame-ancestors there."""
SECURITY_HEADERS = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
)
MAX_BODY_BYTES = 64 * 1024
"""Largest request body: the longest text an endpoint accepts (fires.MAX_TOKENS tokens) with
room for JSON escapes."""
MAX_PATH_BYTES = 8 * 1024
MAX_QUERY_BYTES = 4 * 1024
"""Longest query string: a search query of meaning.MAX_QUERY_CHARS characters, percent-encoded."""
BODILESS = ("GET", "HEAD", "OPTIONS")


class Guard:
    """ASGI middleware: bounded requests, security headers on every response."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": with_security_headers(message.get("headers"))}
            await send(message)

        refusal = refuse_target(scope) or refuse_length(scope, self.max_body)
        if refusal is not None:
            await reply(send_with_headers, *refusal)
            return
        if scope["method"] not in BODILESS:
            body = await read_body(receive, self.max_body)
            if body is None:
                return  # the client went away
            if len(body) > self.max_body:
                await reply(send_with_headers, *too_large(self.max_body))
                return
            receive = replay(body, receive)
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # A short JSON answer (with the headers) instead of a traceback page; the error is
            # raised on, for the server's log.
            if not started:
                await reply(send_with_headers, 500, "internal error (see the server's log)")
            raise


class HostGuard:
    """ASGI middleware: 400 unless the Host header names the socket (bind_host, port) the
    server listens on: 127.0.0.1, localhost, [::1] or bind_host, with the port. A server bound
    to every interface (0.0.0.0, ::) also answers any IP address: rebinding needs a DNS name."""

    def __init__(self, app: ASGIApp, bind_host: str, port: int) -> None:
        self.app, self.port = app, port
        self.names = {"127.0.0.1", "localhost", "::1", bind_host.strip("[]").lower()}
        self.any_ip = bind_host.strip("[]") in ("0.0.0.0", "::", "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = header(scope, b"host")
        if scope["type"] == "http" and not self.allows(host):
            shown = repr(host[:100]) if host else "(none)"
            why = f"Host {shown} is not a name of this server: use http://127.0.0.1:{self.port}/"
            await reply(send, 400, why, True)
            return
        await self.app(scope, receive, send)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        name, port = split_host(host.lower())
        if port != self.port and not (port is None and self.port == 80):
            return False
        return name in self.names or (self.any_ip and is_ip(name))


def split_host(host: str) -> tuple[str, int | None]:
    """'[::1]:8000' -> ('::1', 8000); 'localhost' -> ('localhost', None); a bad port -> -1."""
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        if port and not port.startswith(":"):
            return name, -1
        port = port[1:]
    elif ":" in host:
        name, _, port = host.rpartition(":")
    else:
        name, port = host, ""
    if not port:
        return name, None
    return name, int(port) if port.isdigit() and len(port) <= 5 else -1


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header `name` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def with_security_headers(headers: list[tuple[bytes, bytes]] | None) -> list:
    """`headers` plus each security header the response does not set itself."""
    headers = list(headers or ())
    present = {key.lower() for key, _ in headers}
    for key, value in SECURITY_HEADERS:
        if key.encode() not in present:
            headers.append((key.encode(), value.encode()))
    return headers


def refuse_target(scope: Scope) -> tuple[int, str] | None:
    """(414, why) for a path or query string over its limit."""
    path = scope.get("raw_path") or scope["path"].encode()
    if len(path) > MAX_PATH_BYTES:
        return 414, f"the path is {len(path):,} bytes long; the limit is {MAX_PATH_BYTES:,}"
    query = scope.get("query_string", b"")
    if len(query) > MAX_QUERY_BYTES:
        limit = MAX_QUERY_BYTES
        return 414, f"the query string is {len(query):,} bytes long; the limit is {limit:,}"
    return None


def refuse_length(scope: Scope, limit: int) -> tuple[int, str] | None:
    """(400 or 413, why) for a Content-Length that is not a number or over `limit`."""
    length = header(scope, b"content-length")
    if length is None:
        return None
    if not length.strip().isdigit():
        return 400, "Content-Length is not a number"
    if len(length) > 12 or int(length) > limit:
        return too_large(limit)
    return None


def too_large(limit: int) -> tuple[int, str]:
    return 413, f"the request body is over the limit of {limit:,} bytes"


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, stopping once it is over `limit` bytes (the result is then longer than
    `limit`, and the rest is never read); None if the client disconnects."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives `body` as one message, then defers to `receive` (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def reply(send: Send, status: int, detail: str, headers: bool = False) -> None:
    """A JSON {"detail": ...} response; `headers` adds the security headers (for a sender that
    does not add them itself)."""
    body = json.dumps({"detail": detail}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        start = with_security_headers(start)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
