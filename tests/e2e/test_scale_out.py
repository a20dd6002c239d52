"""Two gateway processes sharing the store and Redis (DESIGN.md "Scale-out"): a client may
follow a run on any instance, cancel and approvals reach the run wherever it lives, and a
dead owner's runs are failed honestly by a survivor once its lease expires."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.harness import (
    REST,
    ROLL_DICE,
    GatewayThread,
    WSClient,
    events_of,
    free_port,
    spawn_gateway,
    text_of,
    wait_healthy,
)

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="GATEWAY_TEST_REDIS_URL is not set")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"gwtest-{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def pair(tmp_path: Path, prefix: str) -> Iterator[tuple[GatewayThread, GatewayThread]]:
    shared = {"redis_url": REDIS_URL, "redis_prefix": prefix, "run_lease_s": 1.0}
    a = GatewayThread(tmp_path / "data", **shared).start()
    b = GatewayThread(tmp_path / "data", **shared).start()
    yield a, b
    for gw in (a, b):
        if gw.thread is not None and gw.thread.is_alive():
            gw.stop()


async def test_follow_a_run_on_another_instance(pair: tuple[GatewayThread, GatewayThread]) -> None:
    a, b = pair
    rest = REST(a.url)
    agent = await rest.agent(name="x")
    on_a = await WSClient.open(a.ws_url)
    run_id = await on_a.start_run(agent["id"], "[[tps:400]] Write a long answer of 150 words.")
    on_b = await WSClient.open(b.ws_url)
    reply = await on_b.request("run.subscribe", run_id=run_id, after=0)
    assert reply["type"] == "ack" and reply["result"]["recovered"] is True
    frames_a = await on_a.finish(run_id)
    frames_b = await on_b.finish(run_id)
    assert [(f["seq"], f["event"]) for f in frames_b] == [(f["seq"], f["event"]) for f in frames_a]
    assert len(text_of(frames_b).split()) >= 140
    for c in (on_a, on_b):
        await c.close()
    await rest.close()


async def test_cancel_reaches_the_owner(pair: tuple[GatewayThread, GatewayThread]) -> None:
    a, b = pair
    rest = REST(a.url)
    agent = await rest.agent(name="x")
    on_a = await WSClient.open(a.ws_url)
    run_id = await on_a.start_run(agent["id"], "[[tps:100]] Write a long answer of 400 words.")
    await on_a.until(lambda f: f["type"] == "event" and f["event"]["message_type"] == "assistant_message")
    on_b = await WSClient.open(b.ws_url)
    assert (await on_b.request("run.cancel", run_id=run_id))["result"]["status"] == "cancelling"
    frames = await on_a.finish(run_id)
    assert frames[-1]["event"]["status"] == "cancelled"
    assert len(text_of(frames).split()) < 400
    for c in (on_a, on_b):
        await c.close()
    await rest.close()


async def test_approval_on_another_instance_resumes_the_run(
    pair: tuple[GatewayThread, GatewayThread],
) -> None:
    a, b = pair
    rest = REST(a.url)
    tool = await rest.tool(ROLL_DICE, default_requires_approval=True)
    agent = await rest.agent(name="x", tool_ids=[tool["id"]])
    on_a = await WSClient.open(a.ws_url)
    run_id = await on_a.start_run(agent["id"], "Call the roll_dice tool with 16 sides.")
    request = await on_a.until(
        lambda f: f["type"] == "event" and f["event"]["message_type"] == "approval_request_message"
    )
    await on_a.until(lambda f: f["type"] == "event" and f["event"].get("status") == "awaiting_approval")
    on_b = await WSClient.open(b.ws_url)
    assert (await on_b.request("run.subscribe", run_id=run_id))["type"] == "ack"
    call_id = request["event"]["tool_calls"][0]["tool_call_id"]
    reply = await on_b.request(
        "approval.respond", run_id=run_id, decisions=[{"tool_call_id": call_id, "approve": True}]
    )
    assert reply["result"]["pending"] == []
    frames_b = await on_b.finish(run_id)
    frames_a = await on_a.finish(run_id)  # the first instance's client keeps following
    assert frames_b[-1]["event"]["status"] == "completed"
    assert [(f["seq"], f["event"]) for f in frames_a] == [(f["seq"], f["event"]) for f in frames_b]
    ret = next(e for e in events_of(frames_b) if e["message_type"] == "tool_return_message")
    assert ret["tool_returns"][0]["status"] == "success"
    for c in (on_a, on_b):
        await c.close()
    await rest.close()


async def test_dead_owner_runs_are_failed_by_a_survivor(tmp_path: Path, prefix: str) -> None:
    shared = {"redis_url": REDIS_URL, "redis_prefix": prefix, "run_lease_s": 1.0}
    port = free_port()
    owner = spawn_gateway(
        tmp_path / "data",
        port,
        GATEWAY_REDIS_URL=REDIS_URL or "",
        GATEWAY_REDIS_PREFIX=prefix,
        GATEWAY_RUN_LEASE_S="1",
    )
    survivor = None
    try:
        await wait_healthy(port)
        survivor = GatewayThread(tmp_path / "data", **shared).start()
        rest_b = REST(survivor.url)
        agent = await rest_b.agent(name="x")
        on_a = await WSClient.open(f"ws://127.0.0.1:{port}/v1/ws")
        run_id = await on_a.start_run(agent["id"], "[[tps:50]] Write a long answer of 400 words.")
        await on_a.until(lambda f: f["type"] == "event" and f["event"]["message_type"] == "assistant_message")
        on_b = await WSClient.open(survivor.ws_url)
        assert (await on_b.request("run.subscribe", run_id=run_id))["type"] == "ack"
        owner.send_signal(signal.SIGKILL)  # no drain, no goodbye: the owner is simply gone
        owner.wait(10)
        frames = await on_b.finish(run_id, timeout=20)
        end = frames[-1]["event"]
        assert end["status"] == "failed" and end["stop_reason"] == "error"
        error = next(e for e in events_of(frames) if e["message_type"] == "error_message")
        assert error["error_type"] == "gateway_restarted"
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1)), (
            "the survivor continued the same log"
        )
        run = (await rest_b.http.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "failed"
        after = await on_b.run(agent["id"], "Reply with the message 'survived'.")
        assert after[-1]["event"]["status"] == "completed" and text_of(after) == "survived"
        await on_b.close()
        await rest_b.close()
        on_a.ws.transport.abort()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if survivor is not None:
            survivor.stop()
