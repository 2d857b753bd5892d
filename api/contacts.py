"""GET / PUT /v1/users/{user_id}/contacts: where the sinks reach a user (``herald.Contact``).

PUT replaces the whole record: ``email`` (null or an address), ``phone`` (null or E.164: ``+`` then 2 to 15
digits, no leading zero), ``push_tokens`` (at most ``MAX_TOKENS`` distinct non-empty strings),
``locale`` (null or a BCP 47 tag such as ``en`` or ``pt-BR``); a missing key is null or empty. Any problem is a
422 ``VALIDATION`` naming the field, never echoing the value. ``updated_at`` is the server's. The record is
written to ``herald.contacts`` (key user_id) and, once acknowledged, stored in ``user_contacts`` for GETs
from any API process (the same order of writes as the preferences, see ``api.preferences``). A user with
none stored gets every address null.

Addresses, numbers and tokens are personal data: they appear in no log line and no metric label, and an
error names the field only.
"""
from __future__ import annotations

import re

from aiohttp import web

from api.http import POOL, json_body, json_response, user, validation
from api.outbox import publish_then_store

MAX_TOKENS = 20
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")
FIELDS = ("user_id", "email", "phone", "push_tokens", "locale", "updated_at")

GET = "SELECT contact FROM user_contacts WHERE user_id = $1"
LAST = "SELECT updated_at FROM user_contacts WHERE user_id = $1"
UPSERT = """
INSERT INTO user_contacts (user_id, contact, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET contact = excluded.contact, updated_at = excluded.updated_at
"""


def empty(user_id: str) -> dict:
    return {"user_id": user_id, "email": None, "phone": None, "push_tokens": [], "locale": None, "updated_at": 0}


def checked(body: object, user_id: str) -> dict:
    """The contact a PUT of ``body`` asks for; ``ApiError`` 422 naming each bad field."""
    if not isinstance(body, dict):
        raise validation({"body": "must be a JSON object"})
    fields = {key: "unknown key" for key in body if key not in FIELDS}
    if body.get("user_id", user_id) != user_id:
        fields["user_id"] = "must be the user of the path"
    email, phone, locale = body.get("email"), body.get("phone"), body.get("locale")
    if email is not None and not (isinstance(email, str) and len(email) <= 254 and EMAIL.match(email)):
        fields["email"] = "must be null or an email address such as name@example.com"
    if phone is not None and not (isinstance(phone, str) and E164.match(phone)):
        fields["phone"] = "must be null or an E.164 number: + then up to 15 digits, e.g. +14155550100"
    if locale is not None and not (isinstance(locale, str) and LOCALE.match(locale)):
        fields["locale"] = "must be null or a BCP 47 tag such as en or pt-BR"
    tokens = body.get("push_tokens", [])
    if tokens is None:
        tokens = []
    if not (isinstance(tokens, list) and len(tokens) <= MAX_TOKENS
            and all(isinstance(t, str) and 0 < len(t) <= 4096 for t in tokens)):
        fields["push_tokens"] = f"must be a list of at most {MAX_TOKENS} non-empty strings"
    if "updated_at" in body and (isinstance(body["updated_at"], bool) or not isinstance(body["updated_at"], int)):
        fields["updated_at"] = "must be a whole number (it is set by the server)"
    if fields:
        raise validation(fields)
    return {"user_id": user_id, "email": email, "phone": phone, "push_tokens": list(dict.fromkeys(tokens)),
            "locale": locale, "updated_at": 0}


async def get_contacts(request: web.Request) -> web.Response:
    user_id = user(request)
    contact = await request.app[POOL].fetchval(GET, user_id)
    return json_response(contact if contact is not None else empty(user_id))


async def put_contacts(request: web.Request) -> web.Response:
    user_id = user(request)
    contact = checked(await json_body(request), user_id)
    await publish_then_store(request, topic="contacts", schema="Contact", user_id=user_id, record=contact,
                             last_sql=LAST, upsert_sql=UPSERT, what="contacts")
    return json_response(contact)
