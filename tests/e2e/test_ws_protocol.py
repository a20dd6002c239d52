"""The websocket's handling of bad input and the handshake rules (PROTOCOL.md sections 1, 2, 6)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness import REST, GatewayThread, WSClient, events_of


async def closed_with(ws: WSClient, timeout: float = 5) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv(timeout)
    assert ws.ws.close_code is not None
    return ws.ws.close_code


async def test_hello_ack_shape(server: GatewayThread) -> None:
    ws = await WSClient.open(server.ws_url, hello=False)
    reply = await ws.request("hello", client={"name": "t", "version": "0"})
    result = reply["result"]
    assert result["protocol"] == "agentgw.v1" and result["connection_id"]
    assert result["limits"]["max_frame_bytes"] == 1 << 20
    assert ws.ws.subprotocol == "agentgw.v1"
    await ws.close()


async def test_malformed_json_keeps_connection(ws: WSClient) -> None:
    await ws.send_raw("{not json")
    frame = await ws.recv()
    assert frame["type"] == "error" and frame["error"]["code"] == "bad_request" and frame["id"] is None
    assert (await ws.request("ping"))["type"] == "ack"


async def test_invalid_field_names_the_field(ws: WSClient) -> None:
    reply = await ws.request(
        "run.start", agent_id="agent-x", messages=[{"role": "assistant", "content": "hi"}]
    )
    assert reply["type"] == "error" and reply["error"]["code"] == "bad_request"
    fields = [e["field"] for e in reply["error"]["details"]["errors"]]
    assert any("role" in f for f in fields), reply
    assert (await ws.request("ping"))["type"] == "ack"


async def test_unknown_type(ws: WSClient) -> None:
    reply = await ws.request("run.explode")
    assert reply["type"] == "error" and reply["error"]["code"] == "unknown_type" and reply["id"]
    assert (await ws.request("ping"))["type"] == "ack"


async def test_unknown_agent_is_not_found(ws: WSClient) -> None:
    reply = await ws.request("run.start", agent_id="agent-nope", messages=[{"role": "user", "content": "hi"}])
    assert reply["error"]["code"] == "not_found"


async def test_oversized_frame_closes_1009(server: GatewayThread) -> None:
    ws = await WSClient.open(server.ws_url)
    await ws.send_raw(orjson.dumps({"type": "ping", "id": "x", "pad": "x" * (1 << 20)}).decode())
    assert await closed_with(ws) == 1009


async def test_binary_frame_closes_1003(server: GatewayThread) -> None:
    ws = await WSClient.open(server.ws_url)
    await ws.send_raw(b'{"type": "ping", "id": "1"}')
    assert await closed_with(ws) == 1003
    assert ws.goodbye is not None and ws.goodbye["code"] == 1003


async def test_first_frame_must_be_hello(server: GatewayThread) -> None:
    ws = await WSClient.open(server.ws_url, hello=False)
    await ws.send("ping")
    assert await closed_with(ws) == 4400


async def test_hello_timeout(server: GatewayThread) -> None:
    server.gateway.settings.hello_timeout_s = 0.3
    ws = await WSClient.open(server.ws_url, hello=False)
    assert await closed_with(ws) == 4400


async def test_bad_token_closes_4401(server: GatewayThread) -> None:
    server.gateway.settings.auth_token = "sesame"
    ws = await WSClient.open(server.ws_url, hello=False)
    await ws.send("hello", token="wrong")
    assert await closed_with(ws) == 4401
    ok = await WSClient.open(server.ws_url, hello=False)
    assert (await ok.request("hello", token="sesame"))["type"] == "ack"
    await ok.close()


async def test_foreign_origin_refused_403(server: GatewayThread) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(server.ws_url, subprotocols=["agentgw.v1"], origin="http://evil.example")
    assert info.value.response.status_code == 403
    ok = await connect(server.ws_url, subprotocols=["agentgw.v1"], origin="http://localhost:5173")
    await ok.close()


async def test_wrong_subprotocol_refused(server: GatewayThread) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(server.ws_url, subprotocols=["graphql-ws"])
    assert info.value.response.status_code == 400


async def test_too_many_bad_frames_closes_4400(ws: WSClient) -> None:
    for _ in range(25):
        await ws.send_raw("[]")
    assert await closed_with(ws) == 4400


async def test_too_many_subscriptions(server: GatewayThread, rest: REST) -> None:
    server.gateway.settings.max_subscriptions = 1
    ws = await WSClient.open(server.ws_url)
    a = await rest.agent(name="a")
    b = await rest.agent(name="b")
    running = await ws.start_run(a["id"], "Write 200 words please [[tps:20]]")
    reply = await ws.request("run.start", agent_id=b["id"], messages=[{"role": "user", "content": "hi"}])
    assert reply["error"]["code"] == "too_many_subscriptions"
    assert "at most 1 runs" in reply["error"]["message"]
    # Nothing was started for the refused request, and the running run is still followed.
    assert (await ws.request("run.cancel", run_id=running))["type"] == "ack"
    await ws.finish(running)
    await ws.close()


async def test_finished_runs_end_their_subscription(server: GatewayThread, rest: REST) -> None:
    """A connection that starts run after run never fills up with finished subscriptions: a
    subscription ends once the run's terminal event is written, live or replayed."""
    server.gateway.settings.max_subscriptions = 2
    broker = server.gateway.broker
    ws = await WSClient.open(server.ws_url)
    agent = await rest.agent(name="a")
    runs = []
    for i in range(5):
        frames = await ws.run(agent["id"], f"say hi {i}")
        assert events_of(frames)[-1]["status"] == "completed"
        runs.append(frames[0]["run_id"])
    # Each finished log lets go of this connection (so it can be swept).
    for _ in range(50):
        if not any(ws_sinks(broker, r) for r in runs):
            break
        await asyncio.sleep(0.02)
    assert not any(ws_sinks(broker, r) for r in runs)
    # Resubscribing to finished runs replays each in full and ends again.
    for run_id in runs:
        ws.frames.clear()
        ws.events.pop(run_id)
        reply = await ws.request("run.subscribe", run_id=run_id, after=0)
        assert reply["result"]["recovered"] is True
        frames = await ws.finish(run_id)
        assert [f["seq"] for f in frames] == list(range(1, reply["result"]["last_seq"] + 1))
    frames = await ws.run(agent["id"], "one more")
    assert events_of(frames)[-1]["status"] == "completed"
    await ws.close()


def ws_sinks(broker: Any, run_id: str) -> list[Any]:
    log = broker.logs.get(run_id)
    return [] if log is None else list(log.sinks)


async def test_replies_precede_events_and_ping_works_midrun(rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    ident = await ws.send(
        "run.start", agent_id=agent["id"], messages=[{"role": "user", "content": "hello there"}]
    )
    first = await ws.recv()
    assert first["type"] == "ack" and first["id"] == ident
    run_id = first["result"]["run_id"]
    assert first["result"]["status"] == "running" and first["result"]["epoch"]
    pong = await ws.request("ping")
    assert pong["type"] == "ack"
    frames = await ws.finish(run_id)
    assert frames[0]["seq"] == 1
    await asyncio.sleep(0)
