"""The Letta-compatible REST surface: CRUD, upsert semantics, and precise 4xx errors."""

from __future__ import annotations

from tests.harness import REST, ROLL_DICE


async def test_health(rest: REST) -> None:
    for path in ("/v1/health/", "/v1/health"):
        r = await rest.http.get(path)
        assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_tool_upsert_list_get_delete(rest: REST) -> None:
    tool = await rest.tool(ROLL_DICE)
    assert tool["name"] == "roll_dice" and tool["id"].startswith("tool-")
    params = tool["json_schema"]["parameters"]
    assert params["properties"]["num_sides"]["type"] == "integer" and params["required"] == ["num_sides"]
    again = await rest.tool(ROLL_DICE, default_requires_approval=True)
    assert again["id"] == tool["id"] and again["default_requires_approval"] is True
    listed = (await rest.http.get("/v1/tools/")).json()
    assert [t["id"] for t in listed] == [tool["id"]]
    assert (await rest.http.get(f"/v1/tools/{tool['id']}")).json()["name"] == "roll_dice"
    patched = (await rest.http.patch(f"/v1/tools/{tool['id']}", json={"description": "roll"})).json()
    assert patched["description"] == "roll"
    assert (await rest.http.delete(f"/v1/tools/{tool['id']}")).status_code == 200
    assert (await rest.http.get(f"/v1/tools/{tool['id']}")).status_code == 404


async def test_tool_source_errors_name_the_problem(rest: REST) -> None:
    r = await rest.http.put("/v1/tools/", json={"source_code": "def f(x):\n    return x\n"})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"][:2] == ["body", "source_code"] and "annotation" in detail["msg"]
    r = await rest.http.put("/v1/tools/", json={"source_code": "def f(:\n"})
    assert r.status_code == 422 and "line" in r.json()["detail"][0]["msg"].lower()
    r = await rest.http.put("/v1/tools/", json={})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "source_code"]
    r = await rest.http.put("/v1/tools/", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400


async def test_agent_crud(rest: REST) -> None:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(name="x", system="be brief", tool_ids=[tool["id"]], enable_reasoner=True)
    assert agent["llm_config"]["enable_reasoner"] is True and agent["tools"][0]["id"] == tool["id"]
    got = (await rest.http.get(f"/v1/agents/{agent['id']}")).json()
    assert got["system"] == "be brief" and got["model"] == "anthropic/claude-sonnet-4-6"
    patched = (
        await rest.http.patch(f"/v1/agents/{agent['id']}", json={"name": "y", "model": "offline/echo"})
    ).json()
    assert patched["name"] == "y" and patched["model"] == "offline/echo"
    detached = (await rest.http.patch(f"/v1/agents/{agent['id']}/tools/detach/{tool['id']}")).json()
    assert detached["tools"] == []
    attached = (await rest.http.patch(f"/v1/agents/{agent['id']}/tools/attach/{tool['id']}")).json()
    assert [t["id"] for t in attached["tools"]] == [tool["id"]]
    assert [a["id"] for a in (await rest.http.get("/v1/agents/")).json()] == [agent["id"]]
    assert (await rest.http.delete(f"/v1/agents/{agent['id']}")).status_code == 200
    assert (await rest.http.get(f"/v1/agents/{agent['id']}")).status_code == 404


async def test_agent_errors(rest: REST) -> None:
    r = await rest.http.post("/v1/agents/", json={"name": "x", "model": "gpt-4"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"]
    r = await rest.http.post("/v1/agents/", json={"name": "x", "tool_ids": ["tool-nope"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tool_ids", "0"]
    r = await rest.http.post("/v1/agents/", json={"name": "x", "max_tokens": "lots"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "max_tokens"]
    agent = await rest.agent(name="x")
    r = await rest.http.patch(
        f"/v1/agents/{agent['id']}/tools/approval/roll_dice", json={"requires_approval": True}
    )
    assert r.status_code == 404 and "not attached" in r.json()["detail"]
    r = await rest.http.patch(f"/v1/agents/{agent['id']}/tools/approval/roll_dice", json={})
    assert r.status_code == 422
    r = await rest.http.get(f"/v1/agents/{agent['id']}/messages", params={"limit": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    assert (await rest.http.get("/v1/agents/agent-nope")).status_code == 404
    assert (await rest.http.get("/v1/runs/run-nope")).status_code == 404


async def test_messages_pagination(rest: REST) -> None:
    agent = await rest.agent(name="x")
    for i in range(3):
        r = await rest.http.post(
            f"/v1/agents/{agent['id']}/messages",
            json={"messages": [{"role": "user", "content": f"Reply with the message 'm{i}'."}]},
        )
        assert r.status_code == 200
    last = (await rest.http.get(f"/v1/agents/{agent['id']}/messages", params={"limit": 1})).json()
    assert len(last) == 1 and last[0]["content"] == "m2"
    all_msgs = (await rest.http.get(f"/v1/agents/{agent['id']}/messages")).json()
    assert [m["message_type"] for m in all_msgs] == ["user_message", "assistant_message"] * 3
    after = (
        await rest.http.get(f"/v1/agents/{agent['id']}/messages", params={"after": all_msgs[1]["id"]})
    ).json()
    assert after == all_msgs[2:]
    desc = (await rest.http.get(f"/v1/agents/{agent['id']}/messages", params={"order": "desc"})).json()
    assert desc == list(reversed(all_msgs))
