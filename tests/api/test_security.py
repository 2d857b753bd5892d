"""Tokens and the signing secret: what is refused, and that one secret is made when many processes start."""
from __future__ import annotations

import base64
import json
import multiprocessing
import time

import jwt
import pytest

from api import auth
from api.auth import AuthError, WeakSecret, authorize, check_secret, mint, signing_secret
from herald.settings import Settings

SECRET = "q" * 40


def claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "u1", "iat": now, "exp": now + 60, "iss": auth.ISSUER, "aud": auth.AUDIENCE, **extra}


def refused(token: str) -> str:
    with pytest.raises(AuthError) as info:
        authorize(SECRET, f"Bearer {token}", "u1")
    assert info.value.status == 401
    return info.value.code


def test_minted_tokens_carry_issuer_audience_and_expiry():
    decoded = jwt.decode(mint(SECRET, "u1"), SECRET, algorithms=["HS256"], audience=auth.AUDIENCE)
    assert decoded["iss"] == "herald" and decoded["aud"] == "herald-api" and decoded["exp"] > time.time()


@pytest.mark.parametrize("change", [
    {"aud": None}, {"iss": None}, {"aud": "another-api"}, {"iss": "someone-else"}, {"exp": None}, {"sub": None},
    {"sub": ""}, {"sub": 12},
])
def test_a_token_without_the_right_claims_is_refused(change):
    body = {k: v for k, v in {**claims(), **change}.items() if v is not None}
    assert refused(jwt.encode(body, SECRET, algorithm="HS256")) == "INVALID_TOKEN"


def test_only_hs256_with_this_secret_is_accepted():
    assert refused(jwt.encode(claims(), SECRET, algorithm="HS512")) == "INVALID_TOKEN"
    assert refused(jwt.encode(claims(), "another-secret-of-enough-length-12345", algorithm="HS256")) == "INVALID_TOKEN"
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    assert refused(f"{header}.{payload}.") == "INVALID_TOKEN"


def test_an_expired_token_says_so():
    assert refused(jwt.encode(claims(exp=int(time.time()) - 1), SECRET, algorithm="HS256")) == "TOKEN_EXPIRED"


def test_token_lifetimes_are_bounded():
    with pytest.raises(ValueError):
        mint(SECRET, "u1", ttl_s=auth.MAX_TTL_S + 1)
    with pytest.raises(ValueError):
        mint(SECRET, "u1", ttl_s=0)
    assert authorize(SECRET, f"Bearer {mint(SECRET, 'u1', ttl_s=auth.MAX_TTL_S)}", "u1")["sub"] == "u1"


@pytest.mark.parametrize("secret", ["short", "x" * 31, "change-me-to-a-long-random-secret", "CHANGEME" + "x" * 40,
                                    "secret" + "y" * 40])
def test_weak_or_placeholder_secrets_are_refused(secret):
    with pytest.raises(WeakSecret) as info:
        check_secret(secret)
    assert secret not in str(info.value)
    with pytest.raises(WeakSecret):
        signing_secret(Settings(jwt_secret=secret))


def _read_secret(home: str, start, out) -> None:
    import os

    os.environ["HERALD_HOME"] = home
    start.wait()
    out.put(signing_secret(Settings()))


def test_processes_starting_together_share_one_generated_secret(tmp_path, monkeypatch):
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_read_secret, args=(str(tmp_path), start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    secrets = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(30)
    path = tmp_path / "jwt_secret"
    assert secrets == {path.read_text().strip()} and len(path.read_text().strip()) >= auth.MIN_SECRET_BYTES
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["jwt_secret"]  # no temporary file left behind
