"""One chaos run: the stack up, the stream flowing, each fault at a random moment, then the invariants."""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from bench.chaos import invariants
from bench.chaos.faults import Fault, post_json
from bench.chaos.stack import Stack
from bench.chaos.tap import Tap
from bench.chaos.workload import Workload


@dataclass
class Options:
    rounds: int = 1
    exactly_once: bool = True
    rate: float = 30.0
    users: int = 60
    quick: bool = False
    warmup_s: float = 20.0
    gap_s: tuple[float, float] = (3.0, 8.0)
    drain_s: float = 240.0
    seed: int | None = None
    keep: bool = False


@dataclass
class Context:
    """What a fault's ``inject`` may use."""

    stack: Stack
    quick: bool
    pending: list = field(default_factory=list)  # (due, action) to run after the fault

    def hold(self, quick_s: float, full_s: float) -> float:
        return quick_s if self.quick else full_s

    def after(self, action: Callable[[], object], delay_s: float) -> None:
        self.pending.append((time.monotonic() + delay_s, action))

    def run_pending(self, block: bool = False) -> None:
        for item in sorted(self.pending, key=lambda p: p[0]):
            due, action = item
            if block or time.monotonic() >= due:
                time.sleep(max(0.0, due - time.monotonic()))
                action()
                self.pending.remove(item)

    def sandbox_faults(self, faults: dict) -> None:
        post_json(f"http://127.0.0.1:{self.stack.provider_port}/_sandbox/faults", faults)


class Reader(threading.Thread):
    """A user of the inbox: reads notifications and marks some read through the API, all run long."""

    def __init__(self, stack: Stack, users: list[str], secret: str) -> None:
        super().__init__(daemon=True, name="chaos-reader")
        from api.auth import mint

        self.base = f"http://127.0.0.1:{stack.api_port}/v1/users"
        self.tokens = {u: mint(secret, u, ttl_s=86400) for u in users}
        self.users = users
        self.ok = self.failed = 0
        self._halt = threading.Event()

    def _call(self, method: str, path: str, user: str) -> dict:
        req = urllib.request.Request(f"{self.base}/{user}{path}", method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {self.tokens[user]}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def run(self) -> None:
        rng = random.Random()
        while not self._halt.wait(0.3):
            user = rng.choice(self.users)
            try:
                if rng.random() < 0.15:
                    self._call("POST", "/notifications/read-all", user)
                else:
                    page = self._call("GET", "/notifications?limit=5", user)
                    items = page.get("notifications") or []
                    if items:
                        action = rng.choice(["read", "read", "seen", "archive"])
                        self._call("POST", f"/notifications/{items[0]['notification_id']}/{action}", user)
                self.ok += 1
            except (OSError, ValueError, KeyError):
                self.failed += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _api_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


GRACE_S = 1.0  # records already on their way when a fault struck reach the tap within this; they do not count


def recovery_s(signals: tuple[str, ...], healed: float, tap: Tap, api_port: int, limit_s: float = 90) -> float | None:
    """Seconds from ``healed`` until every signal showed work again; None if one did not within ``limit_s``.
    A record counts from ``GRACE_S`` after the fault ended, so a recovery is never reported under that."""
    deadline = healed + limit_s
    seen: dict[str, float] = {}
    while time.monotonic() < deadline and len(seen) < len(signals):
        for signal_ in signals:
            if signal_ in seen:
                continue
            if signal_ == "api":
                if _api_ready(api_port):
                    seen[signal_] = time.monotonic()
                continue
            times = tap.decision_times if signal_ == "decisions" else tap.sent_times[signal_.split(":", 1)[1]]
            at = tap.first_after(times, healed + GRACE_S)
            if at is not None:
                seen[signal_] = at
        time.sleep(0.1)
    return round(max(seen.values()) - healed, 2) if len(seen) == len(signals) else None


def provider_receipts(stack: Stack, email_ids: dict[str, str]) -> dict[str, Counter]:
    """channel -> delivery_id -> messages the provider recorded. ``email_ids``: Message-ID -> delivery_id."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.smtp_port + 1}/messages", timeout=30) as resp:
        mails = json.loads(resp.read())
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.provider_port}/_sandbox/messages", timeout=30) as resp:
        sandbox = json.loads(resp.read())
    out = {"EMAIL": Counter(), "PUSH": Counter(), "SMS": Counter()}
    for m in mails:
        out["EMAIL"][email_ids.get(m.get("message_id", ""), f"unknown:{m.get('message_id')}")] += 1
    for m in sandbox:
        if m.get("kind") == "push":
            out["PUSH"][(m.get("data") or {}).get("delivery_id", "unknown")] += 1
        elif m.get("kind") == "sms":
            query = parse_qs(urlsplit(m.get("status_callback") or "").query)
            out["SMS"][(query.get("delivery_id") or ["unknown"])[0]] += 1
    return out


async def _ledger_rows(dsn: str, delivery_ids: list[str]) -> dict[str, dict]:
    """The ledger's row of each named delivery (no request bytes), for a violation's evidence."""
    import asyncpg

    if not delivery_ids:
        return {}
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT delivery_id, status, attempts, provider, last_error, claimed_by, reported,
                      to_char(claimed_at, 'HH24:MI:SS.MS') AS claimed_at, to_char(sent_at, 'HH24:MI:SS.MS') AS sent_at,
                      to_char(updated_at, 'HH24:MI:SS.MS') AS updated_at, source->>'partition' AS partition,
                      source->>'offset' AS "offset"
               FROM delivery_ledger WHERE delivery_id = ANY($1::text[])""", delivery_ids)
        return {r["delivery_id"]: {k: v for k, v in dict(r).items() if k != "delivery_id"} for r in rows}
    finally:
        await conn.close()


async def _inbox(dsn: str, prefix: str) -> tuple[list[str], set[str]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """WITH recount AS (
                 SELECT user_id, count(*) FILTER (WHERE read_at IS NULL) AS unread,
                        count(*) FILTER (WHERE seen_at IS NULL) AS unseen
                 FROM notifications WHERE archived_at IS NULL AND user_id LIKE $1 GROUP BY user_id)
               SELECT coalesce(c.user_id, r.user_id) AS user_id FROM unread_counts c FULL JOIN recount r
                 ON c.user_id = r.user_id
               WHERE coalesce(c.user_id, r.user_id) LIKE $1
                 AND (coalesce(c.unread, 0) <> coalesce(r.unread, 0) OR coalesce(c.unseen, 0) <> coalesce(r.unseen, 0))""",
            prefix + "%")
        ids = await conn.fetch("SELECT notification_id FROM notifications WHERE user_id LIKE $1", prefix + "%")
        return [r["user_id"] for r in rows], {r["notification_id"] for r in ids}
    finally:
        await conn.close()


def run(faults: list[Fault], opts: Options, base: Path, say: Callable[[str], None]) -> dict:
    """The whole run; returns the report (also when an invariant broke: ``held`` is then False)."""
    from herald.settings import Settings
    from schemas.codec import Codec
    from schemas.registry import Registry
    from sinks.email import message_id

    run_id = uuid.uuid4().hex[:8]
    rng = random.Random(opts.seed)
    stack = Stack(run_id, base, exactly_once=opts.exactly_once)
    report: dict = {"run_id": run_id, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "rounds": opts.rounds, "quick": opts.quick, "exactly_once": opts.exactly_once, "rate": opts.rate, "folder": str(stack.home),
                    "disk_fault_possible": stack.tmpfs, "faults": [], "git": _git()}
    started = time.monotonic()
    workload = tap = reader = None
    try:
        say(f"chaos run {run_id}: servers of its own in {stack.home}")
        stack.start_servers(say)
        settings = Settings.from_env()
        codec = Codec(Registry(settings.schema_registry_url))
        workload = Workload(run_id, settings.kafka_bootstrap, codec, settings.topic, opts.rate, opts.users,
                            seed=rng.randrange(1 << 30))
        workload.send_contacts()
        stack.start_herald()
        say(f"  Herald up ({', '.join(stack.snapshot().get('processes', {}))}); stream at {opts.rate:g} inputs/s")
        tap = Tap(settings, codec)
        workload.start()
        reader = Reader(stack, workload.users, stack.env["HERALD_JWT_SECRET"])
        reader.start()
        time.sleep(opts.warmup_s)
        ctx = Context(stack, opts.quick)
        plan = [(r, f) for r in range(1, opts.rounds + 1) for f in rng.sample(faults, len(faults))]
        for n, (round_, fault) in enumerate(plan, 1):
            time.sleep(rng.uniform(*opts.gap_s))
            at = time.monotonic()
            say(f"  [{n}/{len(plan)}] round {round_}: {fault.what}")
            facts = fault.inject(ctx)
            healed = time.monotonic()
            entry = {"name": fault.name, "round": round_, "at_s": round(at - started, 1),
                     "fault_s": round(healed - at, 1), **facts}
            if "skipped" not in facts:
                entry["recovery_s"] = recovery_s(fault.signals, healed, tap, stack.api_port)
                ctx.run_pending(block=True)
                for name in ("worker", "sink-inapp", "api", "sink-email", "sink-push", "sink-sms"):
                    stack.wait_up(name, 60)
            report["faults"].append(entry)
            say("      " + (f"skipped: {facts['skipped']}" if "skipped" in facts else f"recovered in {entry['recovery_s']} s"))
        say("  faults done; stopping the stream and waiting for every event and delivery to settle")
        report["unacknowledged_at_end"] = workload.stop()
        reader.stop()
        _drain(tap, workload, opts.drain_s)
        settled_at = time.monotonic()  # every request read until now has ended (or the drain ran out of time)
        time.sleep(8)  # anything written twice would arrive now
        tap.freeze()
        report.update(_check(stack, tap, workload, reader, run_id, message_id, settled_at))
    finally:
        for part in (reader, tap):
            if part is not None:
                try:
                    part.stop() if isinstance(part, Reader) else part.close()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
        report["restarts"] = stack.restarts()
        report["seconds"] = round(time.monotonic() - started, 1)
        stack.stop()
    return report


def _drain(tap: Tap, workload: Workload, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        waiting = [v for v in invariants.accounted(workload.accepted, tap.finals_of, tap.still_held(),
                                                   workload.bad_accepted, tap.dead)
                   if v.message.startswith("accepted events without") or "dead-lettered" in v.message]
        if not waiting and not tap.unsettled():
            return
        time.sleep(2)


def _check(stack: Stack, tap: Tap, workload: Workload, reader: Reader, run_id: str, message_id,  # noqa: ANN001
           settled_at: float = float("inf")) -> dict:
    email_ids = {message_id(d): d for d, (channel, _, _) in tap.request_of.items() if channel == "EMAIL"}
    receipts = provider_receipts(stack, email_ids)
    sent: dict[str, set[str]] = {}
    for delivery_id, seen in tap.statuses.items():
        if any(status == "SENT" for status, _ in seen) and delivery_id in tap.request_of:
            sent.setdefault(tap.request_of[delivery_id][0], set()).add(delivery_id)
    # held events the clock released after the run settled: their requests may not have ended yet
    in_flight = {d for d, at in list(tap.request_read_at.items()) if at > settled_at
                 and not any(status in invariants.TERMINAL for status, _ in tap.statuses.get(d, ()))}
    mismatched, rows = asyncio.run(_inbox(stack.env["HERALD_DATABASE_URL"], f"chaos-{run_id}-"))
    violations = (invariants.accounted(workload.accepted, tap.finals_of, tap.still_held(), workload.bad_accepted, tap.dead,
                                       tap.final_decisions)
                  + invariants.once_at_provider(receipts, sent)
                  + invariants.attempted(tap.final_decisions, tap.request_of, tap.statuses, in_flight)
                  + invariants.inbox_counts(mismatched, sent.get("INAPP", set()), rows))
    for v in violations:  # what each named event got, to look into
        if v.invariant == "accounted":
            v.records = [f"{e}: accepted {workload.accepted.get(e, 0)}, decisions {tap.decision_log.get(e, [])}"
                         for e in v.records]
        elif v.invariant in ("once", "attempted") and v.records and all(d in tap.request_of for d in v.records):
            # what the sinks said and what the ledger holds about each named delivery
            ledger = asyncio.run(_ledger_rows(stack.env["HERALD_DATABASE_URL"], list(v.records)))
            v.records = [f"{d}: request {tap.request_of[d][:2]}, statuses {tap.statuses.get(d, [])}, "
                         f"ledger {ledger.get(d)}" for d in v.records]
    if tap.error:
        violations.append(invariants.Violation("tap", f"reading the pipeline's records failed: {tap.error}"))
    statuses = Counter(next((s for s, _ in reversed(seen) if s in invariants.TERMINAL), "none")
                       for d, seen in tap.statuses.items() if d in tap.request_of)
    return {
        "inputs": {"events_accepted": sum(workload.accepted.values()), "bad_accepted": workload.bad_accepted,
                   "producer_gave_up": workload.failed, "kinds": dict(workload.kinds)},
        "outputs": {"final_decisions": tap.finals, "outcomes": dict(tap.outcomes), "dead_letters": tap.dead,
                    "dead_letter_reasons": dict(tap.reasons), "still_held": len(tap.still_held()),
                    "delivery_requests": len(tap.request_of), "final_statuses": dict(statuses),
                    "requests_in_flight_at_the_end": len(in_flight),
                    "provider_messages": {c: sum(n.values()) for c, n in receipts.items()},
                    "provider_messages_of_no_request": {c: sum(k for d, k in n.items() if str(d).startswith("unknown"))
                                                        for c, n in receipts.items()},
                    "inbox_rows": len(rows), "api_calls_ok": reader.ok, "api_calls_failed": reader.failed},
        "repeats": {"delivery_records_repeated_identically": sum(n - 1 for n in tap.copies_of_id.values() if n > 1),
                    "dead_letters_repeated": sum(n - 1 for n in tap.dead_sources.values() if n > 1),
                    **tap.problems()},
        "violations": [asdict(v) for v in violations],
    }


def _git() -> dict:
    """The commit the run's code is at, and whether files differed from it (``bench.run.git_info``)."""
    from bench.run import git_info

    info = git_info()
    return {"commit": info["commit"], "dirty": info["dirty"]}


def finish(report: dict) -> dict:
    """Adds the recovery invariant and the verdict."""
    slow = invariants.recovered(report.get("faults", []))
    report["violations"] = report.get("violations", []) + [asdict(v) for v in slow]
    if any(report.get("repeats", {}).get(k) for k in ("delivery_ids_with_different_contents",
                                                      "windows_with_more_than_one_delivery",
                                                      "events_in_more_than_one_batch_or_digest")):
        report["violations"].append(asdict(invariants.Violation("once", "a batch, digest or delivery emitted twice",
                                                                [json.dumps(report["repeats"])])))
    if report.get("exactly_once") and report.get("repeats", {}).get("dead_letters_repeated"):
        # each batch is one transaction and a record its batch already wrote is skipped: a bad record read
        # again (after a crash, a rebalance or Faust's seek) must not be dead-lettered again
        report["violations"].append(asdict(invariants.Violation(
            "once", f"{report['repeats']['dead_letters_repeated']} dead letters repeated a bad record already dead-lettered",
            [json.dumps(report["repeats"])])))
    report["held"] = "inputs" in report and not report["violations"]
    return report
