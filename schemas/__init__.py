"""Herald's Avro schemas, the Confluent wire-format codec and its registry client."""
from schemas.codec import Codec, DecodeError
from schemas.loader import SCHEMA_NAMES, load_schema

__all__ = ["Codec", "DecodeError", "SCHEMA_NAMES", "load_schema"]
