"""GET /openapi.json: the API's OpenAPI 3.1 description, every route with every answer it can give.

Written by hand beside the routes (``api/app.py`` adds them) and checked against the live API by
``tests/api/test_openapi.py`` (schemathesis): every documented request answers with a documented status,
content type and body, and never a 5xx. Every error is ``Error``; ``4XX`` on each operation covers the
caller's mistakes that any route shares (a malformed id, an unknown path).
"""
from __future__ import annotations

from aiohttp import web

from agents.preferences import DIGEST_MODES, PRIORITIES
from herald.enums import CHANNELS, KINDS

HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "the caller's mistake (see error.code)")
AUTH_ERRORS = {
    "401": _json(_ref("Error"), "no token, or one that is expired or not valid for this server"),
    "403": _json(_ref("Error"), "the token may not act for this user"),
    "4XX": ERROR,
}
USER = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
NOTIFICATION = {"name": "notification_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
BEARER = [{"bearer": []}]


def _user_op(summary: str, ok: dict, *, params: list | None = None, body: dict | None = None,
             extra: dict | None = None, op_id: str) -> dict:
    op = {"operationId": op_id, "summary": summary, "security": BEARER,
          "parameters": [USER, *(params or [])], "responses": {"200": ok, **AUTH_ERRORS, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _action(verb: str, op_id: str) -> dict:
    return {"post": _user_op(f"Mark one notification {verb}; answers the counts after it",
                             _json(_ref("UnreadCount"), "the counts after the change"), params=[NOTIFICATION],
                             extra={"404": _json(_ref("Error"), "no such notification for this user")}, op_id=op_id)}


WINDOW = {"type": "object", "required": ["start", "end"], "additionalProperties": False,
          "properties": {"start": {"type": "string", "pattern": HHMM}, "end": {"type": "string", "pattern": HHMM}}}
DND = {"type": "object", "required": ["day", "start", "end"], "additionalProperties": False,
       "properties": {"day": {"type": "integer", "minimum": 0, "maximum": 6},
                      "start": {"type": "string", "pattern": HHMM}, "end": {"type": "string", "pattern": HHMM}}}
PREFERENCE_FIELDS = {
    "user_id": {"type": "string", "description": "the path's user; optional in a PUT"},
    "timezone": {"type": "string", "description": "IANA name", "default": "UTC"},
    "channels": {"type": "object", "additionalProperties": {"type": "boolean"},
                 "description": "channel -> enabled; a missing entry means enabled"},
    "types": {"type": "object", "additionalProperties": {"type": "boolean"},
              "description": "event type -> enabled; a missing entry means enabled"},
    "minimum_priority": {"enum": list(PRIORITIES), "default": "LOW"},
    "quiet_hours": {"oneOf": [{"type": "null"}, WINDOW], "description": "local HH:MM; may cross midnight"},
    "dnd": {"type": "array", "items": DND, "description": "day 0-6, Monday 0"},
    "digest_mode": {"enum": list(DIGEST_MODES), "default": "IMMEDIATE"},
    "digest_time": {"type": ["string", "null"], "pattern": HHMM},
    "digest_day": {"type": ["integer", "null"], "minimum": 0, "maximum": 6},
    "batching": {"type": "boolean", "default": True},
    "batch_window_s": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 30},
    "max_batch_size": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
    "max_per_hour": {"type": ["integer", "null"], "minimum": 1, "maximum": 100000},
    "updated_at": {"type": "integer", "minimum": 0, "description": "epoch ms of the last write; set by the server"},
}
CONTACT_FIELDS = {
    "user_id": {"type": "string"},
    "email": {"type": ["string", "null"], "maxLength": 254},
    "phone": {"type": ["string", "null"], "pattern": r"^\+[1-9][0-9]{1,14}$", "description": "E.164"},
    "push_tokens": {"type": "array", "maxItems": 20, "items": {"type": "string", "minLength": 1, "maxLength": 4096}},
    "locale": {"type": ["string", "null"], "description": "BCP 47 tag"},
    "updated_at": {"type": "integer", "minimum": 0, "description": "epoch ms of the last write; set by the server"},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Herald query API", "version": "1",
             "description": "Unread counts, the in-app inbox, preferences, contacts and the live stream. Errors are "
                            "{\"error\": {\"code\", \"message\"}} with a 4xx for the caller's mistakes; a 5xx is a bug."},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "HS256; sub = the user; scope admin acts for anyone. `herald token USER_ID`"},
            "access_token": {"type": "apiKey", "in": "query", "name": "access_token",
                             "description": "the same token, for WebSocket clients that cannot set headers"},
        },
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "fields": {"type": "object", "additionalProperties": {"type": "string"},
                                          "description": "VALIDATION: each bad field and its problem"}}}}},
            "UnreadCount": {"type": "object", "required": ["user_id", "unread", "unseen"], "properties": {
                "user_id": {"type": "string"}, "unread": {"type": "integer", "minimum": 0},
                "unseen": {"type": "integer", "minimum": 0}}},
            "Notification": {"type": "object", "required": ["notification_id", "type", "priority", "kind", "title",
                                                            "body", "data", "event_ids", "created_at", "read", "seen"],
                             "properties": {
                                 "notification_id": {"type": "string"}, "type": {"type": "string"},
                                 "priority": {"enum": list(PRIORITIES)}, "kind": {"enum": list(KINDS)},
                                 "title": {"type": "string"}, "body": {"type": "string"},
                                 "data": {"type": "object"}, "event_ids": {"type": "array", "items": {"type": "string"}},
                                 "created_at": {"type": "string", "format": "date-time"},
                                 "read": {"type": "boolean"}, "seen": {"type": "boolean"},
                                 "channel": {"enum": list(CHANNELS), "description": "WEBSOCKET for a live-only delivery"}}},
            "NotificationPage": {"type": "object", "required": ["user_id", "notifications", "next_cursor"], "properties": {
                "user_id": {"type": "string"}, "notifications": {"type": "array", "items": _ref("Notification")},
                "next_cursor": {"type": ["string", "null"]}}},
            "Preferences": {"type": "object", "required": list(PREFERENCE_FIELDS), "properties": PREFERENCE_FIELDS},
            "PreferencesUpdate": {"type": "object", "additionalProperties": False, "properties": PREFERENCE_FIELDS,
                                  "description": "the whole document: keys left out take their defaults"},
            "Contact": {"type": "object", "required": list(CONTACT_FIELDS), "properties": CONTACT_FIELDS},
            "ContactUpdate": {"type": "object", "additionalProperties": False, "properties": CONTACT_FIELDS,
                              "description": "the whole record: keys left out are null or empty"},
            "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
            "StreamFrame": {"oneOf": [
                {"type": "object", "required": ["type", "notification"],
                 "properties": {"type": {"const": "notification"}, "notification": _ref("Notification")}},
                {"type": "object", "required": ["type", "unread", "unseen"],
                 "properties": {"type": {"const": "unread"}, "unread": {"type": "integer"}, "unseen": {"type": "integer"}}},
            ]},
        },
    },
    "paths": {
        "/v1/users/{user_id}/unread-count": {"get": _user_op(
            "The user's unread and unseen counts", _json(_ref("UnreadCount"), "the counts"), op_id="unreadCount")},
        "/v1/users/{user_id}/notifications": {"get": _user_op(
            "A page of in-app notifications, newest first", _json(_ref("NotificationPage"), "the page"),
            params=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "next_cursor of the previous page"},
                    {"name": "status", "in": "query", "schema": {"enum": ["unread", "all"], "default": "all"}}],
            extra={"400": _json(_ref("Error"), "a bad limit, cursor or status")}, op_id="listNotifications")},
        "/v1/users/{user_id}/notifications/read-all": {"post": _user_op(
            "Mark every notification read", _json(_ref("UnreadCount"), "the counts after it"), op_id="readAll")},
        "/v1/users/{user_id}/notifications/{notification_id}/read": _action("read", "readOne"),
        "/v1/users/{user_id}/notifications/{notification_id}/seen": _action("seen", "seenOne"),
        "/v1/users/{user_id}/notifications/{notification_id}/archive": _action("archived", "archiveOne"),
        "/v1/users/{user_id}/preferences": {
            "get": _user_op("The effective preferences", _json(_ref("Preferences"), "the preferences"),
                            op_id="getPreferences"),
            "put": _user_op("Replace the preferences (written to herald.preferences)",
                            _json(_ref("Preferences"), "the effective preferences as stored"),
                            body=_ref("PreferencesUpdate"),
                            extra={"400": _json(_ref("Error"), "the body is not JSON"),
                                   "413": _json(_ref("Error"), "the body is too large"),
                                   "422": _json(_ref("Error"), "invalid fields, each named in error.fields"),
                                   "503": _json(_ref("Error"), "the broker did not take the record; nothing changed")},
                            op_id="putPreferences")},
        "/v1/users/{user_id}/contacts": {
            "get": _user_op("The user's contact record", _json(_ref("Contact"), "the contact"), op_id="getContacts"),
            "put": _user_op("Replace the contact record (written to herald.contacts)",
                            _json(_ref("Contact"), "the contact as stored"), body=_ref("ContactUpdate"),
                            extra={"400": _json(_ref("Error"), "the body is not JSON"),
                                   "413": _json(_ref("Error"), "the body is too large"),
                                   "422": _json(_ref("Error"), "invalid fields, each named in error.fields"),
                                   "503": _json(_ref("Error"), "the broker did not take the record; nothing changed")},
                            op_id="putContacts")},
        "/v1/users/{user_id}/stream": {"get": {
            "operationId": "stream", "summary": "WebSocket of live notifications and unread counts",
            "description": "Upgrade to a WebSocket. Server frames are StreamFrame JSON; a ping every 20 s. An Origin "
                           "not in HERALD_ALLOWED_ORIGINS is refused (403) before the upgrade.",
            "security": [{"bearer": []}, {"access_token": []}],
            "parameters": [USER, {"name": "Origin", "in": "header", "schema": {"type": "string"}}],
            "responses": {
                "101": {"description": "switching to the WebSocket protocol; frames: StreamFrame",
                        "x-frames": _ref("StreamFrame")},
                **AUTH_ERRORS,
                "426": _json(_ref("Error"), "not a WebSocket upgrade request"),
            }}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This description", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness", "security": [],
                             "responses": {"200": _json(_ref("Status"), "the process answers")}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness", "security": [],
                            "responses": {"200": _json(_ref("Status"), "the database answers"),
                                          "503": _json(_ref("Error"), "the database does not answer")}}},
        "/inbox": {"get": {"operationId": "inbox", "summary": "The inbox page (sign in with #token=... in the URL)",
                           "security": [],
                           "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/inbox.js": {"get": {"operationId": "inboxScript", "summary": "The inbox page's script", "security": [],
                              "responses": {"200": {"description": "JavaScript",
                                                    "content": {"text/javascript": {"schema": {"type": "string"}}}}}}},
    },
}


async def serve(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
