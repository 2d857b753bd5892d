"""Delivery workers, one per channel: read a delivery topic, send, record each attempt's outcome.

- ``runner``: the one runtime (consume, ledger claim, contact, template, send, record, report, commit).
- ``runtime``: builds a channel's sink (``herald sink CHANNEL`` runs ``runtime.run``).
- ``ledger``: once-only claims and the retry schedule in PostgreSQL; ``retry``: backoff; ``breaker``: the
  circuit per channel and provider; ``contacts``: the ``herald.contacts`` book; ``templates``: Jinja2
  rendering and the channels' limits (shipped templates in ``sinks/templates/<channel>/``).
- Providers behind ``provider.Provider``: ``email`` (SMTP), ``push`` (FCM HTTP v1), ``sms`` (Twilio REST);
  ``inapp`` writes the PostgreSQL inbox, its own ledger.
"""
