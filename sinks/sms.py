"""SMS over the Twilio Messages REST API: ``POST {base}/2010-04-01/Accounts/{sid}/Messages.json``.

Form-encoded ``To``, ``From``, ``Body`` with basic auth (account SID, auth token). 200/201 with a message
``sid`` is sent; 429 and 5xx, timeouts and connection errors are retryable (``Retry-After`` honoured); a 400
about the number (Twilio codes 21211, 21614, 21610) is INVALID_ADDRESS; any other 4xx, or a 2xx whose body
has no ``sid``, is permanent. A number that is not E.164 (``+`` and 7 to 15 digits) is INVALID_ADDRESS before
anything is sent. The body is one segment (``sinks/templates.py`` cuts it). With a status callback URL
configured, each message carries ``StatusCallback=<url>?delivery_id=<id>``: Twilio's delivery receipts then
name the delivery they are about.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
from urllib.parse import urlencode

import aiohttp

from sinks.provider import PermanentError, Provider, Sent, TransientError
from sinks.retry import retry_after_seconds

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BAD_NUMBER = {21211, 21214, 21217, 21407, 21610, 21612, 21614}


class SmsProvider(Provider):
    channel = "SMS"
    name = "twilio"

    def __init__(self, base_url: str, account: str, token: str, sender: str, concurrency: int = 64,
                 timeout: float = 10.0, status_callback: str = "") -> None:
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account}/Messages.json"
        self.authorization = "Basic " + base64.b64encode(f"{account}:{token}".encode()).decode()
        self.sender = sender
        self.status_callback = status_callback
        self.concurrency = concurrency
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers={"Authorization": self.authorization})

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def recipient(self, contact: dict | None):
        phone = (contact or {}).get("phone")
        if not phone:
            return None
        if not E164.match(phone):
            raise PermanentError("INVALID_ADDRESS", "the contact's phone is not an E.164 number")
        return phone

    async def send(self, request: dict, rendered: dict[str, str], to, done: set[str]) -> Sent:
        fields = {"To": to, "From": self.sender, "Body": rendered["body"]}
        if self.status_callback:
            joint = "&" if "?" in self.status_callback else "?"
            fields["StatusCallback"] = f"{self.status_callback}{joint}{urlencode({'delivery_id': request['delivery_id']})}"
        form = urlencode(fields).encode()
        try:
            async with self.session.post(self.url, data=form, headers=FORM) as resp:
                text = await resp.read()
                if 200 <= resp.status < 300:
                    try:
                        sid = json.loads(text).get("sid")
                    except (ValueError, AttributeError):
                        sid = None
                    if isinstance(sid, str) and sid:
                        return Sent(ref=sid)
                    raise PermanentError("BAD_RESPONSE", f"HTTP {resp.status} without a message sid")
                if resp.status == 429 or resp.status >= 500:
                    raise TransientError(f"HTTP {resp.status}", retry_after_seconds(resp.headers.get("Retry-After")))
                try:
                    code = json.loads(text).get("code")
                except (ValueError, AttributeError):
                    code = None
                if code in BAD_NUMBER:
                    raise PermanentError("INVALID_ADDRESS", f"HTTP {resp.status} code {code}")
                raise PermanentError("REJECTED", f"HTTP {resp.status} code {code}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransientError(type(exc).__name__) from None
