"""How every Herald process writes its log lines: text (the default) or one JSON object a line.

``HERALD_LOG_FORMAT=json`` gives each record as ``{"time", "level", "logger", "message", "pid"}`` (plus
``"exception"`` with the traceback when there is one), one per line, for a log shipper to read without
parsing text. ``text`` is ``<time> <LEVEL> <logger>: <message>``. Anything else is refused with a message
naming the setting.

What goes in a message is the caller's business, and Herald's rule is that none carries a notification's
title or body, an address, a phone number or a token: ids, counts, channels and reasons only. The JSON
formatter adds nothing from the record but the fields above (no ``args``, no ``extra``), so it cannot leak
more than the text format does.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``time`` is UTC ISO-8601 with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"time": at, "level": record.levelname, "logger": record.name,
                               "message": record.getMessage(), "pid": record.process}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def check(fmt: str) -> str:
    """``fmt`` lower-cased if it is a known format; ValueError naming the setting otherwise."""
    value = (fmt or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"HERALD_LOG_FORMAT must be text or json, not {fmt!r}")
    return value


def formatter(fmt: str, text: str = TEXT_FORMAT) -> logging.Formatter:
    """The JSON formatter, or for text a ``logging.Formatter`` of the ``text`` layout."""
    return JsonFormatter() if check(fmt) == "json" else logging.Formatter(text)


def configure(fmt: str, level: int = logging.INFO, text: str = TEXT_FORMAT) -> None:
    """Log ``level`` and above to standard error in ``fmt`` (json, or text in the ``text`` layout), replacing
    any handler the root logger had."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt, text))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def faust_logging_config(fmt: str) -> dict | None:
    """For ``faust.Worker(logging_config=...)``: the worker's own handler with the JSON formatter (merged into
    the configuration Faust makes), or None for text, which leaves Faust's as it is."""
    if check(fmt) != "json":
        return None
    return {"version": 1, "merge": True, "formatters": {"herald_json": {"()": "herald.logs.JsonFormatter"}},
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "herald_json",
                                     "stream": "ext://sys.stdout"}}}


def line(fmt: str, level: str, logger: str, message: str) -> str:
    """One line (no newline) for a writer that is not a ``logging`` handler (the supervisor's own log)."""
    record = logging.LogRecord(logger, logging.getLevelName(level), "", 0, message, None, None)
    if check(fmt) == "json":
        return JsonFormatter().format(record)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level} {logger}: {message}"


class Repeats(logging.Filter):
    """Lets a message through the first time, then at most once every ``every_s`` seconds, saying how many
    like it were held back in between.

    "Like it" means the same logger, level and format string (the message before its arguments), so
    "Unable connect to node with id 1: ..." repeated for every retry during a broker outage is one line every
    ``every_s`` seconds, not one line per retry; a different message is never held back by another's count.
    Meant for a library's logger that repeats itself in a loop (``quiet_repeats``), not for Herald's own."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list] = {}  # key -> [when last let through, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{seen[1]:,} more like this in the last {now - seen[0]:.0f} s not logged]"
        if len(self._seen) >= 10_000:  # format strings are few; this only bounds a logger that formats its own
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def quiet_repeats(*names: str, every_s: float = 10.0) -> None:
    """Install one ``Repeats`` filter on each named logger (once: installing again changes nothing)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Repeats) for f in logger.filters):
            logger.addFilter(Repeats(every_s))
