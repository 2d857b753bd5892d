"""Herald's wire-format codec as a Faust codec, so a Faust topic can send and read plain dicts as Avro.

Output topics use it directly (``value_serializer=avro_codec(...)``). The input topic does not: there a
record that fails to decode must be dead-lettered, not crash the stream, so the agent reads raw bytes and
calls ``Codec.decode`` itself.
"""
from __future__ import annotations

from typing import Any

import faust

from schemas.codec import Codec


class AvroCodec(faust.Codec):
    """Encodes with ``schema_name`` under ``subject``; decodes any registered writer into ``schema_name``."""

    def __init__(self, codec: Codec, subject: str, schema_name: str, **kwargs: Any) -> None:
        self.codec, self.subject, self.schema_name = codec, subject, schema_name
        super().__init__(codec=codec, subject=subject, schema_name=schema_name, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return self.codec.encode(self.subject, self.schema_name, obj)

    def _loads(self, s: bytes) -> Any:
        return self.codec.decode(s, self.schema_name)
