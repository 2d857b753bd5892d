import json

import fastavro

from schemas.loader import SCHEMA_NAMES, load_schema, schema_text


def test_every_contract_schema_is_self_contained_and_parses():
    for name in SCHEMA_NAMES:
        fastavro.parse_schema(json.loads(schema_text(name)))


def test_a_shared_enum_is_defined_once_then_referenced_by_name():
    text = schema_text("DeliveryRequest")
    assert text.count('"name": "Priority"') == 1 and text.count('"name": "Channel"') == 1


def test_notification_event_has_the_contract_fields_and_defaults():
    fields = {f["name"]: f for f in load_schema("NotificationEvent")["fields"]}
    for name in ("event_id", "user_id", "type", "priority", "title", "body", "data", "occurred_at", "dedup_key",
                 "batchable", "channels", "deliver_after", "cancel_key"):
        assert name in fields
    assert fields["dedup_key"]["default"] is None and fields["batchable"]["default"] is True
    assert fields["occurred_at"]["type"]["logicalType"] == "timestamp-millis"
