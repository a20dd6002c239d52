"""Issue 2's end-to-end cases: real server, real websocket, the offline model over HTTP."""

from __future__ import annotations

import itertools

import orjson

from tests.harness import REST, ROLL_DICE, GatewayThread, WSClient, collapse, events_of, text_of, types_of

GREETING = "This is an automated test message. Reply with the message 'Teamwork makes the dream work'."
ROLL = (
    "This is an automated test message. "
    "Call the roll_dice tool with 16 sides and reply back to me with the outcome."
)
PARALLEL = "This is an automated test message. Please call the roll_dice tool three times in parallel."


def check_log_shape(frames: list[dict]) -> None:
    """PROTOCOL.md section 4: gapless seq from 1, inputs first, closing triple last."""
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    types = types_of(frames)
    assert types[0] == "user_message"
    assert types[-3:] == ["stop_reason", "usage_statistics", "run_status"]
    assert frames[-1]["event"]["stop_reason"] == frames[-3]["event"]["stop_reason"]


async def test_greeting_streams_tokens(rest: REST, ws: WSClient) -> None:
    agent = await rest.agent(name="greeter")
    frames = await ws.run(agent["id"], GREETING)
    check_log_shape(frames)
    deltas = [e for e in events_of(frames) if e["message_type"] == "assistant_message"]
    assert len(deltas) > 1, "token streaming sends several deltas"
    assert len({d["otid"] for d in deltas}) == 1, "one content block, one otid"
    assert text_of(frames) == "Teamwork makes the dream work"
    usage = frames[-2]["event"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and usage["step_count"] == 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_single_tool_call_then_answer(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="dice", tool_ids=[tool["id"]])
    frames = await ws.run(agent["id"], ROLL)
    check_log_shape(frames)
    assert collapse(types_of(frames)) == [
        "user_message",
        "run_status",
        "assistant_message",
        "tool_call_message",
        "tool_return_message",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
        "run_status",
    ]
    calls = [e["tool_call"] for e in events_of(frames) if e["message_type"] == "tool_call_message"]
    assert calls[0]["name"] == "roll_dice" and all("name" not in c for c in calls[1:])
    args = orjson.loads("".join(c["arguments"] for c in calls))
    assert args == {"num_sides": 16}
    ret = next(e for e in events_of(frames) if e["message_type"] == "tool_return_message")
    (result,) = ret["tool_returns"]
    assert result["tool_call_id"] == calls[0]["tool_call_id"] and result["status"] == "success"
    value = int(result["tool_return"])
    assert 1 <= value <= 16
    assert str(value) in text_of(frames[frames.index(next(f for f in frames if f["event"] is ret)) :])
    assert frames[-2]["event"]["step_count"] == 2


async def test_three_parallel_calls(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="dice", tool_ids=[tool["id"]])
    frames = await ws.run(agent["id"], PARALLEL)
    check_log_shape(frames)
    args: dict[str, str] = {}
    for e in events_of(frames):
        if e["message_type"] == "tool_call_message":
            call = e["tool_call"]
            if "name" in call:
                assert call["tool_call_id"] not in args, "name only on a call's first delta"
                assert call["name"] == "roll_dice"
                args[call["tool_call_id"]] = ""
            args[call["tool_call_id"]] += call["arguments"]
    assert len(args) == 3 and all(i.startswith("toolu_") for i in args)
    for text in args.values():
        assert "num_sides" in orjson.loads(text)
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    assert {r["tool_call_id"] for r in ret["tool_returns"]} == set(args)
    assert all(r["status"] == "success" for r in ret["tool_returns"])
    # What Letta's test checks in the persisted messages: one call message with three calls.
    r = await rest.http.get(f"/v1/agents/{agent['id']}/messages")
    persisted = r.json()
    (call_msg,) = [m for m in persisted if m["message_type"] == "tool_call_message"]
    assert len(call_msg["tool_calls"]) == 3
    (ret_msg,) = [m for m in persisted if m["message_type"] == "tool_return_message"]
    assert len(ret_msg["tool_returns"]) == 3
    assert all(t["type"] == "tool" and t["status"] == "success" for t in ret_msg["tool_returns"])
    assert {t["tool_call_id"] for t in ret_msg["tool_returns"]} == set(args)


async def test_thinking_run_and_history_passes_signatures_back(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(
        name="thinker", tool_ids=[tool["id"]], enable_reasoner=True, max_reasoning_tokens=2048
    )
    frames = await ws.run(agent["id"], ROLL)
    check_log_shape(frames)
    reasoning = [e for e in events_of(frames) if e["message_type"] == "reasoning_message"]
    assert reasoning and reasoning[0]["source"] == "reasoner_model"
    signed = [e for e in reasoning if e.get("signature")]
    assert signed and all(e["reasoning"] == "" for e in signed), "signature on the block's last, empty delta"
    assert frames[-1]["event"]["status"] == "completed"
    # The second step's request carried the signed thinking back; a second run does too.
    frames2 = await ws.run(agent["id"], GREETING)
    assert frames2[-1]["event"]["status"] == "completed", events_of(frames2)[-4:]


async def test_stream_tokens_false_sends_one_event_per_block(rest: REST, ws: WSClient) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="dice", tool_ids=[tool["id"]], enable_reasoner=True)
    frames = await ws.run(agent["id"], ROLL, stream_tokens=False)
    check_log_shape(frames)
    types = types_of(frames)
    assert types == [
        "user_message",
        "run_status",
        "reasoning_message",
        "assistant_message",
        "tool_call_message",
        "tool_return_message",
        "reasoning_message",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
        "run_status",
    ], types
    call = next(e for e in events_of(frames) if e["message_type"] == "tool_call_message")["tool_call"]
    assert call["name"] == "roll_dice" and orjson.loads(call["arguments"]) == {"num_sides": 16}
    assert all(e.get("signature") for e in events_of(frames) if e["message_type"] == "reasoning_message")


async def test_two_agents_interleaved_on_one_socket(server: GatewayThread, rest: REST) -> None:
    ws = await WSClient.open(server.ws_url)
    try:
        a = await rest.agent(name="a")
        b = await rest.agent(name="b")
        run_a = await ws.start_run(a["id"], "[[tps:400]] Write a long answer of 60 words about rivers.")
        run_b = await ws.start_run(b["id"], "[[tps:400]] Write a long answer of 60 words about mountains.")
        frames_a = await ws.finish(run_a)
        frames_b = await ws.finish(run_b)
        check_log_shape(frames_a)
        check_log_shape(frames_b)
        order = [f["run_id"] for f in ws.frames if f["type"] == "event"]
        switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
        assert switches > 2, "events of the two runs interleave on the socket"
        assert frames_a[-1]["event"]["status"] == frames_b[-1]["event"]["status"] == "completed"
    finally:
        await ws.close()
