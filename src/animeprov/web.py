"""What the three web apps (serve, study, curate) share: request-body cap, loopback Host check, JSON errors,
a bound on requests in flight, and the HTTP server settings (header-read timeout, JSON 400).

`protect(app, ...)` installs the first four on an app; `server_options(...)` gives `uvicorn.run` its
options. Every error an app or the HTTP server answers is JSON `{"detail": "..."}`, except uvicorn's own
last-resort 503 when more than `max_connections` connections are open (see docs/serve.md).

No torch here, so the study and curation apps stay light.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import h11
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

# Host header values a loopback-bound server accepts by default. Refusing every other name blocks DNS
# rebinding: a web page on evil.example whose name is re-pointed at 127.0.0.1 cannot drive the server.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Seconds a client has to send a request's line and headers, from the connection (or its first byte after
# a finished response). Clients that send headers slowly would otherwise hold connections for ever.
HEADER_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(bind_host: str, allowed: Sequence[str] = ()) -> list[str] | None:
    """Host values to accept: those given, else the loopback names when bound to loopback, else any (None)."""
    if allowed:
        return list(allowed)
    return list(LOOPBACK_HOSTS) if is_loopback(bind_host) else None


def protect(
    app: FastAPI,
    *,
    max_body_bytes: int,
    allowed_hosts: Sequence[str] | None = None,
    max_requests: int | None = None,
    what: str = "request body",
    hint: str = "",
) -> None:
    """Body cap (413), Host check (400, when `allowed_hosts` is given), at most `max_requests` requests in
    flight (503) and JSON 422s for invalid requests that never echo the input. `hint` ends the 422 message."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, what=what)
    if max_requests is not None:
        app.add_middleware(RequestLimitMiddleware, max_requests=max_requests)
    if allowed_hosts:
        app.add_middleware(HostCheckMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the input back, and a JSON body holding NaN or Infinity then
        # fails to render (a 500). Locations and messages only.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
            for problem in error.errors()
        )
        return JSONResponse({"detail": f"invalid request ({problems}){hint}"}, status_code=422)


async def _send_json(
    send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*start_headers, *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(413, f"{what} too large: the request body is limited to {limit:,} bytes")


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: refused on Content-Length before it is read, or cut off while a
    chunked one arrives. Pure ASGI, so it never buffers the body itself."""

    def __init__(self, app: ASGIApp, max_bytes: int, what: str = "request body") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.what = what

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_json(send, 413, BodyTooLarge(self.max_bytes, self.what).detail)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a chunked body that lied by omission
                    raise BodyTooLarge(self.max_bytes, self.what)
            return message

        await self.app(scope, counted_receive, send)


class HostCheckMiddleware:
    """400 (JSON) unless the Host header, without its port, is one of `allowed_hosts`."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed = {host.lower() for host in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and host_name(scope) not in self.allowed:
            await _send_json(send, 400, "invalid Host header: this server only answers to " + self._names())
            return
        await self.app(scope, receive, send)

    def _names(self) -> str:
        return ", ".join(sorted(self.allowed))


def host_name(scope: Scope) -> str:
    """The Host header without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "[::1]"."""
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


class RequestLimitMiddleware:
    """503 (JSON, Retry-After: 1) beyond `max_requests` requests in flight. Requests, not connections: a
    client that opens connections and sends nothing (or headers slowly) takes no place here, and the
    header timeout of `GuardedH11Protocol` closes its connections."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.active = 0  # only touched on the event loop thread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            await _send_json(
                send, 503, "server busy: too many requests at once; retry later", [(b"retry-after", b"1")]
            )
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a header-read timeout and JSON for its 400.

    A request's line and headers must arrive within `header_timeout` seconds of the connection being made
    (or of its first byte after a finished response); else the connection is closed. uvicorn only times out
    idle keep-alive connections, so clients sending partial headers could hold connections for ever."""

    header_timeout: float = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        elif not waiting:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": f"invalid HTTP request ({msg.rstrip('.')})"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def server_options(
    host: str,
    port: int,
    *,
    header_timeout: float | None = None,
    max_connections: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run(app, ...)` / `uvicorn.Config(app, ...)`: the guarded protocol with
    `header_timeout` (default HEADER_TIMEOUT_S), and at most `max_connections` open connections (uvicorn's
    own plain-text 503 beyond)."""
    timeout = HEADER_TIMEOUT_S if header_timeout is None else header_timeout
    protocol = type("GuardedH11", (GuardedH11Protocol,), {"header_timeout": timeout})
    return {"host": host, "port": port, "http": protocol, "limit_concurrency": max_connections, **options}
