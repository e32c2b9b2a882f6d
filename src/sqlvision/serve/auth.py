"""Bearer tokens: with any configured, every data endpoint needs one; writes always need one
(sent in the ``Authorization`` header, never a cookie, so another site cannot forge them)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sqlvision.serve.problems import Problem

COOKIE = "sv_token"  # lets <img> tags of the UI load images when reads need a token
bearer = HTTPBearer(auto_error=False, description="a token given to sqlvision serve --token")


def _match(tokens: dict[str, str], secret: str | None) -> str | None:
    """The name of the token whose secret is ``secret`` (compared in constant time)."""
    if not secret:
        return None
    found = None
    for name, value in tokens.items():
        if hmac.compare_digest(value.encode(), secret.encode()):
            found = name
    return found


def _header_secret(request: Request) -> str | None:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def check_read(request: Request) -> None:
    """Reads: open without tokens; else a valid token in the header or the UI's cookie."""
    tokens: dict[str, str] = request.app.state.config.tokens
    if not tokens:
        return
    if _match(tokens, _header_secret(request)) or _match(tokens, request.cookies.get(COOKIE)):
        return
    raise Problem(401, "this server needs a token", "send Authorization: Bearer TOKEN",
                  headers={"WWW-Authenticate": "Bearer"})


def check_write(request: Request) -> str:
    """Writes: a valid token in the ``Authorization`` header; returns the token's name."""
    tokens: dict[str, str] = request.app.state.config.tokens
    if not tokens:
        raise Problem(403, "writes are disabled: this server has no tokens",
                      "restart it with --token NAME:SECRET (or $SQLVISION_TOKEN)")
    name = _match(tokens, _header_secret(request))
    if name is None:
        raise Problem(401, "writes need a token", "send Authorization: Bearer TOKEN",
                      headers={"WWW-Authenticate": "Bearer"})
    return name


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


async def read_access(request: Request, _credentials: Credentials) -> None:
    """Dependency form of :func:`check_read` (declares the bearer scheme in OpenAPI)."""
    check_read(request)


async def write_access(request: Request, _credentials: Credentials) -> str:
    """Dependency form of :func:`check_write`: the writing token's name."""
    return check_write(request)
