"""The policy: pure functions over plain data that decide each event's fate. No Kafka in here."""
