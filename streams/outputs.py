"""The pipeline's outputs as records: decisions to ``herald.decisions``, requests to each channel's topic.

Everything an outcome produces is encoded before anything of it is queued or stored: a record that cannot
be encoded (a subject the registry refuses) fails as a whole, before its user's state changes, so
re-driving its dead letter later is decided afresh instead of looking like a duplicate.
"""
from __future__ import annotations

from typing import cast

from agents.policy import Outcome
from herald.enums import CHANNELS
from herald.settings import Settings
from herald.topics import delivery_topic
from schemas.codec import Codec

Record = tuple[str, bytes, bytes]  # topic, key, value


class Outputs:
    def __init__(self, codec: Codec, settings: Settings) -> None:
        self.codec = codec
        self.requests = {c: delivery_topic(settings, c) for c in CHANNELS}
        self.decisions = settings.topic("decisions")

    def subjects(self) -> list[tuple[str, str]]:
        """Every (subject, schema name) the outputs are written with, to register at start-up."""
        return [(f"{t}-value", "DeliveryRequest") for t in self.requests.values()] + [
            (f"{self.decisions}-value", "Decision")]

    def encode(self, out: Outcome) -> list[Record]:
        """The outcome's records, requests first; raises if any cannot be encoded."""
        records = []
        for request in out.requests:
            topic = self.requests[request["channel"]]
            records.append((topic, request["user_id"].encode(),
                            self.codec.encode(f"{topic}-value", "DeliveryRequest", cast(dict, request))))
        for decision in out.decisions:
            records.append((self.decisions, decision["user_id"].encode(),
                            self.codec.encode(f"{self.decisions}-value", "Decision", cast(dict, decision))))
        return records
