"""Live events written straight to the socket while the connection's writer is idle
(gateway/ws/connection.py `direct_writer`): order, gaplessness and interleaved replies hold,
and any other server's `send` falls back to the writer task."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.ws.connection import Connection, direct_writer
from tests.harness import REST, GatewayThread, WSClient, events_of, text_of


async def test_live_deltas_go_direct_and_stay_in_order(server: GatewayThread, rest: REST) -> None:
    ws = await WSClient.open(server.ws_url)
    (conn,) = list(server.gateway.connections)
    assert conn._direct is not None, "uvicorn's websockets-sansio protocol is in use"
    direct = conn._direct
    written = 0

    def counting(texts: Sequence[str]) -> bool:
        nonlocal written
        ok = direct(texts)
        written += len(texts) if ok else 0
        return ok

    conn._direct = counting
    agent = await rest.agent(name="a")
    run_id = await ws.start_run(agent["id"], "[[tps:400]] Write 300 words please")
    pings = 0
    while not any(
        f["type"] == "event"
        and f["event"]["message_type"] == "run_status"
        and f["event"]["status"] == "completed"
        for f in ws.events.get(run_id, [])
    ):
        reply = await ws.request("ping")  # replies interleave with the direct writes
        assert reply["type"] == "ack"
        pings += 1
        await asyncio.sleep(0.005)
    frames = ws.events[run_id]
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert len(text_of(frames).split()) == 300
    assert written > 100, "most deltas were written directly"
    assert pings > 3
    # Live equals replay, byte for byte in content.
    other = await WSClient.open(server.ws_url)
    assert (await other.request("run.subscribe", run_id=run_id))["type"] == "ack"
    replayed = await other.finish(run_id)
    assert [(f["seq"], f["event"]) for f in replayed] == [(f["seq"], f["event"]) for f in frames]
    assert events_of(frames)[-1]["status"] == "completed"
    await other.close()
    await ws.close()


async def test_other_servers_send_goes_through_the_writer() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert direct_writer(send) is None
    conn = Connection("c1", send, limit=16)
    writer = asyncio.ensure_future(conn.run_writer())
    await asyncio.sleep(0)
    for seq in range(1, 4):
        event = {"message_type": "assistant_message", "content": str(seq)}
        conn.deliver("run-1", seq, orjson.dumps({"seq": seq}).decode(), event)
    await asyncio.sleep(0.01)
    writer.cancel()
    assert [orjson.loads(m["text"])["seq"] for m in sent] == [1, 2, 3]


async def test_a_replay_is_written_in_batches(server: GatewayThread, rest: REST) -> None:
    """The writer hands the socket up to WRITE_BATCH_BYTES of queued frames per write: a
    replay of 1,000 events takes a few dozen writes, not 1,000, and arrives whole."""
    ws = await WSClient.open(server.ws_url)
    agent = await rest.agent(name="a")
    frames = await ws.run(agent["id"], "Write 1000 words please")
    assert len(frames) > 1000
    before = set(server.gateway.connections)
    other = await WSClient.open(server.ws_url)
    (conn,) = set(server.gateway.connections) - before
    assert conn._direct is not None
    direct = conn._direct
    calls: list[int] = []

    def counting(texts: Sequence[str]) -> bool:
        ok = direct(texts)
        if ok:
            calls.append(len(texts))
        return ok

    conn._direct = counting
    assert (await other.request("run.subscribe", run_id=frames[0]["run_id"], after=0))["type"] == "ack"
    replayed = await other.finish(frames[0]["run_id"])
    assert [(f["seq"], f["event"]) for f in replayed] == [(f["seq"], f["event"]) for f in frames]
    assert sum(calls) >= len(frames) - 1, "all but perhaps the last frames went through the batch writer"
    assert len(calls) < len(frames) / 10, calls
    await other.close()
    await ws.close()
