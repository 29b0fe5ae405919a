"""What the three web apps (serve, study, curate) share: a request-body cap and the loopback host check.

No torch here, so the study and curation apps stay light.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Host header values a loopback-bound server accepts by default. Refusing every other name blocks DNS
# rebinding: a web page on evil.example whose name is re-pointed at 127.0.0.1 cannot drive the server.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


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
            error = BodyTooLarge(self.max_bytes, self.what)
            await JSONResponse({"detail": error.detail}, status_code=413)(scope, receive, send)
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
