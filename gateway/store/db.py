"""Engine creation and Alembic migrations, applied at start-up on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def _dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns through orjson: the standard library's json was a tenth of a run's store time.
JSON_CODEC = {"json_serializer": _dumps, "json_deserializer": orjson.loads}


def create_engine(url: str) -> AsyncEngine | Engine:
    """PostgreSQL: an async engine (asyncpg). SQLite (`sqlite://` or `sqlite+aiosqlite://`,
    same file): a plain engine on the standard `sqlite3` driver, which the store runs inline on
    the event loop (see `gateway.store.store`); WAL, foreign keys and a busy timeout for
    other processes sharing the file."""
    if url.startswith("sqlite"):
        sync_url = make_url(url).set(drivername="sqlite")
        engine = create_sync_engine(
            sync_url, connect_args={"timeout": 30, "check_same_thread": False}, **JSON_CODEC
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run off the event loop (Store._checkpoint_wal), not in a commit.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **JSON_CODEC)


def alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine | Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    if isinstance(engine, AsyncEngine):
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
    else:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
