"""The broker contract (gateway/broker/base.py), checked against every implementation.

`pair` runs each test three ways: memory; Redis with the appending and the attaching broker
being one process; and Redis with two processes (the attaching one reads the log from Redis).
"""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import orjson

from tests.broker.conftest import AnyBroker, Pair, RecordingSink, eventually, settle


def delta(i: int) -> dict[str, Any]:
    return {"message_type": "assistant_message", "id": "m1", "otid": "o1", "content": f"d{i} é\u2028🙂"}


def frames_of(broker: AnyBroker, run_id: str, after: int = 0) -> list[tuple[int, str]]:
    return broker.events(run_id, after)


async def test_seq_is_gapless_from_one(pair: Pair) -> None:
    pair.writer.open("r1", "ep1")
    seqs = [pair.writer.append("r1", delta(i)) for i in range(50)]
    assert seqs == list(range(1, 51))
    await settle(pair.writer)
    info = await pair.reader.fetch_info("r1")
    assert info is not None
    assert (info.epoch, info.last_seq, info.first_seq, info.closed) == ("ep1", 50, 1, False)
    frames = frames_of(pair.writer, "r1")
    assert [s for s, _ in frames] == seqs
    decoded = orjson.loads(frames[6][1])
    assert decoded == {"type": "event", "run_id": "r1", "seq": 7, "event": delta(6)}


async def test_attach_after_replays_the_rest_then_live(pair: Pair) -> None:
    pair.writer.open("r1", "ep1")
    for i in range(10):
        pair.writer.append("r1", delta(i))
    await settle(pair.writer)
    sink = RecordingSink()
    info = await pair.reader.attach("r1", sink, 4)
    assert info is not None and info.epoch == "ep1" and info.last_seq == 10
    await sink.wait_for(6)
    assert sink.seqs == list(range(5, 11))
    for i in range(10, 15):
        pair.writer.append("r1", delta(i))
    await sink.wait_for(11)
    await asyncio.sleep(0.05)
    assert sink.got == frames_of(pair.writer, "r1", 4)
    assert sink.events == [delta(i) for i in range(4, 15)]


async def test_attach_after_everything_gets_only_live(pair: Pair) -> None:
    pair.writer.open("r1", "ep1")
    for i in range(3):
        pair.writer.append("r1", delta(i))
    await settle(pair.writer)
    sink = RecordingSink()
    await pair.reader.attach("r1", sink, 3)
    pair.writer.append("r1", delta(3))
    await sink.wait_for(1)
    await asyncio.sleep(0.05)
    assert sink.seqs == [4]


async def test_attaching_during_a_burst_gives_no_gap_and_no_duplicate(pair: Pair) -> None:
    rng = random.Random(7)
    pair.writer.open("r1", "ep1")
    # A remote reader finds a log once its owner's first write reached Redis (the gateway
    # waits for a live run's log the same way, gateway.broker.find_log).
    await settle(pair.writer)
    n, attaches = 3000, 12
    started = [asyncio.Event() for _ in range(attaches)]  # the producer waits for each attach to start

    async def produce() -> None:
        for i in range(n):
            if i % 250 == 125:
                await started[i // 250].wait()
            pair.writer.append("r1", delta(i))
            if rng.random() < 0.2:
                await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    sinks: list[tuple[RecordingSink, int]] = []
    for k in range(attaches):
        await asyncio.sleep(rng.random() * 0.002)
        written = len(frames_of(pair.writer, "r1"))
        after = rng.choice([0, written, max(0, written - 50), written // 2])
        sink = RecordingSink()
        sinks.append((sink, after))
        started[k].set()
        await pair.reader.attach("r1", sink, after)
    await producer
    expected = frames_of(pair.writer, "r1")
    for sink, after in sinks:
        await sink.wait_for(n - after, timeout=10.0)
    await asyncio.sleep(0.05)
    for sink, after in sinks:
        assert sink.seqs == list(range(after + 1, n + 1)), f"after={after}"
        assert sink.got == expected[after:]


async def test_two_sinks_get_identical_frames(pair: Pair) -> None:
    pair.writer.open("r1", "ep1")
    a, b = RecordingSink(), RecordingSink()
    pair.writer.append("r1", {"message_type": "user_message", "content": "hi", "otid": "u"})
    await settle(pair.writer)
    await pair.reader.attach("r1", a, 0)
    for i in range(100):
        pair.writer.append("r1", delta(i))
    await pair.reader.attach("r1", b, 0)
    big = {"message_type": "tool_return_message", "tool_returns": [{"tool_return": "x" * 100_000}]}
    pair.writer.append("r1", big)
    await a.wait_for(102)
    await b.wait_for(102)
    assert a.got == b.got == frames_of(pair.writer, "r1")
    assert [f.encode() for _, f in a.got] == [f.encode() for _, f in b.got]
    assert a.events[-1] == big


async def test_detach_stops_delivery(pair: Pair) -> None:
    pair.writer.open("r1", "ep1")
    gone, stays = RecordingSink(), RecordingSink()
    await settle(pair.writer)
    await pair.reader.attach("r1", gone, 0)
    await pair.reader.attach("r1", stays, 0)
    for i in range(3):
        pair.writer.append("r1", delta(i))
    await gone.wait_for(3)
    pair.reader.detach("r1", gone)
    for i in range(3, 6):
        pair.writer.append("r1", delta(i))
    await stays.wait_for(6)
    await asyncio.sleep(0.05)
    assert gone.seqs == [1, 2, 3]
    assert stays.seqs == [1, 2, 3, 4, 5, 6]


async def test_epoch_is_reported(pair: Pair) -> None:
    pair.writer.open("r1", "epoch-abc")
    pair.writer.open("r1", "another")  # a log that exists is kept
    pair.writer.append("r1", delta(0))
    assert pair.writer.info("r1") is not None
    assert pair.writer.info("r1").epoch == "epoch-abc"  # type: ignore[union-attr]
    await settle(pair.writer)
    info = await pair.reader.fetch_info("r1")
    assert info is not None and info.epoch == "epoch-abc"
    attached = await pair.reader.attach("r1", RecordingSink(), 0)
    assert attached is not None and attached.epoch == "epoch-abc"


async def test_unknown_run(broker: AnyBroker) -> None:
    assert broker.info("nope") is None
    assert await broker.fetch_info("nope") is None
    assert await broker.adopt("nope") is None
    assert await broker.attach("nope", RecordingSink(), 0) is None
    assert broker.events("nope") == []
    broker.detach("nope", RecordingSink())  # harmless


async def test_adopt_of_a_log_held_here_is_its_info(broker: AnyBroker) -> None:
    broker.open("r1", "ep1")
    broker.append("r1", delta(0))
    assert await broker.adopt("r1") == broker.info("r1")
    assert broker.append("r1", delta(1)) == 2


async def test_close_then_retention_drops_the_log(pair_factory: Any) -> None:
    pair: Pair = await pair_factory(retention_s=0.2)
    pair.writer.open("r1", "ep1")
    for i in range(3):
        pair.writer.append("r1", delta(i))
    pair.writer.close("r1")
    assert pair.writer.info("r1").closed  # type: ignore[union-attr]
    await settle(pair.writer)
    info = await pair.reader.fetch_info("r1")
    assert info is not None and info.closed and info.last_seq == 3
    await eventually(lambda: pair.writer.info("r1") is None, timeout=3.0)

    async def gone() -> bool:
        return await pair.reader.fetch_info("r1") is None

    await eventually(gone, timeout=3.0)
    assert await pair.reader.attach("r1", RecordingSink(), 0) is None


async def test_finished_logs_past_the_memory_bound_leave_memory_oldest_first(pair_factory: Any) -> None:
    size = len(orjson.dumps(delta(0))) + 60  # about one frame
    pair: Pair = await pair_factory(max_closed_bytes=25 * size)
    w = pair.writer
    replaying = RecordingSink()
    for n, rid in enumerate(["r1", "r2", "r3", "r4"]):
        w.open(rid, f"ep{n}")
        for i in range(10):
            w.append(rid, delta(i))
        if rid == "r2":
            await w.attach(rid, replaying, 0)  # followed: it may not go while attached
        w.close(rid)
        await settle(w)
    assert w.closed_bytes <= w.max_closed_bytes
    await eventually(lambda: w.info("r1") is None)  # the oldest went first
    assert w.info("r2") is not None, "a followed log stays"
    assert w.info("r4") is not None, "the newest stays"
    assert w.closed_bytes == sum(sum(map(len, w.logs[r].frames)) for r in w.logs if w.logs[r].closed_at)
    assert replaying.seqs == list(range(1, 11))
    sink = RecordingSink()
    info = await pair.reader.attach("r1", sink, 0)
    if pair.kind == "memory":
        assert info is None  # gone, as if its retention had passed: recovered false
    else:
        assert info is not None and info.closed  # Redis still holds it whole
        await sink.wait_for(10)
        assert sink.seqs == list(range(1, 11))


async def test_a_finished_log_is_sealed_and_replays_the_same(pair: Pair) -> None:
    """Closing seals the log: its frames become a tuple the collector stops walking and its
    event dicts go (full collections would otherwise walk every event ever held); readers
    get the very same frames and events as before."""
    w = pair.writer
    w.open("r1", "ep1")
    for i in range(10):
        w.append("r1", delta(i))
    before = frames_of(w, "r1")
    w.close("r1")
    await settle(w)
    log = w.logs["r1"]
    assert log.events is None and isinstance(log.frames, tuple)
    gc.collect()
    assert not gc.is_tracked(log.frames)
    assert frames_of(w, "r1") == before
    page = w.page("r1", 3, 4)
    assert [(seq, frame) for seq, frame, _ in page] == before[3:7]
    assert all(event is None for _, _, event in page)  # pullers decode when they need to
    sink = RecordingSink()
    info = await pair.reader.attach("r1", sink, 2)
    assert info is not None and info.closed and info.last_seq == 10
    await sink.wait_for(8)
    assert sink.got == before[2:]
    assert sink.events == [delta(i) for i in range(2, 10)]


async def test_control_messages_reach_the_handlers(pair: Pair) -> None:
    got: list[dict[str, Any]] = []

    async def handler(message: dict[str, Any]) -> None:
        got.append(message)

    pair.reader.on_control(handler)
    await pair.writer.publish_control({"type": "cancel", "run_id": "r1", "mode": "immediate"})
    await pair.writer.publish_control({"type": "cancel", "run_id": "r2", "mode": "after_step"})
    await eventually(lambda: len(got) == 2)
    assert got == [
        {"type": "cancel", "run_id": "r1", "mode": "immediate"},
        {"type": "cancel", "run_id": "r2", "mode": "after_step"},
    ]


async def test_sinks_are_called_synchronously(pair: Pair) -> None:
    """Locally, a sink has the event when `append` returns; remotely, the run's reader delivers it."""
    pair.writer.open("r1", "ep1")
    pair.writer.append("r1", delta(0))
    await settle(pair.writer)
    sink = RecordingSink()
    await pair.reader.attach("r1", sink, 0)
    await sink.wait_for(1)
    me = asyncio.current_task()
    for i in range(1, 20):
        sink.appending = True
        pair.writer.append("r1", delta(i))
        sink.appending = False
        if not pair.remote:
            assert len(sink.got) == i + 1
    await sink.wait_for(20)
    if pair.remote:
        readers = {t for t in sink.tasks[1:]}
        assert len(readers) == 1
        (reader,) = readers
        assert reader is not me and reader is not None and reader.get_name() == "broker-reader:r1"
        assert not any(sink.in_append)
    else:
        assert all(sink.in_append[1:])
        assert all(t is me for t in sink.tasks)
