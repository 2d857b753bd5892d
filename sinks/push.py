"""Push over the FCM HTTP v1 API: ``POST {base}/v1/projects/{project}/messages:send``, one per device token.

Each token's answer: 200 with a message ``name`` is sent; 404/400 whose error details say ``UNREGISTERED``
means the token is gone (the runtime removes it from the user's contact); 429 and 5xx, timeouts and
connection errors are retryable (``Retry-After`` honoured); any other 4xx, or a 200 whose body is not FCM's
answer, is permanent for that token. The request is SENT when some token got it and none is retryable; it is
retried when a token is retryable (the tokens served are kept, so a retry serves only the others); it is
permanent when no token got it. The data map travels only while the message stays under FCM's 4 KB.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp
import orjson

from sinks.provider import PermanentError, Provider, Sent, TransientError
from sinks.retry import retry_after_seconds

MAX_PAYLOAD = 4096


class PushProvider(Provider):
    channel = "PUSH"
    name = "fcm"

    def __init__(self, base_url: str, project: str, token: str = "", concurrency: int = 64, timeout: float = 10.0) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/projects/{project}/messages:send"
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.concurrency = concurrency
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self.headers)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def recipient(self, contact: dict | None):
        tokens = [t for t in (contact or {}).get("push_tokens") or [] if t]
        return tokens or None

    def _payload(self, token: str, request: dict, rendered: dict[str, str]) -> bytes:
        message = {"token": token, "notification": {"title": rendered["title"], "body": rendered["body"]}}
        data = {"delivery_id": request["delivery_id"], "type": request["type"], **(request.get("data") or {})}
        body = orjson.dumps({"message": {**message, "data": data}})
        if len(body) > MAX_PAYLOAD:
            body = orjson.dumps({"message": {**message, "data": {"delivery_id": request["delivery_id"]}}})
        return body

    async def _one(self, token: str, body: bytes) -> tuple[str, str, float | None]:
        """(outcome, detail, retry_after): outcome is ok, unregistered, transient or permanent."""
        try:
            async with self.session.post(self.url, data=body) as resp:
                text = await resp.read()
                if resp.status == 200:
                    try:
                        name = orjson.loads(text).get("name")
                    except (ValueError, AttributeError):
                        name = None
                    if isinstance(name, str) and name:
                        return "ok", name, None
                    return "permanent", "BAD_RESPONSE: 200 without a message name", None
                if resp.status == 429 or resp.status >= 500:
                    return "transient", f"HTTP {resp.status}", retry_after_seconds(resp.headers.get("Retry-After"))
                code = _fcm_error(text)
                if code == "UNREGISTERED":
                    return "unregistered", "UNREGISTERED", None
                return "permanent", f"HTTP {resp.status} {code or ''}".strip(), None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return "transient", f"{type(exc).__name__}", None

    async def send(self, request: dict, rendered: dict[str, str], to, done: set[str]) -> Sent:
        tokens = [t for t in to if t not in done]
        if len(tokens) == 1:  # the common case, without a task per token
            results = [await self._one(tokens[0], self._payload(tokens[0], request, rendered))]
        else:
            results = await asyncio.gather(*(self._one(t, self._payload(t, request, rendered)) for t in tokens))
        served = set(done) | {t for t, (o, _, _) in zip(tokens, results) if o == "ok"}
        gone = [t for t, (o, _, _) in zip(tokens, results) if o == "unregistered"]
        transient = [(d, ra) for o, d, ra in results if o == "transient"]
        permanent = [d for o, d, _ in results if o == "permanent"]
        if transient:
            waits = [ra for _, ra in transient if ra is not None]
            raise TransientError(f"{len(transient)} of {len(to)} tokens: {transient[0][0]}",
                                 retry_after=max(waits) if waits else None, done=served, unregistered=gone)
        if served:
            note = None
            if gone or permanent:
                note = f"{len(gone)} unregistered, {len(permanent)} refused of {len(to)} tokens"
            return Sent(ref=None, done=served, unregistered=gone, note=note)
        if permanent:
            reason = "BAD_RESPONSE" if permanent[0].startswith("BAD_RESPONSE") else "REJECTED"
            raise PermanentError(reason, f"{len(permanent)} of {len(to)} tokens: {permanent[0]}", unregistered=gone)
        raise PermanentError("UNREGISTERED", f"all {len(to)} tokens unregistered", unregistered=gone)


def _fcm_error(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return detail["errorCode"]
    return error.get("status")
