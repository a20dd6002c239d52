"""Nothing lost, nothing doubled (issue 4): clients whose connections die at random points
resume with `after` and end with exactly the events an undisturbed subscriber saw."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from tests.harness import REST, ROLL_DICE, GatewayThread, WSClient, events_of, text_of

TERMINAL = {"completed", "failed", "cancelled"}


def is_terminal(frame: dict) -> bool:
    e = frame["event"]
    return e["message_type"] == "run_status" and e["status"] in TERMINAL


async def follow_with_cuts(server: GatewayThread, run_id: str, rng: random.Random, cuts: int) -> list[dict]:
    """Subscribe, and `cuts` times drop the TCP connection after a random number of frames,
    then reconnect and resume with `after` and `epoch`. Returns every event frame received."""
    got: list[dict] = []
    epoch = None
    while True:
        client = await WSClient.open(server.ws_url)
        after = got[-1]["seq"] if got else 0
        reply = await client.request(
            "run.subscribe", run_id=run_id, after=after, **({"epoch": epoch} if epoch else {})
        )
        assert reply["type"] == "ack", reply
        assert reply["result"]["recovered"] is True
        epoch = reply["result"]["epoch"]
        budget = rng.randint(1, 40) if cuts > 0 else 10**9
        try:
            while budget > 0:
                frame = await client.recv(20)
                if frame["type"] != "event":
                    continue
                got.append(frame)
                budget -= 1
                if is_terminal(frame):
                    await client.close()
                    return got
        except ConnectionClosed:
            pass
        client.ws.transport.abort()  # no close handshake: as if the Wi-Fi dropped
        cuts -= 1


async def check_same(reference: list[dict], resumed: list[dict]) -> None:
    assert [f["seq"] for f in resumed] == list(range(1, len(resumed) + 1)), "gapless, no duplicate"
    assert [f["event"] for f in resumed] == [f["event"] for f in reference]
    assert text_of(resumed) == text_of(reference)


async def test_resume_long_token_stream(server: GatewayThread, rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    run_id = await ws.start_run(agent["id"], "[[tps:800]] Write a long answer of 600 words about rivers.")
    resumed = await follow_with_cuts(server, run_id, random.Random(7), cuts=8)
    reference = await ws.finish(run_id)
    await check_same(reference, resumed)
    assert len(text_of(reference).split()) >= 500


async def test_resume_parallel_tool_calls(server: GatewayThread, rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])
    for seed in range(3):
        run_id = await ws.start_run(
            agent["id"], "[[tps:300]] Please call the roll_dice tool three times in parallel."
        )
        resumed = await follow_with_cuts(server, run_id, random.Random(seed), cuts=4)
        reference = await ws.finish(run_id)
        await check_same(reference, resumed)
        calls = [e for e in events_of(resumed) if e["message_type"] == "tool_call_message"]
        assert len({c["tool_call"]["tool_call_id"] for c in calls}) == 3


async def test_resume_across_an_approval(server: GatewayThread, rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE, default_requires_approval=True)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])
    run_id = await ws.start_run(agent["id"], "[[tps:300]] Call the roll_dice tool with 16 sides.")
    follower = asyncio.ensure_future(follow_with_cuts(server, run_id, random.Random(3), cuts=3))
    request = await ws.until(
        lambda f: f["type"] == "event" and f["event"]["message_type"] == "approval_request_message"
    )
    call = request["event"]["tool_calls"][0]
    await asyncio.sleep(0.2)
    reply = await ws.request(
        "approval.respond", run_id=run_id, decisions=[{"tool_call_id": call["tool_call_id"], "approve": True}]
    )
    assert reply["type"] == "ack" and reply["result"]["pending"] == []
    resumed = await asyncio.wait_for(follower, 30)
    assert any(f["event"]["message_type"] == "approval_response_message" for f in resumed)
    reference = await ws.finish(run_id)
    await check_same(reference, resumed)


async def test_late_subscriber_gets_whole_log_and_many_subscribers_agree(
    server: GatewayThread, rest: REST, ws: WSClient
) -> None:
    agent = await rest.agent(name="a")
    run_id = await ws.start_run(agent["id"], "[[tps:500]] Write a long answer of 200 words.")
    viewers = [await WSClient.open(server.ws_url) for _ in range(5)]
    for v in viewers:
        assert (await v.request("run.subscribe", run_id=run_id))["type"] == "ack"
    reference = await ws.finish(run_id)
    for v in viewers:
        frames = await v.finish(run_id)
        assert [(f["seq"], f["event"]) for f in frames] == [(f["seq"], f["event"]) for f in reference]
        await v.close()
    late = await WSClient.open(server.ws_url)
    reply = await late.request("run.subscribe", run_id=run_id, after=3)
    assert reply["result"]["last_seq"] == reference[-1]["seq"] and reply["result"]["status"] == "completed"
    frames = await late.finish(run_id)
    assert [f["seq"] for f in frames] == list(range(4, reference[-1]["seq"] + 1))
    await late.close()


async def test_unknown_epoch_is_not_recovered(rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    frames = await ws.run(agent["id"], "hello")
    run_id = frames[0]["run_id"]
    reply = await ws.request("run.subscribe", run_id=run_id, after=2, epoch="0" * 32)
    assert reply["result"]["recovered"] is False
    assert reply["result"]["last_seq"] == frames[-1]["seq"]


async def test_runs_outlive_their_clients(server: GatewayThread, rest: REST) -> None:
    agent = await rest.agent(name="a")
    client = await WSClient.open(server.ws_url)
    run_id = await client.start_run(agent["id"], "[[tps:400]] Write a long answer of 100 words.")
    client.ws.transport.abort()
    for _ in range(200):
        run = (await rest.http.get(f"/v1/runs/{run_id}")).json()
        if run["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "completed"
    messages = (await rest.http.get(f"/v1/runs/{run_id}/messages")).json()
    assert (
        len("".join(m["content"] for m in messages if m["message_type"] == "assistant_message").split()) >= 90
    )


async def test_a_finished_log_pushed_out_of_memory_answers_recovered_false(tmp_path: Path) -> None:
    """GATEWAY_LOG_MEMORY_MB bounds the finished logs kept; the oldest leaves first, and a
    subscriber to it learns so (recovered: false, the run's status) instead of waiting."""
    gw = GatewayThread(tmp_path / "data", log_memory_mb=0.004).start()  # about 4 KB of frames
    rest = REST(gw.url)
    ws = await WSClient.open(gw.ws_url)
    try:
        agent = await rest.agent(name="bounded")
        first = await ws.start_run(agent["id"], "Reply with the message 'one'.")
        await ws.finish(first)
        for word in ("two", "three", "four"):
            await ws.run(agent["id"], f"Reply with the message '{word}'.")
        broker = gw.gateway.broker
        assert broker.info(first) is None
        assert broker.closed_bytes <= broker.max_closed_bytes
        ack = await ws.request("run.subscribe", run_id=first, after=0)
        assert ack["type"] == "ack"
        assert ack["result"]["recovered"] is False and ack["result"]["status"] == "completed"
        r = await rest.http.get(f"/v1/runs/{first}/messages")
        assert r.status_code == 200 and "one" in r.text  # the store still has the run
    finally:
        await ws.close()
        await rest.close()
        gw.stop()
