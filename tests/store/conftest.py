"""One store suite, two databases: SQLite always, PostgreSQL when GATEWAY_TEST_POSTGRES_URL is set.

Each PostgreSQL test gets its own database (created and dropped here), so runs never share state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.store import Store

PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await Store.open(f"sqlite:///{tmp_path / 'store.db'}")
        try:
            yield s
        finally:
            await s.close()
        return
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(PG_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = PG_URL.rpartition("/")
    s = await Store.open(f"{base}/{name}")
    try:
        yield s
    finally:
        await s.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
