"""Fetching, starting and stopping Herald's real local stack: Kafka, the schema registry, PostgreSQL."""
