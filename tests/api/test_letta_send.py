"""Letta's send-message API (the seed's integration test, on the offline model): blocking,
step streaming, token streaming, background + runs.stream replay, async, cancel, and the
persisted messages that the seed's assertions read."""

from __future__ import annotations

import asyncio

import orjson

from tests.harness import REST, ROLL_DICE, GatewayThread

FORCE_REPLY = "This is an automated test message. Reply with the message 'Teamwork makes the dream work'."
ROLL = (
    "This is an automated test message. "
    "Call the roll_dice tool with 16 sides and reply back to me with the outcome."
)


def body(text: str, **fields: object) -> dict:
    return {"messages": [{"role": "user", "content": text, "otid": "otid-user-1"}], **fields}


async def read_sse(rest: REST, url: str, payload: dict | None = None, method: str = "POST") -> list[dict]:
    events: list[dict] = []
    async with rest.http.stream(method, url, json=payload) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                if data == "[DONE]":
                    events.append({"message_type": "[DONE]"})
                    break
                events.append(orjson.loads(data))
    return events


def collapse(events: list[dict]) -> list[str]:
    out: list[str] = []
    for e in events:
        if not out or out[-1] != e["message_type"]:
            out.append(e["message_type"])
    return out


async def test_blocking_send(rest: REST) -> None:
    agent = await rest.agent(name="a")
    r = await rest.http.post(f"/v1/agents/{agent['id']}/messages", json=body(FORCE_REPLY))
    assert r.status_code == 200, r.text
    data = r.json()
    (msg,) = data["messages"]
    assert msg["message_type"] == "assistant_message" and "teamwork" in msg["content"].lower()
    assert msg["run_id"] and msg["otid"].endswith("0")
    assert data["stop_reason"]["stop_reason"] == "end_turn"
    assert data["usage"]["prompt_tokens"] > 0 and data["usage"]["step_count"] == 1
    run = (await rest.http.get(f"/v1/runs/{msg['run_id']}")).json()
    assert run["status"] == "completed"


async def test_token_stream_shape_matches_letta(rest: REST) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])
    events = await read_sse(rest, f"/v1/agents/{agent['id']}/messages/stream", body(ROLL, stream_tokens=True))
    assert collapse(events) == [
        "assistant_message",
        "tool_call_message",
        "tool_return_message",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
        "[DONE]",
    ]
    assert sum(1 for e in events if e["message_type"] == "assistant_message") > 2, "streamed token by token"
    assert all(e["run_id"] == events[0]["run_id"] for e in events[:-1])
    first_text = next(e for e in events if e["message_type"] == "assistant_message")
    first_call = next(e for e in events if e["message_type"] == "tool_call_message")
    ret = next(e for e in events if e["message_type"] == "tool_return_message")
    assert first_text["otid"].endswith("0") and first_call["otid"].endswith("1") and ret["otid"].endswith("0")
    # What Letta's test reads back from the database afterwards:
    history = (await rest.http.get(f"/v1/agents/{agent['id']}/messages")).json()
    assert collapse(history) == [
        "user_message",
        "assistant_message",
        "tool_call_message",
        "tool_return_message",
        "assistant_message",
    ]
    assert history[0]["otid"] == "otid-user-1"


async def test_step_stream_one_event_per_block(rest: REST) -> None:
    agent = await rest.agent(name="a")
    events = await read_sse(rest, f"/v1/agents/{agent['id']}/messages/stream", body(FORCE_REPLY))
    assert [e["message_type"] for e in events] == [
        "assistant_message",
        "stop_reason",
        "usage_statistics",
        "[DONE]",
    ]
    assert events[0]["content"] == "Teamwork makes the dream work"


async def test_background_then_replay_from_start(rest: REST) -> None:
    agent = await rest.agent(name="a")
    live = await read_sse(
        rest,
        f"/v1/agents/{agent['id']}/messages/stream",
        body(FORCE_REPLY, stream_tokens=True, background=True),
    )
    run_id = live[0]["run_id"]
    replay = await read_sse(rest, f"/v1/runs/{run_id}/stream", {"starting_after": 0})
    assert replay == live
    tail = await read_sse(rest, f"/v1/runs/{run_id}/stream?starting_after={live[2]['seq_id']}", method="GET")
    assert tail == live[3:]


async def test_async_then_poll(rest: REST) -> None:
    agent = await rest.agent(name="a")
    r = await rest.http.post(f"/v1/agents/{agent['id']}/messages/async", json=body(FORCE_REPLY))
    run = r.json()
    assert run["status"] in ("running", "completed")
    for _ in range(100):
        run = (await rest.http.get(f"/v1/runs/{run['id']}")).json()
        if run["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    messages = (await rest.http.get(f"/v1/runs/{run['id']}/messages")).json()
    assert [m["message_type"] for m in messages] == ["user_message", "assistant_message"]


async def test_cancel_by_agent_mid_stream(server: GatewayThread, rest: REST) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])

    async def cancel_soon() -> dict:
        # Once the run is running (its tool call streams at 10 tokens/s for about a second).
        params = {"agent_id": agent["id"], "statuses": "running"}
        for _ in range(200):
            if (await rest.http.get("/v1/runs/", params=params)).json():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        return (await rest.http.post(f"/v1/agents/{agent['id']}/messages/cancel")).json()

    canceller = asyncio.ensure_future(cancel_soon())
    events = await read_sse(
        rest, f"/v1/agents/{agent['id']}/messages/stream", body("[[tps:10]] " + ROLL, stream_tokens=True)
    )
    cancelled = await canceller
    assert list(cancelled.values()) == ["cancelling"]
    stop = next(e for e in events if e["message_type"] == "stop_reason")
    assert stop["stop_reason"] == "cancelled"
    r = await rest.http.post(f"/v1/agents/{agent['id']}/messages", json=body(FORCE_REPLY))
    assert r.json()["stop_reason"]["stop_reason"] == "end_turn", "history still valid after the cancel"


async def test_send_errors(rest: REST) -> None:
    agent = await rest.agent(name="a")
    r = await rest.http.post(f"/v1/agents/{agent['id']}/messages", json={"messages": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "messages"]
    r = await rest.http.post(
        f"/v1/agents/{agent['id']}/messages", json={"messages": [{"role": "assistant", "content": "x"}]}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "messages", "0"]
    r = await rest.http.post("/v1/agents/agent-missing/messages", json=body("hi"))
    assert r.status_code == 404
    r = await rest.http.post("/v1/runs/run-missing/stream", json={})
    assert r.status_code == 404
