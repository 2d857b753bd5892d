"""Bearer tokens: HS256 JWTs whose ``sub`` is the user id; scope ``admin`` may act for anyone.

The secret is ``HERALD_JWT_SECRET`` when set, else one generated once into the state folder
(readable by its owner only), so tokens minted by ``herald token`` keep working across restarts.
"""
from __future__ import annotations

import os
import secrets
import time

import jwt

from herald.paths import home
from herald.settings import Settings

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


def _token(header: str | None) -> str:
    if not header or not header.startswith("Bearer "):
        raise AuthError(401, "UNAUTHENTICATED", "send 'Authorization: Bearer <token>'; `herald token USER_ID` mints one")
    return header[len("Bearer "):]


def _verify(secret: str, token: str) -> dict:
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "TOKEN_EXPIRED", "the token has expired; mint a new one") from None
    except jwt.InvalidTokenError:
        raise AuthError(401, "INVALID_TOKEN", "the token is not valid for this server") from None


def _permit(claims: dict, user_id: str) -> dict:
    if claims["sub"] != user_id and "admin" not in str(claims.get("scope", "")).split():
        raise AuthError(403, "FORBIDDEN", "this token may only act for its own user")
    return claims


def authorize(secret: str, header: str | None, user_id: str) -> dict:
    """The token's claims if it may act for ``user_id``; ``AuthError`` (401 or 403) otherwise."""
    return _permit(_verify(secret, _token(header)), user_id)


class Verifier:
    """:func:`authorize` for one secret, remembering the claims of the last ``size`` valid tokens.

    A client sends the same token on every request until it expires, and checking an HS256 signature
    costs more than the rest of an unread-count request. A remembered token is still refused from the
    second its ``exp`` passes, as PyJWT would (expired when ``exp <= now``); tokens with an ``nbf``
    claim are checked every time. Only valid tokens are remembered; when full, the oldest goes first."""

    def __init__(self, secret: str, size: int = 50_000) -> None:
        self.secret, self.size = secret, size
        self._claims: dict[str, dict] = {}

    def authorize(self, header: str | None, user_id: str) -> dict:
        token = _token(header)
        claims = self._claims.get(token)
        if claims is None:
            claims = _verify(self.secret, token)
            if "nbf" not in claims:
                if len(self._claims) >= self.size:
                    del self._claims[next(iter(self._claims))]
                self._claims[token] = claims
        elif claims["exp"] <= time.time():
            del self._claims[token]
            raise AuthError(401, "TOKEN_EXPIRED", "the token has expired; mint a new one")
        return _permit(claims, user_id)
