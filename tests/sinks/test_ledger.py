"""The ledger's scans against the real database: each deployment (``HERALD_APP_ID``) sees only its own rows.

Deployments sharing one database (two environments, a shadow stack, parallel tests) must never retry,
report or settle each other's requests: a sink that took another deployment's retry would send it with its
own contacts and report it on its own status topic (found by CI: a test's sink took a previous test's retry).
"""
from __future__ import annotations

import uuid

import pytest

from sinks.ledger import Ledger, Mark, Source


def _item(unique: str) -> tuple[str, str, bytes, Source]:
    return f"{unique}-{uuid.uuid4().hex[:8]}", f"{unique}-u", b"request", Source("t", 0, 1)


@pytest.mark.integration
async def test_retries_unreported_outcomes_and_stale_claims_stay_with_their_deployment(pool, unique):
    mine = Ledger(pool, "EMAIL", "worker-a", lease_s=0.0, app=f"{unique}-a")
    theirs = Ledger(pool, "EMAIL", "worker-b", lease_s=0.0, app=f"{unique}-b")
    retry, stale = _item(unique), _item(unique)
    claimed, _, _ = await mine.claim([retry, stale])
    assert claimed == {retry[0], stale[0]}
    await mine.record([Mark(retry[0], "RETRYING", attempts=1, delay_s=0.0)], "smtp")

    # the other deployment finds nothing of ours: no due retry, no stale claim, no unreported outcome
    assert unique not in " ".join(r["delivery_id"] for r in await theirs.take_due(1000))
    assert unique not in " ".join(r["delivery_id"] for r in await theirs.take_in_doubt(1000))
    assert unique not in " ".join(r["delivery_id"] for r in await theirs.take_unreported(1000))

    # and ours finds each of them
    assert retry[0] in {r["delivery_id"] for r in await mine.take_unreported(1000)}
    assert [r["delivery_id"] for r in await mine.take_due(1000) if r["delivery_id"].startswith(unique)] == [retry[0]]
    settled = {r["delivery_id"] for r in await mine.take_in_doubt(1000)}
    assert {retry[0], stale[0]} <= settled  # both claims are past the zero lease now
    async with pool.acquire() as conn:
        apps = await conn.fetch("SELECT app FROM delivery_ledger WHERE delivery_id = ANY($1::text[])",
                                [retry[0], stale[0]])
    assert [r["app"] for r in apps] == [f"{unique}-a"] * 2


@pytest.mark.integration
async def test_a_claim_whose_answer_was_lost_is_still_this_processs_to_send(pool, unique):
    """The database committed a claim and went away before answering: the caller's next try finds the row
    CLAIMED by itself and sends it, where another process's claim stays that process's."""
    mine = Ledger(pool, "EMAIL", "worker-a", lease_s=60.0, app=unique)
    other = Ledger(pool, "EMAIL", "worker-b", lease_s=60.0, app=unique)
    lost, theirs, fresh = _item(unique), _item(unique), _item(unique)
    assert (await mine.claim([lost]))[0] == {lost[0]}  # committed; suppose the answer never arrived
    assert (await other.claim([theirs]))[0] == {theirs[0]}
    claimed, existing, _ = await mine.claim([lost, theirs, fresh])
    assert claimed == {lost[0], fresh[0]}
    assert existing == {theirs[0]: "CLAIMED"}
    # once its outcome is written, reading the request again never sends it twice
    await mine.record([Mark(lost[0], "SENT", attempts=1)], "smtp")
    claimed, existing, _ = await mine.claim([lost])
    assert claimed == set() and existing == {lost[0]: "SENT"}


@pytest.mark.integration
async def test_an_outcome_not_yet_reported_is_left_to_its_writer_until_the_lease_ends(pool, unique):
    """A partition moved mid-batch gives the new owner a batch whose outcomes the old owner has written and
    is reporting: reading the requests again must not report them twice. Past the lease the writer is taken
    for dead and whoever reads the request reports it."""
    writer = Ledger(pool, "PUSH", "worker-a", lease_s=60.0, app=unique)
    new_owner = Ledger(pool, "PUSH", "worker-b", lease_s=60.0, app=unique)
    item = _item(unique)
    assert (await writer.claim([item]))[0] == {item[0]}
    await writer.record([Mark(item[0], "SENT", attempts=1)], "fcm")
    claimed, existing, unreported = await new_owner.claim([item])
    assert (claimed, existing, unreported) == (set(), {item[0]: "SENT"}, [])

    after_lease = Ledger(pool, "PUSH", "worker-c", lease_s=0.0, app=unique)
    claimed, existing, unreported = await after_lease.claim([item])
    assert claimed == set() and [r["delivery_id"] for r in unreported] == [item[0]]
    await writer.reported([item[0]])
    assert (await after_lease.claim([item]))[2] == []
