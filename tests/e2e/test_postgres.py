"""The whole gateway on PostgreSQL (asyncpg; the store's transactions through
AsyncSession.run_sync): a streamed answer, a tool call held for approval and decided, a
cancel, racing starts, and a restart that keeps everything. Skips without
GATEWAY_TEST_POSTGRES_URL; each test gets its own database, dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.harness import REST, ROLL_DICE, GatewayThread, WSClient, events_of, text_of, types_of

PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
pytestmark = pytest.mark.postgres
ROLL = "Call the roll_dice tool with 16 sides and reply back to me with the outcome."


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    name = f"gw_e2e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://", 1))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_URL.rpartition('/')[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_runs_approvals_cancel_and_restart_on_postgres(tmp_path: Path, pg_url: str) -> None:
    server = GatewayThread(tmp_path / "data", database_url=pg_url).start()
    try:
        assert server.gateway.store.dialect == "postgresql"
        rest = REST(server.url)
        ws = await WSClient.open(server.ws_url)
        agent = await rest.agent(name="a")
        frames = await ws.run(agent["id"], "Reply with the message 'on postgres'.")
        assert events_of(frames)[-1]["status"] == "completed" and text_of(frames) == "on postgres"

        tool = await rest.tool(ROLL_DICE, default_requires_approval=True)
        approver = await rest.agent(name="b", tool_ids=[tool["id"]])
        run_id = await ws.start_run(approver["id"], ROLL)
        await ws.until(
            lambda f: (
                f["type"] == "event"
                and f["run_id"] == run_id
                and f["event"].get("status") == "awaiting_approval"
            )
        )
        (request,) = [
            e for e in events_of(ws.events[run_id]) if e["message_type"] == "approval_request_message"
        ]
        call = request["tool_calls"][0]
        assert orjson.loads(call["arguments"]) == {"num_sides": 16}
        reply = await ws.request(
            "approval.respond",
            run_id=run_id,
            decisions=[{"tool_call_id": call["tool_call_id"], "approve": True}],
        )
        assert reply["result"]["pending"] == []
        frames = await ws.finish(run_id)
        assert "tool_return_message" in types_of(frames) and frames[-1]["event"]["status"] == "completed"

        long_run = await ws.start_run(agent["id"], "[[tps:50]] Write a long answer of 400 words.")
        await ws.until(
            lambda f: (
                f["type"] == "event"
                and f["run_id"] == long_run
                and f["event"]["message_type"] == "assistant_message"
            )
        )
        assert (await ws.request("run.cancel", run_id=long_run))["type"] == "ack"
        frames = await ws.finish(long_run)
        assert frames[-1]["event"]["status"] == "cancelled"

        # Racing starts on one agent: exactly one runs, the others are told it is busy.
        others = [await WSClient.open(server.ws_url) for _ in range(4)]
        replies = await asyncio.gather(
            *(
                c.request("run.start", agent_id=agent["id"], messages=[{"role": "user", "content": "hi"}])
                for c in others
            )
        )
        started = [r for r in replies if r["type"] == "ack"]
        assert len(started) == 1
        assert all(r["error"]["code"] == "agent_busy" for r in replies if r["type"] == "error")
        winner = others[replies.index(started[0])]
        await winner.finish(started[0]["result"]["run_id"])
        for c in others:
            await c.close()
        history = (await rest.http.get(f"/v1/agents/{agent['id']}/messages")).json()
        await ws.close()
        await rest.close()
    finally:
        server.stop()

    # A new process on the same database sees the same history and keeps going.
    again = GatewayThread(tmp_path / "data2", database_url=pg_url).start()
    try:
        rest = REST(again.url)
        assert (await rest.http.get(f"/v1/agents/{agent['id']}/messages")).json() == history
        ws = await WSClient.open(again.ws_url)
        frames = await ws.run(agent["id"], "Reply with the message 'still here'.")
        assert text_of(frames) == "still here"
        await ws.close()
        await rest.close()
    finally:
        again.stop()
