import time

import jwt
import pytest

from api.auth import AuthError, Verifier, authorize, mint

SECRET = "s" * 40


def test_a_user_token_acts_for_its_user_only():
    token = mint(SECRET, "u1")
    assert authorize(SECRET, f"Bearer {token}", "u1")["sub"] == "u1"
    with pytest.raises(AuthError) as info:
        authorize(SECRET, f"Bearer {token}", "u2")
    assert info.value.status == 403


def test_an_admin_token_acts_for_anyone():
    assert authorize(SECRET, f"Bearer {mint(SECRET, 'ops', admin=True)}", "u2")["sub"] == "ops"


@pytest.mark.parametrize("header, code", [
    (None, "UNAUTHENTICATED"),
    ("Basic abc", "UNAUTHENTICATED"),
    ("Bearer not-a-jwt", "INVALID_TOKEN"),
    (f"Bearer {mint('another-secret-of-enough-length-1234', 'u1')}", "INVALID_TOKEN"),
    (f"Bearer {jwt.encode({'sub': 'u1', 'exp': int(time.time()) - 10}, SECRET, algorithm='HS256')}", "TOKEN_EXPIRED"),
])
def test_bad_tokens_are_401_with_a_code(header, code):
    with pytest.raises(AuthError) as info:
        authorize(SECRET, header, "u1")
    assert info.value.status == 401 and info.value.code == code


def test_the_verifier_answers_as_authorize_does_and_remembers_only_valid_tokens():
    verifier = Verifier(SECRET, size=2)
    token = mint(SECRET, "u1")
    for _ in range(2):  # the second time from memory
        assert verifier.authorize(f"Bearer {token}", "u1")["sub"] == "u1"
        with pytest.raises(AuthError) as info:
            verifier.authorize(f"Bearer {token}", "u2")
        assert info.value.status == 403
    with pytest.raises(AuthError):
        verifier.authorize("Bearer not-a-jwt", "u1")
    assert list(verifier._claims) == [token]
    others = [mint(SECRET, f"u{i}", ttl_s=100 + i) for i in range(3)]
    for i, other in enumerate(others):
        verifier.authorize(f"Bearer {other}", f"u{i}")
    assert list(verifier._claims) == others[1:]  # bounded: the oldest went first


def test_a_remembered_token_is_refused_once_it_expires(monkeypatch):
    verifier = Verifier(SECRET)
    token = mint(SECRET, "u1", ttl_s=60)
    verifier.authorize(f"Bearer {token}", "u1")
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(AuthError) as info:
        verifier.authorize(f"Bearer {token}", "u1")
    assert (info.value.status, info.value.code) == (401, "TOKEN_EXPIRED")


def test_a_token_with_not_before_is_checked_every_time():
    verifier = Verifier(SECRET)
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60, "nbf": int(time.time()) - 1, "iss": "herald",
                        "aud": "herald-api"}, SECRET, algorithm="HS256")
    assert verifier.authorize(f"Bearer {token}", "u1")["sub"] == "u1"
    assert not verifier._claims
