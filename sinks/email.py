"""Email over SMTP (aiosmtplib): multipart text + HTML, a few connections kept open and reused.

``HERALD_SMTP_URL`` says where: ``smtp://host:port`` (plain; ``?starttls=1`` upgrades with STARTTLS),
``smtps://host:port`` (TLS from the start), ``user:pass@`` for AUTH. Each message gets a ``Message-ID``
derived from its ``delivery_id`` (the same request always has the same id, so a mail system can spot a
copy), a ``List-Unsubscribe`` link (``HERALD_EMAIL_UNSUBSCRIBE_URL`` with ``?user=``) and the one-click
``List-Unsubscribe-Post``.

Answers: 2xx SENT; a 4xx reply, a dropped connection or a timeout is retryable; a 5xx reply (a refused
recipient, sender or message) is permanent. An address that is not ``local@domain.tld`` is permanent
(INVALID_ADDRESS) before any connection is made. AUTH refused is retryable too (the sink's credentials are
wrong, not the message: the circuit opens and requests wait for the fix). A connection that failed or timed out is closed and a new
one opened for the next message.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from email.utils import formatdate
from urllib.parse import quote, unquote, urlparse

import aiosmtplib

from sinks.provider import PermanentError, Provider, Sent, TransientError

_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                      r"[A-Za-z]{2,63}$")


def valid_address(address: str) -> bool:
    return len(address) <= 254 and bool(_ADDRESS.match(address)) and ".." not in address


def message_id(delivery_id: str) -> str:
    return f"<{hashlib.sha256(delivery_id.encode()).hexdigest()[:32]}@herald>"


def _header(value: str) -> str:
    """A header value: as is when ASCII, else RFC 2047 encoded words (base64, UTF-8)."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    words, chunk = [], b""
    for ch in value:  # whole characters per word, each word under 75 characters
        b = ch.encode()
        if len(chunk) + len(b) > 45:
            words.append(chunk)
            chunk = b""
        chunk += b
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode()}?=" for w in words)


def _b64(text: str) -> bytes:
    return base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")


def build(delivery_id: str, sender: str, to: str, subject: str, text: str, html: str, unsubscribe: str) -> bytes:
    """The message's bytes (CRLF lines): headers, then the text and HTML alternatives in base64."""
    boundary = "herald-" + hashlib.sha1(delivery_id.encode()).hexdigest()[:24]
    head = (f"From: {_header(sender)}\r\nTo: {to}\r\nSubject: {_header(subject)}\r\n"
            f"Date: {formatdate(time.time(), localtime=False, usegmt=True)}\r\nMessage-ID: {message_id(delivery_id)}\r\n"
            f"List-Unsubscribe: <{unsubscribe}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n")
    return b"".join([
        head.encode(),
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode(),
        _b64(text),
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode(),
        _b64(html),
        f"--{boundary}--\r\n".encode()])


def _envelope(address: str) -> str:
    m = re.search(r"<([^>]+)>", address)
    return m.group(1) if m else address.strip()


class EmailProvider(Provider):
    channel = "EMAIL"
    name = "smtp"

    def __init__(self, url: str, sender: str, unsubscribe_url: str, connections: int = 8, timeout: float = 10.0) -> None:
        u = urlparse(url)
        if u.scheme not in ("smtp", "smtps"):
            raise ValueError(f"HERALD_SMTP_URL must be smtp:// or smtps://, not {u.scheme or url!r}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (465 if u.scheme == "smtps" else 25)
        self.use_tls = u.scheme == "smtps"
        self.start_tls = "starttls=1" in (u.query or "") or "starttls=true" in (u.query or "")
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.sender = sender
        self.envelope_from = _envelope(sender)
        self.unsubscribe_url = unsubscribe_url
        self.timeout = timeout
        self.size = max(connections, 1)
        self._idle: asyncio.Queue[aiosmtplib.SMTP] | None = None

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        for _ in range(self.size):
            self._idle.put_nowait(self._client())

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(hostname=self.host, port=self.port, username=self.username, password=self.password,
                               use_tls=self.use_tls, start_tls=self.start_tls if not self.use_tls else False,
                               timeout=self.timeout)

    async def close(self) -> None:
        if self._idle is None:
            return
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                try:
                    await asyncio.wait_for(client.quit(), 2)
                except Exception:  # noqa: BLE001
                    client.close()

    def recipient(self, contact: dict | None):
        address = (contact or {}).get("email")
        if not address:
            return None
        if not valid_address(address):
            raise PermanentError("INVALID_ADDRESS", "the contact's email address is not local@domain.tld")
        return address

    async def send(self, request: dict, rendered: dict[str, str], to, done: set[str]) -> Sent:
        unsubscribe = f"{self.unsubscribe_url}{'&' if '?' in self.unsubscribe_url else '?'}user={quote(request['user_id'])}"
        data = build(request["delivery_id"], self.sender, to, rendered["subject"], rendered["text"],
                     rendered["html"], unsubscribe)
        assert self._idle is not None, "start() first"
        client = await self._idle.get()
        healthy = False
        try:
            if not client.is_connected:
                await client.connect()
            await client.sendmail(self.envelope_from, [to], data)
            healthy = True
            return Sent(ref=message_id(request["delivery_id"]))
        except aiosmtplib.SMTPAuthenticationError as exc:
            # the sink's credentials, not this message: retryable, so the breaker opens and requests wait
            raise TransientError(f"SMTP AUTH refused ({exc.code}): check HERALD_SMTP_URL") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            healthy = True
            code = exc.recipients[0].code if exc.recipients else 550
            if 400 <= code < 500:
                raise TransientError(f"recipient deferred ({code})") from None
            raise PermanentError("REJECTED", f"recipient refused ({code})") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                raise TransientError(f"SMTP {exc.code}") from None
            if exc.code >= 500:
                healthy = True
                raise PermanentError("REJECTED", f"SMTP {exc.code}") from None
            raise TransientError(f"SMTP {exc.code}") from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise TransientError(f"SMTP connection: {type(exc).__name__}") from None
        finally:
            if not healthy:
                client.close()  # a half-spoken session is not reused
                client = self._client()
            self._idle.put_nowait(client)
