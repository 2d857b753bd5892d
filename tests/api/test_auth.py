import time

import jwt
import pytest

from api.auth import AuthError, authorize, mint

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
