"""Herald's reference, generated from the code so that it cannot drift from it.

    .venv/bin/python docs/generate.py           # rewrite the generated parts of docs/*.md
    .venv/bin/python docs/generate.py --check   # exit 1, naming the files that are out of date

Each generated part of a page sits between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; everything outside the markers is written by hand and kept. The
sources: topics from ``herald/topics.py`` (``SPECS``), schemas from ``schemas/avro/*.avsc``, dead-letter
headers from ``herald/dlq.py``, dead-letter reasons found in the code (``reason_codes``), the API's
routes from ``api/openapi.py``, the command line from each command's ``--help``, every ``HERALD_*``
setting from ``herald/settings.py`` and the performance targets from ``bench/targets.py``.

Generating fails, saying what to add here, when the code has a topic, a dead-letter header or a
reason code this file does not describe (and when it describes one the code no longer has).
``tests/test_reference.py`` runs the check.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HELP_COLUMNS = "100"  # --help wraps at the terminal's width; the reference is rendered at one fixed width
SCANNED = ("agents", "api", "herald", "schemas", "sinks", "streams")

# topic (without the prefix) -> (key, written by, meaning); delivery.<channel> share one entry
TOPICS = {
    "events": ("user_id", "producers", "what happened and who should hear of it"),
    "delivery.<channel>": ("user_id", "the pipeline", "one message to send on one channel (single, batch or digest)"),
    "delivery.status": ("delivery_id", "sinks", "every delivery attempt's outcome"),
    "decisions": ("user_id", "the pipeline", "every decision on an event; exactly one final one per accepted event"),
    "reads": ("user_id", "the API", "read, seen and archived actions: the source of unread counts"),
    "preferences": ("user_id", "the API, admins",
                    "each user's preferences; a null value resets them to the defaults"),
    "presence": ("user_id", "the API", "WebSocket connects and disconnects, with an expiry"),
    "contacts": ("user_id", "the API, any producer", "where each user can be reached: email, phone, push tokens"),
    "dlq": ("the original key", "every stage", "input that could not be processed: the original bytes, "
                                               "unchanged, with the dead-letter headers below"),
}

HEADERS = {
    "herald.error.reason": "a stable code from the table below",
    "herald.error.message": "what was wrong, for a person (at most 1,000 characters; names fields, never their content)",
    "herald.error.stage": "where: `ingest`, `preferences`, `pipeline`, `sink-<channel>`, `api-websocket`",
    "herald.source.topic": "the topic the record was read from",
    "herald.source.partition": "its partition",
    "herald.source.offset": "its offset",
    "herald.error.truncated": "present only when the value was too large to send whole: the original size in bytes "
                              "(the value is cut to fit)",
    "herald.replayed.from": "on a record `herald replay --dlq` sent back: the dead letter it came from, "
                            "`<topic>:<partition>:<offset>`",
}

# reason code -> (who raises it, what it means and what to do)
REASONS = {
    "TOMBSTONE": ("decoding", "a null value where a record was expected"),
    "TOO_LARGE": ("decoding", "the record is over the size limit (`HERALD_MAX_EVENT_BYTES` for events)"),
    "INVALID_MAGIC_BYTE": ("decoding", "not the Confluent wire format (often JSON sent without the Avro serializer)"),
    "SCHEMA_NOT_FOUND": ("decoding", "the schema id in the record is not in the registry"),
    "SCHEMA_MISMATCH": ("decoding", "the record was written with another record's schema (meant for another topic)"),
    "DECODE_ERROR": ("decoding", "the Avro body does not read with its schema"),
    "VALIDATION": ("ingest, preferences", "decoded but not acceptable: the message names the field and the rule"),
    "INTERNAL": ("pipeline, sinks", "a bug while processing the record; it is kept so nothing is lost"),
    "MAX_ATTEMPTS": ("sinks", "the provider kept failing (429, 5xx, timeouts) for `HERALD_SINK_MAX_ATTEMPTS` attempts"),
    "IN_DOUBT": ("sinks", "the sending process stopped between claiming and recording a send: it may have gone out, "
                          "so it is never sent again"),
    "REJECTED": ("sinks", "the provider refused the message for good (a 4xx other than 429)"),
    "INVALID_ADDRESS": ("sinks", "the user's address for the channel is not usable (not an email, not E.164)"),
    "BAD_RESPONSE": ("sinks", "the provider answered success without what proves it (e.g. no message id)"),
    "UNREGISTERED": ("sinks (push)", "every push token of the user is unregistered"),
    "TEMPLATE": ("sinks", "the channel's template failed to render"),
}

# "Schema.field" -> meaning, for fields whose .avsc has no doc of its own
FIELD_NOTES = {
    "NotificationEvent.priority": "CRITICAL is never batched, throttled or held by quiet hours",
    "NotificationEvent.title": "plain text; templates may replace it per channel",
    "NotificationEvent.body": "plain text; templates may replace it per channel",
    "NotificationEvent.occurred_at": "when it happened, milliseconds since the epoch",
    "NotificationEvent.batchable": "may be merged with others of the same type",
    "NotificationEvent.deliver_after": "scheduled delivery: held until then",
    "Decision.outcome": "the event's fate",
    "Decision.at": "when it was decided (the record's own timestamp)",
    "DeliveryRequest.kind": "one event, a batch or a digest",
    "DeliveryRequest.event_ids": "the events it carries",
    "DeliveryStatus.status": "the attempt's outcome",
    "DeliveryStatus.attempt": "1 for the first attempt",
    "Contact.user_id": "whose contact this is; also the record's key",
    "Contact.updated_at": "when it was last written",
    "Decision.event_id": "the event decided",
    "Decision.user_id": "its recipient",
    "Decision.channels": "the channels it goes (or will go) to; empty when it goes nowhere",
    "DeliveryRequest.user_id": "the recipient",
    "DeliveryRequest.channel": "the channel to send on",
    "DeliveryRequest.type": "the event type (a batch's or digest's common type)",
    "DeliveryRequest.priority": "the most urgent of its events",
    "DeliveryRequest.title": "plain text, before the channel's template",
    "DeliveryRequest.body": "plain text, before the channel's template",
    "DeliveryRequest.data": "template variables, from the event",
    "DeliveryRequest.created_at": "when the pipeline made it",
    "DeliveryStatus.delivery_id": "the delivery this attempt was for; also the record's key",
    "DeliveryStatus.channel": "its channel",
    "DeliveryStatus.provider": "who was asked (smtp, fcm, twilio, inapp, ...)",
    "DeliveryStatus.error": "what went wrong; null when SENT",
    "DeliveryStatus.at": "when the attempt ended",
    "Preferences.user_id": "whose preferences; also the record's key",
    "Preferences.minimum_priority": "events below it are SUPPRESSED_PREFERENCE",
    "Preferences.quiet_hours": "a daily local window in which non-CRITICAL events wait",
    "Preferences.dnd": "do-not-disturb windows per weekday, as quiet hours",
    "Preferences.digest_mode": "IMMEDIATE, or gather LOW and batchable events into one digest per period",
    "Preferences.batching": "whether events of the same type are merged within the batch window",
    "Preferences.batch_window_s": "seconds a batch stays open",
    "Preferences.max_batch_size": "a batch this large goes at once",
    "Preferences.max_per_hour": "the user's own hourly cap per channel; null: the default limits",
    "Preferences.updated_at": "when they were last written",
    "DndWindow.start": "local HH:MM",
    "DndWindow.end": "local HH:MM; may be before start (crosses midnight)",
    "Presence.user_id": "whose connection; also the record's key",
    "Presence.online": "true on connect, false on disconnect",
    "Presence.connection_id": "one WebSocket connection",
    "Presence.at": "when it happened",
    "ReadEvent.user_id": "who acted; also the record's key",
    "ReadEvent.action": "what they did",
    "ReadEvent.at": "when",
}

_CALL = re.compile(r'\b(?:DecodeError|ValidationError|PermanentError|_permanent|dead_letter)\([^"\n]*?"([A-Z][A-Z0-9_]{2,})"')
_ASSIGN = re.compile(r'\breason\s*=\s*(.*)')
_CODE = re.compile(r'"([A-Z][A-Z0-9_]{2,})"')


class Undocumented(Exception):
    """The code has something this generator does not describe (or the reverse); the message says what."""


# -- sources ---------------------------------------------------------------------------------------

def reason_codes(root: Path = ROOT) -> dict[str, list[str]]:
    """Every dead-letter reason code the code can produce, with the files that produce it: the first string
    literal of a ``DecodeError(``, ``ValidationError(``, ``PermanentError(``, ``_permanent(`` or
    ``dead_letter(`` call, and the upper-case literals assigned to a ``reason``."""
    found: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            for line in path.read_text(encoding="utf-8").splitlines():
                codes = _CALL.findall(line)
                if (assigned := _ASSIGN.search(line)) is not None:
                    codes += _CODE.findall(assigned.group(1))
                for code in codes:
                    found.setdefault(code, set()).add(str(path.relative_to(root)))
    return {code: sorted(paths) for code, paths in sorted(found.items())}


def _check_same(what: str, code: set[str], described: set[str]) -> None:
    missing, stale = sorted(code - described), sorted(described - code)
    if missing or stale:
        raise Undocumented(f"{what}: " + "; ".join(filter(None, [
            missing and f"describe {', '.join(missing)} in docs/generate.py",
            stale and f"{', '.join(stale)} described in docs/generate.py but not in the code any more"])))


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(head: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- sections --------------------------------------------------------------------------------------

def topics() -> str:
    from herald.enums import CHANNELS
    from herald.topics import SPECS

    names = {"delivery.<channel>" if s.name.startswith("delivery.") and s.name != "delivery.status" else s.name
             for s in SPECS}
    _check_same("topics in herald/topics.py SPECS", names, set(TOPICS))
    rows, done = [], set()
    for spec in SPECS:
        name = spec.name
        if name.startswith("delivery.") and name != "delivery.status":
            if "delivery.<channel>" in done:
                continue
            done.add(name := "delivery.<channel>")
        key, writer, meaning = TOPICS[name]
        shown = f"`herald.{name}`"
        if name == "delivery.<channel>":
            shown += " (" + ", ".join(c.lower() for c in CHANNELS) + ")"
        value = f"`herald.{spec.schema}`" if spec.schema else "the original bytes"
        rows.append((shown, key, value, writer, ("compacted; " if spec.compacted else "") + meaning))
    return _table(("topic", "key", "value", "written by", "meaning"), rows)


def _avro_type(t: object, nested: list[dict]) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        others = [_avro_type(x, nested) for x in t if x != "null"]
        return ("null or " if "null" in t else "") + " or ".join(others)
    assert isinstance(t, dict)
    kind = t["type"]
    if t.get("logicalType"):
        return f"{kind} ({t['logicalType']})"
    if kind == "record":
        nested.append(t)
        return f"record {t['name']}"
    if kind == "enum":
        return f"enum {t['name']} {{{', '.join(t['symbols'])}}}"
    if kind == "array":
        return f"array of {_avro_type(t['items'], nested)}"
    if kind == "map":
        return f"map of {_avro_type(t['values'], nested)}"
    return _avro_type(kind, nested)


def _record(schema: dict, level: str) -> list[str]:
    nested: list[dict] = []
    rows = []
    for f in schema["fields"]:
        note = f.get("doc") or FIELD_NOTES.get(f"{schema['name']}.{f['name']}", "")
        default = f"`{json.dumps(f['default'])}`" if "default" in f else "required"
        rows.append((f"`{f['name']}`", _avro_type(f["type"], nested), default, note))
    out = [f"{level} `herald.{schema['name']}`", ""]
    if schema.get("doc"):
        out += [schema["doc"], ""]
    out += [_table(("field", "type", "default", "meaning"), rows), ""]
    for inner in nested:
        out += _record(inner, level + "#")
    return out


def _records(t: object) -> Iterator[dict]:
    """Every record schema in the Avro type ``t``: itself and the ones nested in it."""
    if isinstance(t, list):
        for x in t:
            yield from _records(x)
    elif isinstance(t, dict) and t.get("type") == "record":
        yield t
        for f in t["fields"]:
            yield from _records(f["type"])
    elif isinstance(t, dict) and t.get("type") in ("array", "map"):
        yield from _records(t.get("items", t.get("values")))


def schemas() -> str:
    out: list[str] = []
    loaded = [json.loads(p.read_text()) for p in sorted((ROOT / "schemas" / "avro").glob("*.avsc"))]
    described = {key for key in FIELD_NOTES}
    have = {f"{r['name']}.{f['name']}" for r in _records(loaded) for f in r["fields"] if not f.get("doc")}
    if described - have:
        raise Undocumented(f"FIELD_NOTES in docs/generate.py: {', '.join(sorted(described - have))} no longer exist "
                           "or now have a doc in their .avsc; remove them")
    for schema in loaded:
        if schema["type"] == "enum":
            out += [f"### `herald.{schema['name']}` (enum)", "", ", ".join(f"`{s}`" for s in schema["symbols"])
                    + (f". {schema['doc']}" if schema.get("doc") else ""), ""]
        else:
            out += _record(schema, "###")
    return "\n".join(out).rstrip()


def dead_letters() -> str:
    from herald import dlq

    written = [k for k, _ in dlq.headers("R", "m", "s", "t", 0, 0)]
    _, cut = dlq.fit(b"xx", [], limit=1)
    written += [k for k, _ in cut]
    from streams import replay

    written.append(replay.REPLAYED_FROM)
    _check_same("dead-letter headers of herald/dlq.py and streams/replay.py", set(written), set(HEADERS))
    codes = reason_codes()
    _check_same("dead-letter reason codes in the code", set(codes), set(REASONS))
    head = _table(("header", "value"), [(f"`{k}`", HEADERS[k]) for k in written])
    rows = [(f"`{code}`", REASONS[code][0], REASONS[code][1],
             "if it passes now" if code in replay.REDRIVABLE else "no: final in the sinks' ledger") for code in REASONS]
    reasons = _table(("reason", "raised by", "meaning", "`herald replay --dlq` re-drives it"), rows)
    return head + "\n\nReasons:\n\n" + reasons


def api() -> str:
    import api.status  # noqa: F401 - the status page's routes join the document when it is imported, as the app does
    from api.openapi import DOCUMENT

    rows = []
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            statuses = ", ".join(sorted(op.get("responses", {})))
            rows.append((f"`{method.upper()} {path}`", op.get("summary", ""), statuses))
    return _table(("method and path", "what", "answers"), rows)


def targets() -> str:
    from bench.targets import TARGETS

    rows = [(f"`{t.figure}`", t.shown, t.means) for t in TARGETS]
    return _table(("figure", "target", "what it means"), rows)


def settings() -> str:
    from herald.settings import Settings

    def default(value: object) -> str:
        return "(empty)" if value == "" else f"`{value}`"

    rows = [(f"`{f.metadata['env']}`", default(f.default), f.metadata["doc"]) for f in fields(Settings)]
    return _table(("variable", "default", "meaning"), rows)


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        return parser.format_help().rstrip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def cli() -> str:
    from bench.run import parser as bench_parser
    from streams.cli import _parser

    top = _parser()
    top.epilog = "settings: every HERALD_* variable, see docs/settings.md"
    out = ["### `herald`", "", "```", _help(top), "```", ""]
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        text = _help(bench_parser()) if name == "bench" else _help(parser)
        out += [f"### `herald {name}`", "", summaries[name][:1].upper() + summaries[name][1:] + ".", "",
                "```", text, "```", ""]
    return "\n".join(out).rstrip()


PAGES = {
    "reference.md": {"topics": topics, "schemas": schemas, "dead-letters": dead_letters, "api": api, "targets": targets},
    "cli.md": {"cli": cli},
    "settings.md": {"settings": settings},
}


# -- pages -----------------------------------------------------------------------------------------

def fill(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``name``'s markers replaced by ``body``; raises when a marker is missing."""
    begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise Undocumented(f"the page has no {begin} ... {end} pair")
    return text[:start + len(begin)] + "\n" + body + "\n" + text[stop:]


def render(page: str, text: str | None = None) -> str:
    """The page ``page`` (a name in ``PAGES``) with every generated part made afresh."""
    text = (DOCS / page).read_text() if text is None else text
    for name, make in PAGES[page].items():
        text = fill(text, name, make())
    return text


def stale() -> list[str]:
    """The pages whose generated parts differ from what the code makes now."""
    return [page for page in PAGES if render(page) != (DOCS / page).read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/generate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    try:
        if args.check:
            out_of_date = stale()
            for page in out_of_date:
                print(f"docs/{page} is out of date: run .venv/bin/python docs/generate.py", file=sys.stderr)
            return 1 if out_of_date else 0
        for page in PAGES:
            (DOCS / page).write_text(render(page))
            print(f"wrote docs/{page}")
    except Undocumented as exc:
        print(f"docs/generate.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
