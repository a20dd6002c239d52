from __future__ import annotations

from tests.harness import REST, ROLL_DICE, WSClient, collapse, text_of, types_of


async def test_greeting_run(rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="greeter")
    frames = await ws.run(
        agent["id"],
        "This is an automated test message. Reply with the message 'Teamwork makes the dream work'.",
    )
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    shape = collapse(types_of(frames))
    assert shape == [
        "user_message",
        "run_status",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
        "run_status",
    ], shape
    assert text_of(frames) == "Teamwork makes the dream work"
    assert frames[-1]["event"] == {
        "message_type": "run_status",
        "status": "completed",
        "stop_reason": "end_turn",
    }


async def test_tool_call_run(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="dice", tool_ids=[tool["id"]])
    frames = await ws.run(
        agent["id"], "Call the roll_dice tool with 16 sides and reply back to me with the outcome."
    )
    shape = collapse(types_of(frames))
    assert "tool_call_message" in shape and "tool_return_message" in shape, shape
    ret = next(f["event"] for f in frames if f["event"]["message_type"] == "tool_return_message")
    assert ret["tool_returns"][0]["status"] == "success", ret
    assert 1 <= int(ret["tool_returns"][0]["tool_return"]) <= 16
    assert frames[-1]["event"]["status"] == "completed"
