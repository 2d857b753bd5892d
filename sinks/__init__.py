"""Delivery workers, one per channel: read a delivery topic, send, record each attempt's outcome."""
