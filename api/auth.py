"""Bearer tokens: HS256 JWTs whose ``sub`` is the user id; scope ``admin`` may act for anyone.

Rules a token must meet, all checked on every request (a remembered token included):
- signed with HS256 and this server's secret (the algorithm is pinned: ``none`` or RS256 headers are refused);
- ``sub``, ``exp``, ``iss`` = ``ISSUER`` and ``aud`` = ``AUDIENCE`` present and right; an expired token is
  ``TOKEN_EXPIRED`` whatever else it lacks, any other fault ``INVALID_TOKEN`` (both 401);
- a token for another user needs scope ``admin`` (else 403).

``mint`` refuses a lifetime over ``MAX_TTL_S``, so no command hands out a token that outlives a rotation.

The secret is ``HERALD_JWT_SECRET`` when set, else one generated once into the state folder (readable by
its owner only), so tokens minted by ``herald token`` keep working across restarts. A secret shorter than
``MIN_SECRET_BYTES`` or a known placeholder (``change-me...``) is refused: HS256 is only as strong as the
secret. The file is written to a private temporary name and then linked into place; ``os.link`` fails
when the name exists (rename would replace it), so when several API processes start together exactly
one secret wins, every process reads that one, and none ever reads a half-written file.
"""
from __future__ import annotations

import os
import secrets
import time

import jwt

from herald.paths import home
from herald.settings import Settings

ALGORITHM = "HS256"
ISSUER = "herald"
AUDIENCE = "herald-api"
MAX_TTL_S = 30 * 24 * 3600
MIN_SECRET_BYTES = 32
PLACEHOLDERS = ("change-me", "changeme", "secret", "placeholder", "example")


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class WeakSecret(ValueError):
    """The configured signing secret is too short or a placeholder."""


def check_secret(secret: str) -> str:
    """``secret`` if it is fit to sign tokens; ``WeakSecret`` saying why not (never echoing it)."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise WeakSecret(f"HERALD_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes of random data "
                         f"(e.g. `openssl rand -base64 48`); unset it to use the generated one")
    lowered = secret.lower()
    if any(lowered.startswith(p) for p in PLACEHOLDERS):
        raise WeakSecret("HERALD_JWT_SECRET is a placeholder; set it to random data (e.g. `openssl rand -base64 48`)"
                         " or unset it to use the generated one")
    return secret


def signing_secret(settings: Settings) -> str:
    if settings.jwt_secret:
        return check_secret(settings.jwt_secret)
    path = home() / "jwt_secret"
    if not path.exists():
        tmp = path.with_name(f".jwt_secret.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race: use its secret
        finally:
            os.unlink(tmp)
    return check_secret(path.read_text().strip())


def mint(secret: str, user_id: str, admin: bool = False, ttl_s: int = MAX_TTL_S) -> str:
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"a token lives from 1 second to {MAX_TTL_S} seconds (30 days)")
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + ttl_s, "scope": "admin" if admin else "user",
              "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _token(header: str | None) -> str:
    if not header or not header.startswith("Bearer "):
        raise AuthError(401, "UNAUTHENTICATED", "send 'Authorization: Bearer <token>'; `herald token USER_ID` mints one")
    return header[len("Bearer "):]


def _verify(secret: str, token: str) -> dict:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "TOKEN_EXPIRED", "the token has expired; mint a new one") from None
    except jwt.InvalidTokenError:
        raise AuthError(401, "INVALID_TOKEN", "the token is not valid for this server") from None
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise AuthError(401, "INVALID_TOKEN", "the token is not valid for this server")
    return claims


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
        return self.authorize_token(_token(header), user_id)

    def authorize_token(self, token: str, user_id: str) -> dict:
        """:meth:`authorize` for a bare token (the WebSocket's ``?access_token=``)."""
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
