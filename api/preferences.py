"""GET / PUT /v1/users/{user_id}/preferences: the effective preferences, with the Avro record's field names.

PUT replaces the whole document: keys left out take their defaults (``agents.preferences.defaults``), as
the pipeline reads a record with missing fields. It is checked with ``agents.preferences.validate``; any
problem is a 422 ``VALIDATION`` whose ``fields`` names each bad field (an unknown key is named too). A
``user_id`` in the body must be the path's. ``updated_at`` is the server's: the time of the write, and
always later than the user's previous one, whatever the body says.

Where a GET reads from (read-your-writes across ``herald api``'s processes): PostgreSQL. A PUT, under a
per-user advisory lock, writes the Avro record to ``herald.preferences`` (key user_id), waits for the
broker's acknowledgement, then stores the same document in ``user_preferences`` and commits; the answer
goes out after the commit. Any API process's GET after that reads the row, so a GET right after a PUT
returns it wherever the two land. The lock makes concurrent PUTs for one user reach the topic and the
table in the same order, so both end with the same last record. If the broker refuses, nothing is stored
(503); if the database fails after the broker took it, the answer is 500 and the topic is ahead of the
table until the next PUT. Reading the compacted topic instead would need every process to consume it
and to wait, on each GET, until it had read up to the PUT's offset: a broker round trip on every read.
The table holds what the API wrote; a record written straight to the topic by an admin reaches the
pipeline but not this GET. A user who never wrote any gets ``defaults(user_id)``.
"""
from __future__ import annotations

import re

from aiohttp import web

from agents.preferences import defaults, effective, validate
from api.http import POOL, json_body, json_response, user, validation
from api.outbox import publish_then_store

UNKNOWN = re.compile(r"^unknown key (['\"])(.*)\1$")

GET = "SELECT prefs FROM user_preferences WHERE user_id = $1"
LAST = "SELECT updated_at FROM user_preferences WHERE user_id = $1"
UPSERT = """
INSERT INTO user_preferences (user_id, prefs, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET prefs = excluded.prefs, updated_at = excluded.updated_at
"""


def problems_by_field(problems: list[str]) -> dict[str, str]:
    """``validate``'s messages as {field: problem}; each message starts with its field's name."""
    fields: dict[str, str] = {}
    for problem in problems:
        unknown = UNKNOWN.match(problem)
        if unknown:
            fields[unknown[2]] = "unknown key"
            continue
        field, _, rest = problem.partition(" ")
        fields[field] = rest or problem
    return fields


def checked(body: object, user_id: str) -> dict:
    """The effective preferences a PUT of ``body`` asks for; ``ApiError`` 422 naming each bad field."""
    if not isinstance(body, dict):
        raise validation({"body": "must be a JSON object"})
    fields = problems_by_field(validate(body))
    if "user_id" in body and body["user_id"] != user_id and "user_id" not in fields:
        fields["user_id"] = "must be the user of the path"
    if fields:
        raise validation(fields)
    return effective(body, user_id)


async def get_preferences(request: web.Request) -> web.Response:
    user_id = user(request)
    prefs = await request.app[POOL].fetchval(GET, user_id)
    return json_response(prefs if prefs is not None else defaults(user_id))


async def put_preferences(request: web.Request) -> web.Response:
    user_id = user(request)
    prefs = checked(await json_body(request), user_id)
    await publish_then_store(request, topic="preferences", schema="Preferences", user_id=user_id, record=prefs,
                             last_sql=LAST, upsert_sql=UPSERT, what="preferences")
    return json_response(prefs)
