"""Slow consumers cost only themselves (issue 4, PROTOCOL.md section 7)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.harness import REST, GatewayThread, WSClient, text_of

LONG = "Write a long answer of 3000 words about rivers."


def tiny_socket(port: int) -> socket.socket:
    """A client socket with a small receive buffer, so the server's sends back up quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def stalled_client(server: GatewayThread) -> WSClient:
    ws = await connect(
        server.ws_url,
        subprotocols=["agentgw.v1"],
        sock=tiny_socket(server.port),
        max_queue=16,
        max_size=2**24,
    )
    client = WSClient(ws)
    assert (await client.request("hello"))["type"] == "ack"
    return client


async def drain(client: WSClient) -> list[dict]:
    """Read everything the server sent until it closed the connection."""
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv(10)
    return [f for f in client.frames if f["type"] == "event"]


async def drain_until_done(client: WSClient, runs: tuple[str, ...]) -> list[dict]:
    """Events until every run ended or the server closed the connection."""
    done: set[str] = set()
    out: list[dict] = []
    try:
        while done != set(runs):
            frame = await client.recv(10)
            if frame["type"] == "event":
                out.append(frame)
                e = frame["event"]
                if e["message_type"] == "run_status" and e["status"] in ("completed", "failed", "cancelled"):
                    done.add(frame["run_id"])
        await client.close()
    except ConnectionClosed:
        assert client.ws.close_code == 4408
    return out


def assistant_text(frames: list[dict], run_id: str) -> str:
    return text_of([f for f in frames if f["run_id"] == run_id])


@pytest.fixture
def small_outbox(tmp_path: Path):
    gw = GatewayThread(tmp_path / "data", sndbuf=4096, outbox_limit=128).start()
    yield gw
    gw.stop()


@pytest.fixture
def tiny_budget(tmp_path: Path):
    gw = GatewayThread(tmp_path / "data", sndbuf=4096, outbox_limit=128, outbox_max_bytes=32 * 1024).start()
    yield gw
    gw.stop()


async def test_slow_reader_gets_merged_deltas_and_does_not_slow_the_run(small_outbox: GatewayThread) -> None:
    server = small_outbox
    rest = REST(server.url)
    agent = await rest.agent(name="a")
    reader = await WSClient.open(server.ws_url)
    slow = await stalled_client(server)
    # The first token waits until the stalled client follows live (a replay is pulled at its
    # own pace and needs no merging; live deltas queue for it and do).
    run_id = await reader.start_run(agent["id"], "[[ttft:500]] " + LONG)
    assert (await slow.request("run.subscribe", run_id=run_id))["type"] == "ack"
    started = time.monotonic()
    reference = await reader.finish(run_id, timeout=60)
    assert time.monotonic() - started < 30
    # The stalled client now reads what was kept for it: merged deltas, complete and in order.
    slow_frames: list[dict] = []
    while (
        not slow_frames
        or slow_frames[-1]["event"]["message_type"] != "run_status"
        or slow_frames[-1]["event"]["status"] != "completed"
    ):
        frame = await slow.recv(10)
        if frame["type"] == "event":
            slow_frames.append(frame)
    merged = [f for f in slow_frames if "seq_from" in f]
    assert merged, "deltas were merged for the slow reader"
    expected = 1
    for f in slow_frames:
        assert f.get("seq_from", f["seq"]) == expected, "merged ranges tile the log with no gap"
        expected = f["seq"] + 1
    assert assistant_text(slow_frames, run_id) == text_of(reference)
    assert len(slow_frames) < len(reference)
    await slow.close()
    await reader.close()
    await rest.close()


async def persisted_text(rest: REST, run_id: str) -> str:
    for _ in range(600):
        run = (await rest.http.get(f"/v1/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "completed", run
    messages = (await rest.http.get(f"/v1/runs/{run_id}/messages")).json()
    return "".join(m["content"] for m in messages if m["message_type"] == "assistant_message")


async def test_hopeless_reader_is_closed_4408_and_resumes_without_loss(tiny_budget: GatewayThread) -> None:
    server = tiny_budget
    rest = REST(server.url)
    a = await rest.agent(name="a")
    b = await rest.agent(name="b")
    starter = await WSClient.open(server.ws_url)
    slow = await stalled_client(server)
    run_a = await starter.start_run(a["id"], "[[ttft:500]] " + LONG)
    run_b = await starter.start_run(b["id"], "[[ttft:500]] " + LONG)
    await starter.close()  # runs outlive their clients; the reference is what gets persisted
    for run_id in (run_a, run_b):
        assert (await slow.request("run.subscribe", run_id=run_id))["type"] == "ack"
    ref_a = await persisted_text(rest, run_a)
    ref_b = await persisted_text(rest, run_b)
    got = await drain(slow)
    assert slow.ws.close_code == 4408 and slow.goodbye is not None and slow.goodbye["code"] == 4408
    # Resume as a client does after 4408: reconnect and resubscribe with `after`, until done.
    reconnects = 0
    for run_id in (run_a, run_b):
        while not any(
            f["run_id"] == run_id
            and f["event"]["message_type"] == "run_status"
            and f["event"]["status"] == "completed"
            for f in got
        ):
            again = await WSClient.open(server.ws_url)
            last = max((f["seq"] for f in got if f["run_id"] == run_id), default=0)
            reply = await again.request("run.subscribe", run_id=run_id, after=last)
            assert reply["result"]["recovered"] is True
            got += await drain_until_done(again, (run_id,))
            reconnects += 1
            assert reconnects < 50
    for run_id, ref in ((run_a, ref_a), (run_b, ref_b)):
        frames = [f for f in got if f["run_id"] == run_id]
        expected = 1
        for f in frames:
            assert f.get("seq_from", f["seq"]) == expected, "no gap, no duplicate across reconnects"
            expected = f["seq"] + 1
        assert text_of(frames) == ref
    await rest.close()
