"""Who may call the API, from where, and what the browser is told: the bearer token, the Host
allow-list, the bind check and the security headers.

Configuration comes from the environment of the process that serves (a Serve replica inherits the
serving job's), never from the command line, where other users of the machine could read it:

- ``RAYREC_API_TOKEN`` (the token itself) or ``RAYREC_API_TOKEN_FILE`` (a file holding it): when set,
  writes (``POST /events``, ``POST /items``) and per-user reads (``GET /recommend``, ``GET /users/{id}``)
  need ``Authorization: Bearer <token>``: 401 without one, 403 with a wrong one. The catalog
  (``/movies``, ``/similar``), ``/healthz``, the page and the schema stay open.
- ``RAYREC_ALLOWED_HOSTS``: a comma-separated list of host names the server answers to (``*.example.com``
  matches subdomains); other ``Host`` headers get 400 (DNS rebinding cannot drive the API). Unset: any.
- ``RAYREC_ALLOW_OPEN=1``: allow binding a non-loopback address without a token (:func:`check_bind`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rayrec import secrets

__all__ = [
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "HOSTS_ENV",
    "ALLOW_OPEN_ENV",
    "SecurityConfig",
    "OpenBind",
    "Unauthorized",
    "is_loopback",
    "check_bind",
    "SecurityMiddleware",
    "PAGE_CSP",
    "DOCS_CSP",
]

TOKEN_ENV = "RAYREC_API_TOKEN"
TOKEN_FILE_ENV = "RAYREC_API_TOKEN_FILE"
HOSTS_ENV = "RAYREC_ALLOWED_HOSTS"
ALLOW_OPEN_ENV = "RAYREC_ALLOW_OPEN"
_MIN_TOKEN = 16

#: the page loads its own script and style only; no frames, no plugins, no foreign form targets
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")  # fmt: skip
#: /docs and /redoc: FastAPI's pages load Swagger UI / ReDoc from jsDelivr with an inline bootstrap
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https:; "
            "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]  # fmt: skip


class OpenBind(ValueError):
    """Serving on a non-loopback address without a token was refused."""


class Unauthorized(Exception):
    """No valid bearer token: ``status`` 401 (none sent) or 403 (a wrong one)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SecurityConfig(BaseModel):
    """The token (None: the API is open) and the Host allow-list (empty: any host)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = None
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecurityConfig:
        """From ``RAYREC_API_TOKEN`` / ``RAYREC_API_TOKEN_FILE`` and ``RAYREC_ALLOWED_HOSTS``; a
        ValueError names the variable when one is wrong (both token variables set, an unreadable or
        empty file, a token shorter than 16 characters)."""
        env = os.environ if environ is None else environ
        token, path = env.get(TOKEN_ENV) or None, env.get(TOKEN_FILE_ENV) or None
        if token and path:
            raise ValueError(f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both")
        if path:
            try:
                token = Path(path).read_text().strip()
            except OSError as e:
                raise ValueError(f"{TOKEN_FILE_ENV}: cannot read the token file ({e.strerror})") from None
            if not token:
                raise ValueError(f"{TOKEN_FILE_ENV}: the token file is empty")
        if token is not None:
            token = token.strip()
            if len(token) < _MIN_TOKEN or any(c.isspace() for c in token):
                raise ValueError(f"the API token must be at least {_MIN_TOKEN} characters without spaces "
                                 "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")  # fmt: skip
            secrets.register(token)
        hosts = tuple(h.strip().lower() for h in (env.get(HOSTS_ENV) or "").split(",") if h.strip())
        return cls(token=SecretStr(token) if token else None, allowed_hosts=hosts)

    def authorize(self, header: str | None) -> None:
        """Check an ``Authorization`` header; :class:`Unauthorized` when it is missing or wrong."""
        if self.token is None:
            return
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized(401, "authorization: this endpoint needs a bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(value.strip().encode(), self.token.get_secret_value().encode()):
            raise Unauthorized(403, "authorization: the bearer token is not valid")

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.allowed_hosts:
            return True
        host = _hostname(host_header or "")
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.allowed_hosts)


def _hostname(header: str) -> str:
    """The host name of a Host header, without the port (``[::1]:8000`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, security: SecurityConfig, allow_open: bool | None = None) -> None:
    """Refuse (:class:`OpenBind`) to serve on a non-loopback ``host`` without a token, unless told to
    (``allow_open``, else ``RAYREC_ALLOW_OPEN=1``): anyone who reaches the port could write events and
    items and read every user's history."""
    if allow_open is None:
        allow_open = os.environ.get(ALLOW_OPEN_ENV, "") in ("1", "true", "yes")
    if is_loopback(host) or security.token is not None or allow_open:
        return
    raise OpenBind(
        f"refusing to serve on {host} without an API token: anyone who reaches it could post events and items "
        f"and read users' histories. Set {TOKEN_ENV} or {TOKEN_FILE_ENV} (clients then send "
        f"'Authorization: Bearer <token>'), serve on 127.0.0.1, or pass --allow-open / {ALLOW_OPEN_ENV}=1 to "
        "serve without one"
    )


class SecurityMiddleware:
    """ASGI middleware: 400 for a Host outside the allow-list (before anything else runs), and the
    security headers on every response (CSP with ``frame-ancestors 'none'``, ``nosniff``, no framing)."""

    def __init__(self, app: ASGIApp, config: SecurityConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        path = scope.get("path", "")
        csp = (DOCS_CSP if path in ("/docs", "/redoc") else PAGE_CSP).encode()

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", ()), *_HEADERS, (b"content-security-policy", csp)]}
            await send(msg)

        if not self.config.host_allowed(host):
            body = json.dumps({"error": "host: this server does not answer to that Host header", "field": "host"}).encode()
            await send_with_headers({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)
