"""Fixtures of the sink tests that use the real database."""
from __future__ import annotations

import pytest


@pytest.fixture
async def pool(stack):
    """A pool on the test session's PostgreSQL, migrated."""
    import asyncpg

    from infra import postgres

    await postgres.migrate_async()
    pool = await asyncpg.create_pool(postgres.database_url(), min_size=1, max_size=4)
    yield pool
    await pool.close()
