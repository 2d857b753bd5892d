"""The fault matrix (``python -m bench.chaos``): prove under faults that nothing is lost and nothing is sent twice.

A run brings up the whole stack on servers of its own (``stack.py``), produces a steady mixed stream
(``workload.py``), injects one fault at a time from the matrix at random moments (``faults.py``), reads back
everything the pipeline and the sinks wrote (``tap.py``) and what the providers and the inbox received, and
checks the invariants (``invariants.py``) from those records; ``report.py`` prints the table and keeps the
latest results in RELIABILITY.md. ``run.py`` ties them together.
"""
