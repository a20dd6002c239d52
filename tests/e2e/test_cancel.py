"""Cancel in every phase (issue 3): the run ends `cancelled`, what was streamed is kept,
the upstream request is really closed, a running tool really dies, and the agent's next
request is accepted by the offline model's strict validation."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.harness import REST, ROLL_DICE, GatewayThread, WSClient, events_of, offline_app, text_of, types_of

SLEEPER = '''
def sleeper(seconds: int, marker: str) -> str:
    """Sleeps, after writing its pid to a file.

    Args:
        seconds (int): How long to sleep.
        marker (str): Path of the file that receives the pid.
    """
    import os
    import time

    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"
'''

LONG = "[[tps:60]] Write a long answer of 400 words about rivers."


def is_type(kind: str):
    return lambda f: f["type"] == "event" and f["event"]["message_type"] == kind


async def cancel(ws: WSClient, run_id: str, mode: str = "immediate") -> dict:
    reply = await ws.request("run.cancel", run_id=run_id, mode=mode)
    assert reply["type"] == "ack", reply
    return reply["result"]


async def assert_cancelled(ws: WSClient, run_id: str) -> list[dict]:
    frames = await ws.finish(run_id)
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert types_of(frames)[-3:] == ["stop_reason", "usage_statistics", "run_status"]
    assert frames[-1]["event"] == {
        "message_type": "run_status",
        "status": "cancelled",
        "stop_reason": "cancelled",
    }
    return frames


async def assert_next_run_valid(ws: WSClient, agent_id: str) -> None:
    frames = await ws.run(agent_id, "Reply with the message 'still here'.")
    assert frames[-1]["event"]["status"] == "completed", events_of(frames)[-4:]
    assert text_of(frames) == "still here"


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_cancel_before_first_token(server: GatewayThread, rest: REST, ws: WSClient) -> None:
    stats = offline_app(server).state.stats
    before, requests = stats.disconnects, stats.requests
    agent = await rest.agent(name="a")
    run_id = await ws.start_run(agent["id"], "[[ttft:3000]] Write a long answer of 50 words.")
    await wait_for(lambda: stats.requests > requests)  # the model has the request, no token yet
    result = await cancel(ws, run_id)
    assert result == {"run_id": run_id, "status": "cancelling"}
    frames = await assert_cancelled(ws, run_id)
    assert "assistant_message" not in types_of(frames)
    await wait_for(lambda: stats.disconnects > before)
    await assert_next_run_valid(ws, agent["id"])


async def test_cancel_mid_text_keeps_partial_and_closes_upstream(
    server: GatewayThread, rest: REST, ws: WSClient
) -> None:
    stats = offline_app(server).state.stats
    agent = await rest.agent(name="a")
    run_id = await ws.start_run(agent["id"], LONG)
    for _ in range(5):
        await ws.until(is_type("assistant_message"))
        await ws.recv()
    before = stats.disconnects
    await cancel(ws, run_id)
    frames = await assert_cancelled(ws, run_id)
    streamed = text_of(frames)
    assert streamed and len(streamed.split()) < 400
    await wait_for(lambda: stats.disconnects > before)
    messages = (await rest.http.get(f"/v1/runs/{run_id}/messages")).json()
    kept = "".join(m["content"] for m in messages if m["message_type"] == "assistant_message")
    assert kept == streamed, "the persisted partial text is exactly what was streamed"
    run = (await rest.http.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "cancelled" and run["stop_reason"] == "cancelled"
    usage = frames[-2]["event"]
    deltas = sum(1 for f in frames if f["event"]["message_type"] == "assistant_message")
    assert usage["completion_tokens"] >= deltas, "a cut stream still counts what it streamed"
    await assert_next_run_valid(ws, agent["id"])


async def test_cancel_mid_tool_arguments_drops_the_call(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])
    run_id = await ws.start_run(agent["id"], "[[tps:20]] Call the roll_dice tool with 16 sides.")
    await ws.until(is_type("tool_call_message"))
    await cancel(ws, run_id)
    frames = await assert_cancelled(ws, run_id)
    assert "tool_return_message" not in types_of(frames)
    messages = (await rest.http.get(f"/v1/runs/{run_id}/messages")).json()
    assert not [m for m in messages if m["message_type"] == "tool_call_message"], (
        "a half-streamed call is dropped"
    )
    await assert_next_run_valid(ws, agent["id"])


async def test_cancel_during_tool_execution_kills_it(rest: REST, ws: WSClient, tmp_path: Path) -> None:
    tool = await rest.tool(SLEEPER)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])
    marker = tmp_path / "pid"
    run_id = await ws.start_run(agent["id"], f"Call the sleeper tool with 30 seconds and marker '{marker}'.")
    await wait_for(lambda: marker.exists() and marker.read_text().strip() != "", timeout=10)
    pid = int(marker.read_text())
    started = time.monotonic()
    await cancel(ws, run_id)
    frames = await assert_cancelled(ws, run_id)
    assert time.monotonic() - started < 5
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    assert (
        ret["tool_returns"][0]["status"] == "error" and "cancelled" in ret["tool_returns"][0]["tool_return"]
    )

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_for(gone)
    await assert_next_run_valid(ws, agent["id"])


async def test_cancel_after_step_finishes_the_step(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="a", tool_ids=[tool["id"]])
    run_id = await ws.start_run(agent["id"], "[[tps:50]] Call the roll_dice tool with 16 sides.")
    await ws.until(is_type("assistant_message"))
    await cancel(ws, run_id, mode="after_step")
    frames = await assert_cancelled(ws, run_id)
    types = types_of(frames)
    assert "tool_call_message" in types and "tool_return_message" in types
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    assert ret["tool_returns"][0]["status"] == "success", "the step's tool ran"
    after_tool = types[types.index("tool_return_message") + 1 :]
    assert "assistant_message" not in after_tool, "no second step"
    assert frames[-2]["event"]["step_count"] == 1
    await assert_next_run_valid(ws, agent["id"])


async def test_cancel_queued_run(rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    first = await ws.start_run(agent["id"], LONG)
    reply = await ws.request(
        "run.start",
        agent_id=agent["id"],
        messages=[{"role": "user", "content": "queued one"}],
        if_busy="queue",
    )
    queued = reply["result"]["run_id"]
    assert reply["result"]["status"] == "queued"
    await cancel(ws, queued)
    frames = await assert_cancelled(ws, queued)
    assert types_of(frames) == ["user_message", "run_status", "stop_reason", "usage_statistics", "run_status"]
    await cancel(ws, first)
    await assert_cancelled(ws, first)
    history = (await rest.http.get(f"/v1/agents/{agent['id']}/messages")).json()
    assert not any(m["message_type"] == "user_message" and m["content"] == "queued one" for m in history)
    await assert_next_run_valid(ws, agent["id"])


async def test_cancel_finished_run_and_repeats_are_harmless(rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    frames = await ws.run(agent["id"], "hello")
    run_id = frames[0]["run_id"]
    assert await cancel(ws, run_id) == {"run_id": run_id, "status": "completed"}
    run2 = await ws.start_run(agent["id"], LONG)
    await ws.until(is_type("assistant_message"))
    results = [await cancel(ws, run2) for _ in range(3)]
    assert results[0]["status"] == "cancelling"
    await assert_cancelled(ws, run2)
    assert (await cancel(ws, run2))["status"] == "cancelled"
    assert sum(1 for f in ws.events[run2] if f["event"]["message_type"] == "stop_reason") == 1


async def test_cancel_unknown_run(ws: WSClient) -> None:
    reply = await ws.request("run.cancel", run_id="run-unknown")
    assert reply["type"] == "error" and reply["error"]["code"] == "not_found"


async def test_cancel_from_another_connection(server: GatewayThread, rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="a")
    run_id = await ws.start_run(agent["id"], LONG)
    await ws.until(is_type("assistant_message"))
    other = await WSClient.open(server.ws_url)
    assert (await cancel(other, run_id))["status"] == "cancelling"
    await other.close()
    await assert_cancelled(ws, run_id)
