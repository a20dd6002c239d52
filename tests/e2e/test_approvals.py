"""Tool approvals in-band (issue 3): durable, decided from any connection, first decision wins,
and the conversation stays valid for the offline model's strict validation every time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from tests.harness import REST, ROLL_DICE, GatewayThread, WSClient, events_of, text_of, types_of

ROLL = "Call the roll_dice tool with 16 sides and reply back to me with the outcome."
PARALLEL = "Please call the roll_dice tool three times in parallel."


def awaiting(run_id: str):
    return lambda f: (
        f["type"] == "event"
        and f["run_id"] == run_id
        and f["event"]["message_type"] == "run_status"
        and f["event"]["status"] == "awaiting_approval"
    )


async def approval_agent(rest: REST, *, via_patch: bool = False, **settings: object) -> dict:
    tool = await rest.tool(ROLL_DICE, default_requires_approval=not via_patch)
    agent = await rest.agent(name="careful", tool_ids=[tool["id"]], **settings)
    if via_patch:
        r = await rest.http.patch(
            f"/v1/agents/{agent['id']}/tools/approval/roll_dice", json={"requires_approval": True}
        )
        assert r.status_code == 200, r.text
        assert r.json()["tool_rules"] == [{"tool_name": "roll_dice", "type": "requires_approval"}]
    return agent


async def park(ws: WSClient, agent_id: str, text: str) -> tuple[str, list[dict]]:
    run_id = await ws.start_run(agent_id, text)
    await ws.until(awaiting(run_id))
    frames = ws.events[run_id]
    (request,) = [e for e in events_of(frames) if e["message_type"] == "approval_request_message"]
    types = types_of(frames)
    assert types.index("approval_request_message") == len(types) - 2, "request, then awaiting_approval"
    return run_id, request["tool_calls"]


async def respond(ws: WSClient, run_id: str, *decisions: dict) -> dict:
    return await ws.request("approval.respond", run_id=run_id, decisions=list(decisions))


async def assert_next_run_valid(ws: WSClient, agent_id: str) -> None:
    frames = await ws.run(agent_id, "Reply with the message 'still here'.")
    assert frames[-1]["event"]["status"] == "completed", events_of(frames)[-4:]
    assert text_of(frames) == "still here"


async def test_approve(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest)
    run_id, calls = await park(ws, agent["id"], ROLL)
    assert len(calls) == 1 and calls[0]["name"] == "roll_dice"
    assert orjson.loads(calls[0]["arguments"]) == {"num_sides": 16}
    run = (await rest.http.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "awaiting_approval"
    reply = await respond(ws, run_id, {"tool_call_id": calls[0]["tool_call_id"], "approve": True})
    assert reply["result"] == {"run_id": run_id, "pending": []}
    frames = await ws.finish(run_id)
    types = types_of(frames)
    i = types.index("approval_response_message")
    assert types[i + 1 : i + 3] == ["run_status", "tool_return_message"]
    assert frames[i + 1]["event"]["status"] == "running"
    ret = frames[i + 2]["event"]["tool_returns"][0]
    assert ret["status"] == "success" and 1 <= int(ret["tool_return"]) <= 16
    assert frames[-1]["event"]["status"] == "completed"
    assert ret["tool_return"] in text_of(frames[i:])
    await assert_next_run_valid(ws, agent["id"])


async def test_decision_sent_the_instant_the_request_arrives(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest)
    run_id = await ws.start_run(agent["id"], ROLL)
    request = await ws.until(
        lambda f: f["type"] == "event" and f["event"]["message_type"] == "approval_request_message"
    )
    call_id = request["event"]["tool_calls"][0]["tool_call_id"]
    reply = await respond(ws, run_id, {"tool_call_id": call_id, "approve": True})
    assert reply["type"] == "ack", reply
    frames = await ws.finish(run_id)
    assert frames[-1]["event"]["status"] == "completed"


async def test_deny_with_reason(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest, via_patch=True)
    run_id, calls = await park(ws, agent["id"], ROLL)
    await respond(
        ws, run_id, {"tool_call_id": calls[0]["tool_call_id"], "approve": False, "reason": "no gambling"}
    )
    frames = await ws.finish(run_id)
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    result = ret["tool_returns"][0]
    assert (
        result["status"] == "error"
        and "denied" in result["tool_return"]
        and "no gambling" in result["tool_return"]
    )
    response = next(e for e in events_of(frames) if e["message_type"] == "approval_response_message")
    assert response["approvals"] == [
        {"tool_call_id": calls[0]["tool_call_id"], "approve": False, "reason": "no gambling"}
    ]
    assert frames[-1]["event"]["status"] == "completed", "a denial does not end the run"
    history = (await rest.http.get(f"/v1/runs/{run_id}/messages")).json()
    kinds = [m["message_type"] for m in history]
    assert kinds[:6] == [
        "user_message",
        "assistant_message",
        "tool_call_message",
        "approval_request_message",
        "approval_response_message",
        "tool_return_message",
    ], kinds
    assert history[4]["approvals"] == response["approvals"], (
        "the reloaded history says it was denied, and why"
    )
    assert "denied" in text_of(frames).lower()
    await assert_next_run_valid(ws, agent["id"])


async def test_mixed_decisions_over_three_parallel_calls(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest)
    run_id, calls = await park(ws, agent["id"], PARALLEL)
    ids = [c["tool_call_id"] for c in calls]
    assert len(ids) == 3
    r1 = await respond(ws, run_id, {"tool_call_id": ids[0], "approve": True})
    assert r1["result"]["pending"] == ids[1:]
    r2 = await respond(ws, run_id, {"tool_call_id": ids[1], "approve": False, "reason": "two is enough"})
    assert r2["result"]["pending"] == ids[2:]
    r3 = await respond(ws, run_id, {"tool_call_id": ids[2], "approve": True})
    assert r3["result"]["pending"] == []
    frames = await ws.finish(run_id)
    assert sum(1 for e in events_of(frames) if e["message_type"] == "approval_response_message") == 3
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    status = {r["tool_call_id"]: r["status"] for r in ret["tool_returns"]}
    assert status == {ids[0]: "success", ids[1]: "error", ids[2]: "success"}
    assert frames[-1]["event"]["status"] == "completed"
    await assert_next_run_valid(ws, agent["id"])


async def test_two_connections_race_first_decision_wins(
    server: GatewayThread, rest: REST, ws: WSClient
) -> None:
    agent = await approval_agent(rest)
    run_id, calls = await park(ws, agent["id"], ROLL)
    other = await WSClient.open(server.ws_url)
    sub = await other.request("run.subscribe", run_id=run_id)
    assert sub["result"]["status"] == "awaiting_approval" and sub["result"]["recovered"] is True
    decision = {"tool_call_id": calls[0]["tool_call_id"]}
    a, b = await asyncio.gather(
        respond(ws, run_id, {**decision, "approve": True}),
        respond(other, run_id, {**decision, "approve": False}),
    )
    kinds = sorted([a["type"], b["type"]])
    assert kinds == ["ack", "error"], (a, b)
    loser = a if a["type"] == "error" else b
    assert loser["error"]["code"] == "approval_not_pending"
    frames = await ws.finish(run_id)
    others = await other.finish(run_id)
    assert [f["event"] for f in others] == [f["event"] for f in frames], "both viewers see the same log"
    assert sum(1 for e in events_of(frames) if e["message_type"] == "approval_response_message") == 1
    await other.close()
    await assert_next_run_valid(ws, agent["id"])


async def test_error_cases(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest)
    run_id, calls = await park(ws, agent["id"], PARALLEL)
    ids = [c["tool_call_id"] for c in calls]
    unknown = await respond(ws, run_id, {"tool_call_id": "toolu_nope", "approve": True})
    assert unknown["error"]["code"] == "approval_not_pending"
    twice = await respond(
        ws, run_id, {"tool_call_id": ids[0], "approve": True}, {"tool_call_id": ids[0], "approve": False}
    )
    assert twice["error"]["code"] == "approval_not_pending"
    partly_bad = await respond(
        ws, run_id, {"tool_call_id": ids[0], "approve": True}, {"tool_call_id": "toolu_x", "approve": True}
    )
    assert partly_bad["error"]["code"] == "approval_not_pending"
    ok = await respond(ws, run_id, {"tool_call_id": ids[0], "approve": True})
    assert ok["result"]["pending"] == ids[1:], "the rejected commands recorded nothing"
    again = await respond(ws, run_id, {"tool_call_id": ids[0], "approve": False})
    assert again["error"]["code"] == "approval_not_pending"
    bad = await ws.request(
        "approval.respond", run_id=run_id, decisions=[{"tool_call_id": ids[1], "approve": "yes"}]
    )
    assert bad["error"]["code"] == "bad_request" and "approve" in bad["error"]["message"]
    missing = await respond(ws, "run-missing", {"tool_call_id": ids[1], "approve": True})
    assert missing["error"]["code"] == "not_found"
    await respond(
        ws, run_id, {"tool_call_id": ids[1], "approve": True}, {"tool_call_id": ids[2], "approve": True}
    )
    await ws.finish(run_id)
    late = await respond(ws, run_id, {"tool_call_id": ids[1], "approve": True})
    assert late["error"]["code"] == "approval_not_pending"
    never = await respond(ws, run_id, {"tool_call_id": "toolu_never", "approve": True})
    assert never["error"]["code"] == "run_finished"


async def test_cancel_while_awaiting_approval(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest)
    run_id, calls = await park(ws, agent["id"], PARALLEL)
    await respond(ws, run_id, {"tool_call_id": calls[0]["tool_call_id"], "approve": True})
    reply = await ws.request("run.cancel", run_id=run_id, mode="after_step")
    assert reply["result"]["status"] == "cancelling"
    frames = await ws.finish(run_id)
    assert frames[-1]["event"]["status"] == "cancelled"
    responses = [e for e in events_of(frames) if e["message_type"] == "approval_response_message"]
    assert {a["tool_call_id"] for a in responses[-1]["approvals"]} == {c["tool_call_id"] for c in calls[1:]}
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    assert all(r["status"] == "error" for r in ret["tool_returns"]), "nothing runs after a cancel"
    await assert_next_run_valid(ws, agent["id"])


async def test_approval_timeout_denies(rest: REST, ws: WSClient) -> None:
    agent = await approval_agent(rest, approval_timeout_s=0.3)
    run_id, _calls = await park(ws, agent["id"], ROLL)
    frames = await ws.finish(run_id)
    response = next(e for e in events_of(frames) if e["message_type"] == "approval_response_message")
    assert response["approvals"][0]["reason"] == "timed out"
    (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
    assert "timed out" in ret["tool_returns"][0]["tool_return"]
    assert frames[-1]["event"]["status"] == "completed"


async def test_pending_approval_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = GatewayThread(data).start()
    rest = REST(first.url)
    ws = await WSClient.open(first.ws_url)
    try:
        agent = await approval_agent(rest)
        run_id, calls = await park(ws, agent["id"], PARALLEL)
        await respond(ws, run_id, {"tool_call_id": calls[0]["tool_call_id"], "approve": True})
    finally:
        await ws.close()
        await rest.close()
        first.stop()

    second = GatewayThread(data).start()
    rest = REST(second.url)
    viewer = await WSClient.open(second.ws_url)
    try:
        sub = await viewer.request("run.subscribe", run_id=run_id, after=0)
        assert sub["result"]["status"] == "awaiting_approval"
        await viewer.until(awaiting(run_id))
        replay = events_of(viewer.events[run_id])
        (request,) = [e for e in replay if e["message_type"] == "approval_request_message"]
        assert [c["tool_call_id"] for c in request["tool_calls"]] == [c["tool_call_id"] for c in calls]
        decided = [e for e in replay if e["message_type"] == "approval_response_message"]
        assert decided and decided[0]["approvals"][0]["tool_call_id"] == calls[0]["tool_call_id"]
        reply = await respond(
            viewer, run_id, *({"tool_call_id": c["tool_call_id"], "approve": True} for c in calls[1:])
        )
        assert reply["result"]["pending"] == []
        frames = await viewer.finish(run_id)
        assert frames[-1]["event"]["status"] == "completed"
        (ret,) = [e for e in events_of(frames) if e["message_type"] == "tool_return_message"]
        assert len(ret["tool_returns"]) == 3 and all(r["status"] == "success" for r in ret["tool_returns"])
        await assert_next_run_valid(viewer, agent["id"])
    finally:
        await viewer.close()
        await rest.close()
        second.stop()
