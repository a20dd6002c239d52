"""The dispatcher's mapping of failures to protocol errors, on a real Connection."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.config import Settings
from gateway.ws.connection import Connection
from gateway.ws.dispatch import Dispatcher


class Overloaded:
    async def start(self, *args: Any, **kwargs: Any) -> Any:
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")


async def test_database_pool_exhaustion_is_rate_limited_not_internal() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    conn = Connection("c1", send, limit=16)
    writer = asyncio.ensure_future(conn.run_writer())
    gateway = SimpleNamespace(settings=Settings(), manager=Overloaded())
    dispatcher = Dispatcher(gateway, conn)  # type: ignore[arg-type]
    assert await dispatcher.handle(orjson.dumps({"type": "hello", "id": "h"}).decode())
    start = {
        "type": "run.start",
        "id": "s",
        "agent_id": "agent-1",
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert not await dispatcher.handle(orjson.dumps(start).decode())
    await asyncio.sleep(0.01)
    writer.cancel()
    frames = [orjson.loads(m["text"]) for m in sent]
    error = frames[-1]
    assert error["type"] == "error" and error["id"] == "s"
    assert error["error"]["code"] == "rate_limited" and error["error"]["retryable"] is True
