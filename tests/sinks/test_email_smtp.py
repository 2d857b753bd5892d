"""The SMTP provider against a real SMTP server (aiosmtpd, in this process): AUTH from the URL, connections
reused, 4xx retryable and 5xx permanent."""
from __future__ import annotations

import asyncio
import warnings

import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from sinks.email import EmailProvider
from sinks.provider import PermanentError, TransientError
from tests.sinks.helpers import free_port


class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.logins: list[bytes] = []
        self.sessions = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("later"):
            return "451 4.3.0 later"
        if address.startswith("never"):
            return "550 5.1.1 unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append(auth_data.login)
        return AuthResult(success=auth_data.login == b"herald" and auth_data.password == b"s3cret")


@pytest.fixture
async def smtp_server():
    recorder = Recorder()
    port = free_port()
    loop = asyncio.get_running_loop()
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")  # a test server on loopback
    server = await loop.create_server(lambda: SMTP(recorder, authenticator=recorder.authenticate, auth_required=True,
                                                   auth_require_tls=False, loop=loop), "127.0.0.1", port)
    yield recorder, port
    server.close()


def request(i: int) -> dict:
    return {"delivery_id": f"d{i}", "user_id": "u1", "type": "COMMENT", "kind": "SINGLE"}


RENDERED = {"subject": "S", "text": "t\n", "html": "<p>h</p>"}


async def test_auth_from_the_url_and_one_connection_reused(smtp_server):
    recorder, port = smtp_server
    provider = EmailProvider(f"smtp://herald:s3cret@127.0.0.1:{port}", "Herald <h@x.test>", "http://u.test/",
                             connections=1, timeout=5)
    await provider.start()
    try:
        for i in range(3):
            await provider.send(request(i), RENDERED, "a@x.test", set())
        with pytest.raises(TransientError):
            await provider.send(request(10), RENDERED, "later@x.test", set())
        with pytest.raises(PermanentError) as caught:
            await provider.send(request(11), RENDERED, "never@x.test", set())
        assert caught.value.reason == "REJECTED"
        await provider.send(request(12), RENDERED, "a@x.test", set())
    finally:
        await provider.close()
    assert len(recorder.messages) == 4 and recorder.logins == [b"herald"] and recorder.sessions == 1


async def test_a_wrong_password_is_not_sent_and_is_retryable(smtp_server):
    recorder, port = smtp_server
    provider = EmailProvider(f"smtp://herald:wrong@127.0.0.1:{port}", "h@x.test", "http://u.test/", 1, 5)
    await provider.start()
    try:
        with pytest.raises(TransientError):  # aiosmtpd answers a bad login slowly: a refusal or a timeout
            await provider.send(request(1), RENDERED, "a@x.test", set())
    finally:
        await provider.close()
    assert recorder.messages == []
