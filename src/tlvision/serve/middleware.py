"""The checks made on a request's headers alone, before a byte of its body is read.

FastAPI parses a multipart form before any dependency runs, so a token checked in a dependency
lets an unauthenticated client make the server read (and spool) a whole upload first. This
pure ASGI middleware answers from the request line and headers:

- Host: only the names the server was started for (loopback names, the bound address and each
  --allowed-host), 400 otherwise. A token-less server on loopback is otherwise open to any web
  page through DNS rebinding (the page's own name resolved to 127.0.0.1). A wildcard bind
  (0.0.0.0, ::) is reached under names it cannot know: there only --allowed-host narrows it.
- the token, on every path it guards (/v1/ and the OpenAPI schema, which names the classes
  that /v1/model guards): 401 without the right 'Authorization: Bearer TOKEN'.

Written by hand for the same reason as the upload size limit (serve/uploads.py): it must act
before FastAPI reads the body, which is ASGI middleware's place.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tlvision.serve.schemas import AsciiJSONResponse

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
GUARDED_PREFIXES = ("/v1/", "/openapi.json", "/docs", "/redoc")
TOKEN_MISSING = (
    "token required: send the header 'Authorization: Bearer TOKEN' with the token the server "
    "was started with (--token or TLVISION_TOKEN)"
)
TOKEN_WRONG = "wrong token: send the token the server was started with (--token or TLVISION_TOKEN)"


def host_name(header: str) -> str:
    """The Host header's name without its port, lower case: '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(bound: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The Host names a server bound to `bound` answers; None: any (a wildcard bind without
    --allowed-host)."""
    extra = [host_name(name) for name in extra if name.strip()]
    if is_wildcard(bound) and not extra:
        return None
    names = {*LOOPBACK_NAMES, *extra}
    if not is_wildcard(bound):
        names.add(host_name(bound) if not bound.startswith("[") else bound.strip("[]").lower())
        names.add(bound.strip("[]").lower())
    return frozenset(names)


@dataclass(frozen=True)
class GateConfig:
    token: str | None
    hosts: frozenset[str] | None  # None: any Host


class HeaderGate:
    """Pure ASGI middleware: the Host check, then the token on guarded paths."""

    def __init__(self, app: ASGIApp, gate: GateConfig) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope["path"], headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail, extra_headers = refusal
        # The body is never read: the connection is closed after the answer, so a client
        # still sending learns at once and nothing more is received.
        response = AsciiJSONResponse(
            {"detail": detail}, status_code=status, headers={**extra_headers, "Connection": "close"}
        )
        await response(scope, receive, send)

    def refusal(self, path: str, headers: Headers) -> tuple[int, str, dict[str, str]] | None:
        hosts = self.gate.hosts
        if hosts is not None and host_name(headers.get("host", "")) not in hosts:
            shown = headers.get("host", "")[:100]
            return (
                400,
                f"Host {shown!r} is not one this server was started for; start it with "
                "--allowed-host NAME to answer that name",
                {},
            )
        token = self.gate.token
        if token is None or not path.startswith(GUARDED_PREFIXES):
            return None
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return 401, TOKEN_MISSING, challenge
        if not secrets.compare_digest(credentials.strip().encode(), token.encode()):
            return 401, TOKEN_WRONG, challenge
        return None
