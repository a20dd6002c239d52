"""The Redis broker across processes: two RedisBroker instances on one prefix are two gateways."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.broker import MemoryBroker
from gateway.broker.redis import RedisBroker
from tests.broker.conftest import REDIS_URL, RecordingSink, eventually

Factory = Callable[..., Awaitable[RedisBroker]]
Two = tuple[RedisBroker, RedisBroker]


def delta(i: int) -> dict[str, Any]:
    return {"message_type": "assistant_message", "id": "m1", "otid": "o1", "content": f"d{i}"}


# Reads a whole stream as one string (ids and frames alternating), since redis-py's pure-Python
# reply parser costs 30-55 us per XRANGE entry; written here independently of the broker's own
# read script.
_DUMP = """
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return table.concat(out, '\\n')
"""


async def stream(broker: RedisBroker, run_id: str) -> list[tuple[int, str]]:
    """The log as Redis holds it (seq from each entry id, frame), read with a client of its own."""
    assert REDIS_URL
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        blob = await client.eval(_DUMP, 1, broker.log_key(run_id))
    finally:
        await client.aclose()
    parts = blob.decode().split("\n") if blob else []
    return [(int(parts[i].split("-")[0]), parts[i + 1]) for i in range(0, len(parts), 2)]


async def meta(broker: RedisBroker, run_id: str) -> dict[Any, Any]:
    assert REDIS_URL
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return await client.hgetall(broker.meta_key(run_id))
    finally:
        await client.aclose()


async def test_remote_attach_with_racing_appends_then_close(
    two_brokers: Two,
) -> None:
    a, b = two_brokers
    rng = random.Random(3)
    a.open("r1", "ep1")
    n = 5000

    async def produce() -> None:
        for i in range(n):
            a.append("r1", delta(i))
            if rng.random() < 0.2:
                await asyncio.sleep(0)
        a.close("r1")

    producer = asyncio.create_task(produce())
    await a.flush()
    sinks: list[tuple[RecordingSink, int]] = []
    for _ in range(6):
        await asyncio.sleep(rng.random() * 0.01)
        info = await b.fetch_info("r1")
        assert info is not None
        after = rng.choice([0, info.last_seq, info.last_seq // 2])
        sink = RecordingSink()
        await b.attach("r1", sink, after)
        sinks.append((sink, after))
    await producer
    for sink, after in sinks:
        await sink.wait_for(n - after, timeout=10.0)
    expected = a.events("r1")
    for sink, after in sinks:
        assert sink.got == expected[after:]
    await eventually(lambda: not b.is_following("r1"), timeout=2.0)  # closed and all delivered
    assert await b.fetch_info("r1") == a.info("r1")
    assert (await b.fetch_info("r1")).closed  # type: ignore[union-attr]
    assert not a.conflicts and not b.conflicts


async def test_close_without_new_events_stops_the_reader(
    two_brokers: Two,
) -> None:
    a, b = two_brokers
    a.open("r1", "ep1")
    a.append("r1", delta(0))
    await a.flush()
    sink = RecordingSink()
    await b.attach("r1", sink, 0)
    assert b.is_following("r1")
    a.close("r1")
    await eventually(lambda: not b.is_following("r1"), timeout=2.0)  # within read_block_ms
    assert sink.seqs == [1]


async def test_reader_stops_when_the_last_sink_detaches(two_brokers: Two) -> None:
    a, b = two_brokers
    a.open("r1", "ep1")
    await a.flush()
    s1, s2 = RecordingSink(), RecordingSink()
    await b.attach("r1", s1, 0)
    await b.attach("r1", s2, 0)
    b.detach("r1", s1)
    a.append("r1", delta(0))
    await s2.wait_for(1)
    assert b.is_following("r1")
    b.detach("r1", s2)
    await eventually(lambda: not b.is_following("r1"), timeout=2.0)
    a.append("r1", delta(1))
    s3 = RecordingSink()
    await b.attach("r1", s3, 1)  # a new reader picks up where this sink is
    await s3.wait_for(1)
    assert (s1.seqs, s2.seqs, s3.seqs) == ([], [1], [2])


async def test_joining_a_running_reader_and_a_cursor_ahead_of_it(
    two_brokers: Two,
) -> None:
    a, b = two_brokers
    a.open("r1", "ep1")
    for i in range(20):
        a.append("r1", delta(i))
    await a.flush()
    first = RecordingSink()
    await b.attach("r1", first, 0)  # replays 1..20 and starts the reader at 20
    joiner = RecordingSink()
    await b.attach("r1", joiner, 5)  # replays 6..20 up to the reader, then live
    ahead = RecordingSink()
    await b.attach("r1", ahead, 23)  # past the reader: held until it passes 23
    late_first = RecordingSink()
    for i in range(20, 30):
        a.append("r1", delta(i))
    await first.wait_for(30)
    await b.attach("r1", late_first, 28)
    await joiner.wait_for(25)
    await ahead.wait_for(7)
    await late_first.wait_for(2)
    expected = a.events("r1")
    assert first.got == expected
    assert joiner.got == expected[5:]
    assert ahead.got == expected[23:]
    assert late_first.got == expected[28:]


async def test_a_remote_attach_racing_the_owners_writer(two_brokers: Two) -> None:
    """A remote attach while the owner's writer holds its round trip in flight.

    First the round that carries the open: Redis has no such log yet, so B finds none
    (``attach`` is None and delivers nothing, and no reader is left behind). This is the
    interleaving behind the flaky conformance failure "got 0 events, expected 2994" (a sink
    attached remotely with after=6 right after the owner's ``open``, with nothing flushed).
    Then a later round: Redis has seq 1..6 while the owner holds 1..12, so a sink whose
    ``after`` is past what Redis has is held back until the reader passes it, and one from 0
    replays 1..6 and joins the reader; both then get exactly the rest, with no gap.
    """
    a, b = two_brokers
    send = a._send
    in_flight = asyncio.Event()
    release = asyncio.Event()

    async def held(calls: Any) -> list[Any]:  # the writer's round trip, held until released
        in_flight.set()
        await release.wait()
        return await send(calls)

    a._send = held  # type: ignore[method-assign]
    a.open("r1", "ep1")
    for i in range(6):
        a.append("r1", delta(i))
    await in_flight.wait()  # the writer has taken the open (and maybe events) and waits
    early = RecordingSink()
    assert await b.fetch_info("r1") is None
    assert await b.attach("r1", early, 6) is None  # nothing in Redis yet: no such log
    assert early.got == [] and not b.is_following("r1")
    release.set()
    assert await a.flush(5.0)
    assert (await b.fetch_info("r1")).last_seq == 6  # type: ignore[union-attr]

    in_flight.clear()
    release.clear()
    for i in range(6, 12):
        a.append("r1", delta(i))
    await in_flight.wait()  # 7..12 are held on the way to Redis
    ahead, whole = RecordingSink(), RecordingSink()
    info = await b.attach("r1", ahead, 9)
    assert info is not None and info.epoch == "ep1" and info.last_seq == 9
    assert await b.attach("r1", whole, 0) is not None
    assert ahead.got == [] and whole.seqs == list(range(1, 7))
    assert [after for s, after in b._followers["r1"].gated if s is ahead] == [9]  # held back
    release.set()
    await ahead.wait_for(3)
    await whole.wait_for(12)
    for i in range(12, 15):  # live from here
        a.append("r1", delta(i))
    await ahead.wait_for(6)
    await whole.wait_for(15)
    await asyncio.sleep(0.05)
    expected = a.events("r1")
    assert ahead.got == expected[9:]
    assert whole.got == expected
    assert not a.conflicts and not b.conflicts


async def test_detach_while_replaying_cancels_the_attach(redis_factory: Factory) -> None:
    a = await redis_factory()
    b = await redis_factory(page_size=10)
    a.open("r1", "ep1")
    for i in range(100):
        a.append("r1", delta(i))
    await a.flush()

    class Quitter(RecordingSink):
        def deliver(self, run_id: str, seq: int, frame: str, event: dict[str, Any]) -> None:
            super().deliver(run_id, seq, frame, event)
            if seq == 15:
                b.detach(run_id, self)

    sink = Quitter()
    assert await b.attach("r1", sink, 0) is None
    assert sink.seqs == list(range(1, 21))  # the page being delivered, then nothing
    assert not b.is_following("r1")


async def test_adopt_continues_the_log_and_the_old_holder_follows_it(
    two_brokers: Two,
) -> None:
    a, b = two_brokers
    a.open("r1", "ep1")
    for i in range(5):
        a.append("r1", delta(i))
    on_a = RecordingSink()
    await a.attach("r1", on_a, 0)  # a local subscriber of the old holder
    await a.flush()
    info = await b.adopt("r1")
    assert info is not None and (info.epoch, info.last_seq, info.closed) == ("ep1", 5, False)
    assert b.events("r1") == a.events("r1")
    assert b.append("r1", delta(5)) == 6
    assert b.append("r1", delta(6)) == 7
    b.close("r1")
    await b.flush()
    await on_a.wait_for(7)
    assert on_a.got == b.events("r1")
    assert a.info("r1") is None  # the stale local copy is gone: A reads the stream now
    fresh = RecordingSink()
    await a.attach("r1", fresh, 0)
    await fresh.wait_for(7)
    assert fresh.got == b.events("r1") == await stream(b, "r1")
    assert not a.conflicts and not b.conflicts


async def test_control_published_on_one_process_reaches_every_process(
    two_brokers: Two,
) -> None:
    a, b = two_brokers
    got_a: list[dict[str, Any]] = []
    got_b: list[dict[str, Any]] = []

    async def on_a(message: dict[str, Any]) -> None:
        got_a.append(message)

    async def on_b(message: dict[str, Any]) -> None:
        raise_once = not got_b
        got_b.append(message)
        if raise_once:
            raise RuntimeError("a failing handler does not stop the channel")

    a.on_control(on_a)
    b.on_control(on_b)
    await a.publish_control({"type": "cancel", "run_id": "r1"})
    await a.publish_control({"type": "cancel", "run_id": "r2"})
    await eventually(lambda: len(got_a) == 2 and len(got_b) == 2)
    assert got_a == got_b == [{"type": "cancel", "run_id": "r1"}, {"type": "cancel", "run_id": "r2"}]


async def test_a_second_writer_of_the_same_seq_is_refused_and_reported(
    two_brokers: Two, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_brokers
    a.open("r1", "ep1")
    for i in range(3):
        a.append("r1", delta(i))
    await a.flush()
    b.open("r1", "ep1")  # wrongly opened instead of adopted: writes seq 1.. again
    for i in range(3):
        b.append("r1", {"message_type": "assistant_message", "content": f"other {i}"})
    with caplog.at_level(logging.ERROR, logger="gateway.broker"):
        assert await b.flush(2.0)
    assert "second writer" in b.conflicts["r1"] and "seq 1" in b.conflicts["r1"]
    assert "second writer" in caplog.text
    a.append("r1", delta(3))  # the first writer is unaffected
    await a.flush()
    assert await stream(a, "r1") == a.events("r1")
    assert not a.conflicts


async def test_identical_rewrites_are_accepted(redis_factory: Factory) -> None:
    """A round retried after a lost reply (or a second writer of the very same events) is a no-op."""
    a = await redis_factory()
    a.open("r1", "ep1")
    for i in range(10):
        a.append("r1", delta(i))
    await a.flush()
    lg: Any = a.logs["r1"]
    lg.flushed = 3
    a._mark(lg)
    await a.flush()
    assert not a.conflicts
    assert await stream(a, "r1") == a.events("r1")


async def test_a_rebuilt_log_fences_the_old_writer(two_brokers: Two) -> None:
    a, b = two_brokers
    a.open("r1", "ep1")
    a.append("r1", delta(0))
    await a.flush()
    b.open("r1", "ep2")  # a rebuilt log: a new epoch replaces the old one
    b.append("r1", delta(100))
    await b.flush()
    a.append("r1", delta(1))
    await a.flush()
    assert "epoch ep2" in a.conflicts["r1"]
    info = await a.fetch_info("r1")  # A still has its local view...
    assert info is not None and info.epoch == "ep1"
    assert (await meta(a, "r1"))[b"epoch"] == b"ep2"  # ...Redis has B's
    assert await stream(a, "r1") == b.events("r1")


async def test_a_log_lost_by_redis_is_written_again(redis_factory: Factory) -> None:
    a = await redis_factory()
    a.open("r1", "ep1")
    for i in range(5):
        a.append("r1", delta(i))
    await a.flush()
    assert REDIS_URL
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.delete(a.log_key("r1"), a.meta_key("r1"))
    await client.aclose()
    a.append("r1", delta(5))
    await a.flush()
    assert await stream(a, "r1") == a.events("r1")
    assert (await meta(a, "r1"))[b"last_seq"] == b"6"


class Proxy:
    """A TCP proxy to Redis that can be taken down (every connection cut) and brought back."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.path = parsed.path
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.path}"

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_redis_outage_keeps_the_local_log_and_catches_up(
    redis_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    assert REDIS_URL
    proxy = Proxy(REDIS_URL)
    await proxy.up()
    a = await redis_factory(url=proxy.url)
    b = await redis_factory()
    got: list[dict[str, Any]] = []

    async def handler(message: dict[str, Any]) -> None:
        got.append(message)

    a.on_control(handler)
    a.open("r1", "ep1")
    a.append("r1", delta(0))
    await a.flush()
    local = RecordingSink()
    await a.attach("r1", local, 0)
    with caplog.at_level(logging.WARNING, logger="gateway.broker"):
        await proxy.down()  # Redis is unreachable from A
        for i in range(1, 200):
            a.append("r1", delta(i))
        a.close("r1")
        assert local.seqs == list(range(1, 201))  # the run and its local subscribers carry on
        assert not await a.flush(0.3)
        assert a.unflushed() == 199
        assert "cannot write event logs to Redis" in caplog.text
        info = await b.fetch_info("r1")
        assert info is not None and info.last_seq == 1 and not info.closed
        await proxy.up()  # Redis is back
        assert await a.flush(5.0)
        assert "reachable again" in caplog.text
    assert await stream(a, "r1") == a.events("r1")
    m = await meta(a, "r1")
    assert (m[b"last_seq"], m[b"closed"]) == (b"200", b"1")
    assert not a.conflicts

    async def control_is_back() -> bool:  # the control subscription reconnected and resubscribed
        await b.publish_control({"type": "ping"})
        return bool(got)

    await eventually(control_is_back, timeout=5.0)
    await proxy.down()


async def test_stop_flushes_pending_writes(redis_factory: Factory) -> None:
    a = await redis_factory()
    b = await redis_factory()
    a.open("r1", "ep1")
    for i in range(500):
        a.append("r1", delta(i))
    expected = a.events("r1")
    await a.stop()
    assert await stream(b, "r1") == expected


async def test_burst_of_10k_appends_is_written_in_order(
    redis_factory: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Correctness only; the per-append cost on the owner is measured and printed."""
    n = 10_000
    events = [delta(i) for i in range(n)]
    memory = MemoryBroker()
    memory.open("m", "ep")
    t0 = time.perf_counter()
    for e in events:
        memory.append("m", e)
    memory_us = (time.perf_counter() - t0) / n * 1e6

    a = await redis_factory()
    a.open("r1", "ep1")
    await a.flush()
    t0 = time.perf_counter()
    for e in events:
        a.append("r1", e)
    redis_us = (time.perf_counter() - t0) / n * 1e6
    t1 = time.perf_counter()
    assert await a.flush(10.0)
    flush_ms = (time.perf_counter() - t1) * 1e3

    # The same with the writer running between appends (as when relaying a model stream).
    memory.open("m2", "ep")
    spent = 0.0
    for i, e in enumerate(events):
        t = time.perf_counter()
        memory.append("m2", e)
        spent += time.perf_counter() - t
        if i % 10 == 9:
            await asyncio.sleep(0)
    memory_interleaved_us = spent / n * 1e6
    a.open("r2", "ep1")
    spent = 0.0
    t2 = time.perf_counter()
    for i, e in enumerate(events):
        t = time.perf_counter()
        a.append("r2", e)
        spent += time.perf_counter() - t
        if i % 10 == 9:
            await asyncio.sleep(0)
    assert await a.flush(10.0)
    interleaved_us = spent / n * 1e6
    wall_ms = (time.perf_counter() - t2) * 1e3

    assert await stream(a, "r1") == a.events("r1")
    assert [s for s, _ in await stream(a, "r1")] == list(range(1, n + 1))
    assert await stream(a, "r2") == a.events("r2")
    assert (await meta(a, "r1"))[b"last_seq"] == str(n).encode()
    with capsys.disabled():
        print(
            f"\n[broker cost] memory append {memory_us:.2f} us; redis owner append {redis_us:.2f} us "
            f"(tight loop), then flush of {n} events {flush_ms:.0f} ms; "
            f"interleaved with the writer: append {interleaved_us:.2f} us "
            f"(memory {memory_interleaved_us:.2f} us), "
            f"{n} events written in {wall_ms:.0f} ms"
        )


async def test_finished_logs_stay_in_memory_until_redis_holds_them(redis_factory: Factory) -> None:
    """Past the memory bound a finished log may leave memory, but only once Redis has it
    whole: during an outage every log stays (subscribers could not read it from anywhere)."""
    assert REDIS_URL
    proxy = Proxy(REDIS_URL)
    await proxy.up()
    size = len(orjson.dumps(delta(0))) + 60
    a = await redis_factory(url=proxy.url, max_closed_bytes=15 * size)
    b = await redis_factory()
    await proxy.down()
    for rid in ("r1", "r2"):
        a.open(rid, "ep")
        for i in range(10):
            a.append(rid, delta(i))
        a.close(rid)
    assert a.closed_bytes > a.max_closed_bytes
    assert a.info("r1") is not None and a.info("r2") is not None  # nothing is in Redis yet
    await proxy.up()
    assert await a.flush(5.0)
    await eventually(lambda: a.info("r1") is None)  # written whole: the oldest may go now
    assert a.info("r2") is not None
    sink = RecordingSink()
    info = await b.attach("r1", sink, 0)
    assert info is not None and info.closed and info.last_seq == 10
    await sink.wait_for(10)
    await proxy.down()
