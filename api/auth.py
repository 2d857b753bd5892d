"""Bearer tokens: HS256 JWTs whose ``sub`` is the user id; scope ``admin`` may act for anyone.

The secret is ``HERALD_JWT_SECRET`` when set, else one generated once into the state folder
(readable by its owner only), so tokens minted by ``herald token`` keep working across restarts.
"""
from __future__ import annotations

import os
import secrets
import time

import jwt

from infra.common import home
from streams.settings import Settings

ALGORITHM = "HS256"


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def signing_secret(settings: Settings) -> str:
    if settings.jwt_secret:
        return settings.jwt_secret
    path = home() / "jwt_secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def mint(secret: str, user_id: str, admin: bool = False, ttl_s: int = 30 * 24 * 3600) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + ttl_s, "scope": "admin" if admin else "user"}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def authorize(secret: str, header: str | None, user_id: str) -> dict:
    """The token's claims if it may act for ``user_id``; ``AuthError`` (401 or 403) otherwise."""
    if not header or not header.startswith("Bearer "):
        raise AuthError(401, "UNAUTHENTICATED", "send 'Authorization: Bearer <token>'; `herald token USER_ID` mints one")
    try:
        claims = jwt.decode(header[len("Bearer "):], secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "TOKEN_EXPIRED", "the token has expired; mint a new one") from None
    except jwt.InvalidTokenError:
        raise AuthError(401, "INVALID_TOKEN", "the token is not valid for this server") from None
    scopes = str(claims.get("scope", "")).split()
    if claims["sub"] != user_id and "admin" not in scopes:
        raise AuthError(403, "FORBIDDEN", "this token may only act for its own user")
    return claims
