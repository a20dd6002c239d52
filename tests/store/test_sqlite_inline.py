"""SQLite specifics: transactions run inline on the event loop, and the write-ahead log is
checkpointed from a worker thread instead of inside whichever commit crossed SQLite's
automatic threshold."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.store import Store
from gateway.store import store as store_module


async def _add_agents(store: Store, n: int) -> None:
    for i in range(n):
        await store.create_agent(
            name=f"a{i}",
            model="offline/x",
            system="s" * 2000,
            tool_ids=[],
            approval_overrides={},
            tags=[],
            settings={},
        )


async def test_wal_is_checkpointed_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_S", 0.05)
    path = tmp_path / "g.db"
    store = await Store.open(f"sqlite:///{path}")
    try:

        def autocheckpoint(s: object) -> int:
            return int(s.connection().exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())  # type: ignore[attr-defined]

        assert await store.transaction(autocheckpoint) == 0, "no checkpoint inside an inline commit"
        await asyncio.sleep(0.2)  # the migration's pages are checkpointed first
        before = path.stat().st_size
        await _add_agents(store, 200)  # about 400 KB of rows, in the log at first
        for _ in range(100):
            if path.stat().st_size > before + 300_000:
                break
            await asyncio.sleep(0.05)
        assert path.stat().st_size > before + 300_000, "the rows reached the database file"
    finally:
        await store.close()
    # Closed cleanly: another connection reads every row.
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone()[0] == 200


async def test_aiosqlite_urls_use_the_inline_driver(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    try:
        assert store.dialect == "sqlite"
        assert store.engine.driver == "pysqlite"
        await _add_agents(store, 1)
        assert [a.name for a in await store.list_agents()] == ["a0"]
    finally:
        await store.close()
