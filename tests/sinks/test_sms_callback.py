"""The SMS provider asks for delivery receipts naming the delivery, against the local Twilio stand-in."""
from __future__ import annotations

from aiohttp.test_utils import TestServer

from infra.sandbox import Sandbox
from sinks.sms import SmsProvider


async def _send(status_callback: str) -> dict:
    sandbox = Sandbox()
    server = TestServer(sandbox.app())
    await server.start_server()
    provider = SmsProvider(str(server.make_url("")), "ACtest", "secret", "+15005550006", status_callback=status_callback)
    await provider.start()
    try:
        await provider.send({"delivery_id": "d-1/x"}, {"body": "hello"}, "+15550100001", set())
    finally:
        await provider.close()
        await server.close()
    assert len(sandbox.messages) == 1
    return sandbox.messages[0]


async def test_each_sms_names_its_delivery_in_the_status_callback():
    message = await _send("https://hooks.example/twilio?tenant=a")
    assert message["status_callback"] == "https://hooks.example/twilio?tenant=a&delivery_id=d-1%2Fx"


async def test_no_status_callback_unless_configured():
    assert (await _send(""))["status_callback"] is None
