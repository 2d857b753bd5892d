"""The API's producer is closed with the API: an outbox still referenced after ``close`` (by a task's
traceback, by a test) must not keep librdkafka dialling a broker that has gone."""
from __future__ import annotations

import socket
import time

from api.outbox import Outbox
from herald.settings import Settings


def test_a_closed_outbox_no_longer_dials_the_broker(capfd):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    outbox = Outbox(Settings.from_env(kafka_bootstrap=address), codec=None)  # type: ignore[arg-type]
    time.sleep(0.5)
    assert address in capfd.readouterr().err, "an open producer reports its refused connections"
    outbox.close(timeout=0)  # ``outbox`` stays referenced to the end, as a task's traceback would hold it
    time.sleep(0.3)
    capfd.readouterr()  # what it wrote as it closed
    time.sleep(1.5)
    assert address not in capfd.readouterr().err
