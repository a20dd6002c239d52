"""Busy agents under races, idempotency, liveness, and a graceful SIGTERM (issue 4)."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness import REST, GatewayThread, WSClient, events_of, free_port, wait_healthy
from tests.harness import spawn_gateway as spawn

LONG = "[[tps:300]] Write a long answer of 300 words."
WAIT_TOOL = '''
def wait(seconds: int) -> str:
    """Wait.

    Args:
        seconds (int): how long
    """
    import time

    time.sleep(seconds)
    return "ok"
'''


async def test_concurrent_starts_one_runs_rest_rejected(server: GatewayThread, rest: REST) -> None:
    agent = await rest.agent(name="a")
    clients = [await WSClient.open(server.ws_url) for _ in range(8)]
    replies = await asyncio.gather(
        *(
            c.request("run.start", agent_id=agent["id"], messages=[{"role": "user", "content": LONG}])
            for c in clients
        )
    )
    acks = [r for r in replies if r["type"] == "ack"]
    busy = [r for r in replies if r["type"] == "error"]
    assert len(acks) == 1, replies
    active = acks[0]["result"]["run_id"]
    assert all(
        r["error"]["code"] == "agent_busy" and r["error"]["details"]["active_run_id"] == active for r in busy
    )
    for c in clients:
        await c.close()


async def test_concurrent_queued_starts_run_in_order(server: GatewayThread, rest: REST) -> None:
    agent = await rest.agent(name="a")
    clients = [await WSClient.open(server.ws_url) for _ in range(4)]
    replies = await asyncio.gather(
        *(
            c.request(
                "run.start",
                agent_id=agent["id"],
                if_busy="queue",
                messages=[{"role": "user", "content": f"[[ttft:300]] Reply with the message 'run {i}'."}],
            )
            for i, c in enumerate(clients)
        )
    )
    assert all(r["type"] == "ack" for r in replies), replies
    assert sorted(r["result"]["status"] for r in replies) == ["queued", "queued", "queued", "running"]
    results = [await c.finish(r["result"]["run_id"]) for c, r in zip(clients, replies, strict=True)]
    assert all(f[-1]["event"]["status"] == "completed" for f in results)
    queued = [f for f in results if f[1]["event"]["status"] == "queued"]
    assert all(f[2]["event"] == {"message_type": "run_status", "status": "running"} for f in queued)
    history = (await rest.http.get(f"/v1/agents/{agent['id']}/messages")).json()
    users = [m for m in history if m["message_type"] == "user_message"]
    assert len(users) == 4, "each queued input joined the history when its run started"
    kinds = [m["message_type"] for m in history]
    assert kinds == ["user_message", "assistant_message"] * 4, "runs did not overlap"
    for c in clients:
        await c.close()


async def test_idempotency_key_under_races(server: GatewayThread, rest: REST) -> None:
    agent = await rest.agent(name="a")
    clients = [await WSClient.open(server.ws_url) for _ in range(6)]
    replies = await asyncio.gather(
        *(
            c.request(
                "run.start",
                agent_id=agent["id"],
                idempotency_key="order-42",
                messages=[{"role": "user", "content": "hello"}],
            )
            for c in clients
        )
    )
    assert all(r["type"] == "ack" for r in replies), replies
    assert len({r["result"]["run_id"] for r in replies}) == 1
    frames = [await c.finish(replies[0]["result"]["run_id"]) for c in clients]
    assert all([f["event"] for f in x] == [f["event"] for f in frames[0]] for x in frames), (
        "each got the whole log"
    )
    runs = (await rest.http.get("/v1/runs/", params={"agent_id": agent["id"]})).json()
    assert len(runs) == 1
    for c in clients:
        await c.close()


async def test_dead_connection_is_detected(tmp_path: Path) -> None:
    gw = GatewayThread(tmp_path / "data", heartbeat_s=0.3).start()
    try:
        raw = socket.create_connection(("127.0.0.1", gw.port))
        raw.sendall(
            b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert b"101" in raw.recv(4096).split(b"\r\n")[0]
        # Never answer a ping: the server must give up on us within a few heartbeats.
        for _ in range(100):
            if not gw.gateway.connections:
                break
            await asyncio.sleep(0.05)
        assert not gw.gateway.connections
        raw.close()
    finally:
        gw.stop()


@pytest.mark.timeout(60)
async def test_sigterm_says_goodbye_and_leaves_no_run_running(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    proc = spawn(data, port)
    try:
        await wait_healthy(port)
        url = f"http://127.0.0.1:{port}"
        rest = REST(url)
        agent = await rest.agent(name="a")
        ws = await WSClient.open(f"ws://127.0.0.1:{port}/v1/ws")
        # A multi-step run (a tool call, then an answer) that cannot finish within the grace.
        tool = await rest.tool(WAIT_TOOL)
        await rest.http.patch(f"/v1/agents/{agent['id']}", json={"tool_ids": [tool["id"]]})
        long_run = await ws.start_run(agent["id"], "Call the wait tool with 3 seconds.")
        await ws.until(lambda f: f["type"] == "event" and f["event"]["message_type"] == "tool_call_message")
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv(10)
        assert ws.ws.close_code == 1001
        assert ws.goodbye is not None and ws.goodbye["code"] == 1001
        assert proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean stop
        await rest.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Restart on the same data: the run that was cut is not left `running`.
    proc = spawn(data, port)
    try:
        await wait_healthy(port)
        rest = REST(f"http://127.0.0.1:{port}")
        run = (await rest.http.get(f"/v1/runs/{long_run}")).json()
        assert run["status"] == "failed", run
        assert run["stop_reason"] == "error" and run["error"]["error_type"] in (
            "gateway_shutdown",
            "gateway_restarted",
        )
        agent_now = (await rest.http.get(f"/v1/agents/{agent['id']}")).json()
        assert agent_now["active_run_id"] is None, "the agent is free again"
        ws = await WSClient.open(f"ws://127.0.0.1:{port}/v1/ws")
        frames = await ws.run(agent["id"], "Reply with the message 'back'.")
        assert frames[-1]["event"]["status"] == "completed", events_of(frames)[-4:]
        await ws.close()
        await rest.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


async def test_no_new_connections_while_draining(server: GatewayThread) -> None:
    server.gateway.drained = True
    try:
        with pytest.raises(InvalidStatus) as info:
            await connect(server.ws_url, subprotocols=["agentgw.v1"])
        assert info.value.response.status_code == 503
    finally:
        server.gateway.drained = False


async def test_start_refused_while_draining(server: GatewayThread, rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    server.gateway.manager.accepting = False
    reply = await ws.request("run.start", agent_id=agent["id"], messages=[{"role": "user", "content": "hi"}])
    assert reply["error"]["code"] == "rate_limited" and reply["error"]["retryable"] is True
    server.gateway.manager.accepting = True


async def test_freeze_gc_freezes_after_start_and_runs_still_work(tmp_path: Path) -> None:
    """`gateway serve` freezes what start-up made (and the SDK's lazily imported modules) so
    full collections stop scanning the libraries; runs work as before."""
    gc.unfreeze()
    server = GatewayThread(tmp_path / "data", freeze_gc=True).start()
    try:
        assert gc.get_freeze_count() > 10_000
        rest = REST(server.url)
        agent = await rest.agent(name="a")
        ws = await WSClient.open(server.ws_url)
        frames = await ws.run(agent["id"], "Reply with the message 'frozen'.")
        assert events_of(frames)[-1]["status"] == "completed"
        await ws.close()
        await rest.close()
    finally:
        server.stop()
        gc.unfreeze()
