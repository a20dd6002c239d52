"""One broker suite, two implementations: memory always, Redis when GATEWAY_TEST_REDIS_URL is set.

Every Redis test gets its own key prefix (``gwtest-<uuid>``) and its keys are deleted
afterwards (SCAN + DEL on the prefix), so tests never share state and leave nothing behind.
Redis brokers are built with a short ``read_block_ms`` so that readers notice a close or a
last detach quickly.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.broker import MemoryBroker
from gateway.broker.redis import RedisBroker

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL")
NO_REDIS = "GATEWAY_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0): Redis broker tests skipped"

AnyBroker = MemoryBroker | RedisBroker
Factory = Callable[..., Awaitable[AnyBroker]]


class RecordingSink:
    """A sink that records every delivery, and on which task it was called."""

    def __init__(self) -> None:
        self.got: list[tuple[int, str]] = []
        self.events: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.in_append: list[bool] = []
        self.appending = False  # set by tests around their own append calls

    def deliver(self, run_id: str, seq: int, frame: str, event: dict[str, Any]) -> None:
        self.got.append((seq, frame))
        self.events.append(event)
        self.tasks.append(asyncio.current_task())
        self.in_append.append(self.appending)

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.got]

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        """Wait until `n` events were delivered (at once for synchronous brokers)."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.got)} events, expected {n}: last {self.seqs[-3:]}")
            await asyncio.sleep(0.002)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll `check` (sync or async) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def settle(broker: AnyBroker) -> None:
    """Let Redis catch up with what this broker appended (no-op in memory)."""
    if isinstance(broker, RedisBroker):
        assert await broker.flush(5.0)


async def delete_prefix(prefix: str) -> None:
    assert REDIS_URL
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class Made:
    """Every broker a test made: started on the test's prefix, stopped (and keys deleted) after."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.brokers: list[AnyBroker] = []

    async def memory(self, **kwargs: Any) -> MemoryBroker:
        b = MemoryBroker(**kwargs)
        await b.start()
        self.brokers.append(b)
        return b

    async def redis(self, **kwargs: Any) -> RedisBroker:
        """A started RedisBroker (kwargs: RedisBroker's, and `url` to go through a proxy)."""
        if not REDIS_URL:
            pytest.skip(NO_REDIS)
        kwargs.setdefault("read_block_ms", 100)
        url = kwargs.pop("url", REDIS_URL)
        b = RedisBroker(url, prefix=self.prefix, **kwargs)
        await b.start()
        self.brokers.append(b)
        return b

    async def close(self) -> None:
        for b in self.brokers:
            await b.stop()
        if any(isinstance(b, RedisBroker) for b in self.brokers):
            await delete_prefix(self.prefix)


@pytest.fixture
async def made() -> AsyncIterator[Made]:
    m = Made(f"gwtest-{uuid.uuid4().hex[:12]}")
    try:
        yield m
    finally:
        await m.close()


@pytest.fixture
def redis_factory(made: Made) -> Callable[..., Awaitable[RedisBroker]]:
    """Starts RedisBrokers on this test's prefix; several of them are several processes."""
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    return made.redis


@pytest.fixture(params=["memory", "redis"])
def broker_factory(request: pytest.FixtureRequest, made: Made) -> Factory:
    """Makes started brokers of the parametrised kind (kwargs: retention_s)."""
    if request.param == "redis" and not REDIS_URL:
        pytest.skip(NO_REDIS)
    return made.memory if request.param == "memory" else made.redis


@pytest.fixture
async def broker(broker_factory: Factory) -> AnyBroker:
    return await broker_factory()


@pytest.fixture
async def two_brokers(
    redis_factory: Callable[..., Awaitable[RedisBroker]],
) -> tuple[RedisBroker, RedisBroker]:
    """Two RedisBrokers on the same prefix: two gateway processes."""
    return await redis_factory(), await redis_factory()


@dataclass
class Pair:
    """Who appends and who attaches: one broker, or (redis-remote) two processes."""

    writer: AnyBroker
    reader: AnyBroker
    kind: str

    @property
    def remote(self) -> bool:
        return self.writer is not self.reader


@pytest.fixture(params=["memory", "redis", "redis-remote"])
def pair_factory(request: pytest.FixtureRequest, made: Made) -> Callable[..., Awaitable[Pair]]:
    """Makes a Pair of the parametrised kind (kwargs: retention_s)."""
    kind = request.param
    if kind != "memory" and not REDIS_URL:
        pytest.skip(NO_REDIS)

    async def make(**kwargs: Any) -> Pair:
        if kind == "memory":
            b: AnyBroker = await made.memory(**kwargs)
            return Pair(b, b, kind)
        writer = await made.redis(**kwargs)
        reader = await made.redis(**kwargs) if kind == "redis-remote" else writer
        return Pair(writer, reader, kind)

    return make


@pytest.fixture
async def pair(pair_factory: Callable[..., Awaitable[Pair]]) -> Pair:
    return await pair_factory()
