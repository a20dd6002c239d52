"""Store conformance: the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, NamedTuple

import orjson
import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.store import Approval, Message, Run, Step, Store, new_id, now_iso
from gateway.store.store import insert_new


class HistoryRow(NamedTuple):
    """A named view of a history tuple as Store.history returns it."""

    pos: int
    id: str
    role: str
    blob: bytes
    partial: bool

    @property
    def content(self) -> list[Any]:
        content: list[Any] = orjson.loads(self.blob)
        return content


async def make_agent(store: Store) -> str:
    agent = await store.create_agent(
        name="a",
        description=None,
        system="",
        model="offline/m",
        tool_ids=[],
        approval_overrides={},
        tags=[],
        settings={},
    )
    return agent.id


def make_run(agent_id: str, key: str | None = None, status: str = "running") -> Run:
    return Run(
        id=new_id("run"),
        agent_id=agent_id,
        status=status,
        idempotency_key=key,
        request={},
        usage={},
        step_count=0,
        last_seq=0,
        epoch="e",
        created_at=now_iso(),
    )


async def insert_run(store: Store, run: Run, messages: list[Message] | None = None) -> Run:
    """Test set-up: a run row (and its inputs) written directly, as admit_run would."""

    def tx(s: Session) -> None:
        s.add(run)
        s.flush()
        s.add_all(messages or [])

    await store.transaction(tx)
    return run


def message(agent_id: str, run_id: str, role: str, content: list) -> Message:
    return Message(
        id=new_id("message"),
        agent_id=agent_id,
        run_id=run_id,
        step_id=None,
        role=role,
        content=content,
        meta=[],
        partial=False,
        created_at=now_iso(),
    )


async def test_migrations_are_idempotent(store: Store) -> None:
    from gateway.store.db import migrate

    await migrate(store.engine)  # a second time: nothing to do, no error
    assert await store.list_agents() == []


async def test_tool_upsert_by_name(store: Store) -> None:
    fields = dict(
        name="t",
        description="d",
        source_code="def t(): pass",
        json_schema={"name": "t"},
        tags=[],
        default_requires_approval=False,
        return_char_limit=10,
    )
    first = await store.upsert_tool(**fields)
    second = await store.upsert_tool(**{**fields, "description": "new"})
    assert first.id == second.id
    assert [t.description for t in await store.list_tools()] == ["new"]
    assert await store.delete_tool(first.id) and not await store.delete_tool(first.id)


async def test_one_active_run_per_agent_under_races(store: Store) -> None:
    agent_id = await make_agent(store)
    runs = [new_id("run") for _ in range(8)]
    won = await asyncio.gather(*(store.acquire_agent(agent_id, r) for r in runs))
    assert sum(won) == 1
    winner = runs[won.index(True)]
    await store.release_agent(agent_id, runs[0] if runs[0] != winner else runs[1])  # not the holder: no-op
    assert not await store.acquire_agent(agent_id, "run-other")
    await store.release_agent(agent_id, winner)
    assert await store.acquire_agent(agent_id, "run-other")


async def test_idempotency_key_unique_per_agent(store: Store) -> None:
    agent_id = await make_agent(store)
    await insert_run(store, make_run(agent_id, "k"))
    with pytest.raises(IntegrityError):
        await insert_run(store, make_run(agent_id, "k"))
    other = await make_agent(store)
    await insert_run(store, make_run(other, "k"))  # another agent may reuse the key
    assert (await store.find_run_by_key(agent_id, "k")) is not None


async def test_history_in_order_and_step_persisted_atomically(store: Store) -> None:
    agent_id = await make_agent(store)
    run = await insert_run(
        store, make_run(agent_id), [message(agent_id, "r", "user", [{"type": "text", "text": "hi"}])]
    )
    step = Step(
        id=new_id("step"),
        run_id=run.id,
        agent_id=agent_id,
        number=1,
        stop_reason="end_turn",
        usage={},
        created_at=now_iso(),
    )
    reply = message(
        agent_id,
        run.id,
        "assistant",
        [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "yo"}],
    )
    await store.persist_step(step, [reply], run.id, {"step_count": 1, "usage": {"prompt_tokens": 3}})
    rows = [HistoryRow(*r) for r in await store.history(agent_id)]
    assert [r.role for r in rows] == ["user", "assistant"]
    assert rows[1].content[0] == {"type": "thinking", "thinking": "t", "signature": "s"}
    got = await store.get_run(run.id)
    assert got is not None and got.step_count == 1 and got.usage == {"prompt_tokens": 3}


async def test_first_decision_wins_and_batches_are_all_or_nothing(store: Store) -> None:
    agent_id = await make_agent(store)
    run = await insert_run(store, make_run(agent_id, status="awaiting_approval"))
    for i, call in enumerate(["a", "b"]):
        await store.persist_step(
            Step(
                id=new_id("step"),
                run_id=run.id,
                agent_id=agent_id,
                number=i,
                stop_reason=None,
                usage={},
                created_at=now_iso(),
            ),
            [],
            run.id,
            {},
            [
                Approval(
                    run_id=run.id,
                    tool_call_id=call,
                    step_id="s",
                    name="t",
                    arguments="{}",
                    position=i,
                    requested_at=now_iso(),
                    resolved=False,
                )
            ],
        )
    lost = await asyncio.gather(
        *(store.decide_approvals(run.id, [("a", bool(i % 2), None)]) for i in range(6))
    )
    assert sum(not ids for ids in lost) == 1, "exactly one decision won"
    lost = await store.decide_approvals(run.id, [("b", True, None), ("a", False, "late")])
    assert lost == ["a"]
    assert [a.decision for a in await store.approvals(run.id)][1] is None, "b was rolled back with a"
    assert await store.decide_approvals(run.id, [("b", False, "no")]) == []
    assert await store.deny_pending(run.id, "cancelled") == []


async def test_compare_and_set_status(store: Store) -> None:
    agent_id = await make_agent(store)
    run = await insert_run(store, make_run(agent_id, status="awaiting_approval"))
    results = await asyncio.gather(
        *(store.transition_run(run.id, "awaiting_approval", "running") for _ in range(5))
    )
    assert sum(results) == 1


async def test_delete_agent_removes_its_rows(store: Store) -> None:
    agent_id = await make_agent(store)
    run = await insert_run(
        store, make_run(agent_id), [message(agent_id, "r", "user", [{"type": "text", "text": "hi"}])]
    )
    assert await store.delete_agent(agent_id)
    assert await store.get_run(run.id) is None and await store.history(agent_id) == ()


async def test_admit_run_races(store: Store) -> None:
    """One transaction per start: under racing starts exactly one claims the agent, the
    others are refused with the holder's id, or queue; one idempotency key gives one run."""
    agent_id = await make_agent(store)

    def builder(run_id: str, key: str | None = None):
        def build(agent, acquired):
            run = make_run(agent_id, key, "running" if acquired else "queued")
            run.id = run_id
            rows = [message(agent_id, run_id, "user", [{"type": "text", "text": "hi"}])] if acquired else []
            return run, rows

        return build

    ids = [new_id("run") for _ in range(6)]
    results = await asyncio.gather(
        *(store.admit_run(agent_id, r, builder(r), idempotency_key=None, queue_if_busy=False) for r in ids)
    )
    started = [a for a in results if a.started]
    assert len(started) == 1 and started[0].history and HistoryRow(*started[0].history[-1]).role == "user"
    winner = started[0].run.id
    assert all(a.busy_with == winner for a in results if not a.started)
    queued = await store.admit_run(
        agent_id, "run-q", builder("run-q"), idempotency_key=None, queue_if_busy=True
    )
    assert queued.created and not queued.started and queued.run.status == "queued"
    missing = await store.admit_run(
        "agent-none", "run-x", builder("run-x"), idempotency_key=None, queue_if_busy=False
    )
    assert missing.agent is None

    other = await make_agent(store)
    keyed = [new_id("run") for _ in range(5)]

    def keyed_builder(run_id: str):
        def build(agent, acquired):
            run = make_run(other, "k1", "running" if acquired else "queued")
            run.id = run_id
            return run, []

        return build

    outcomes = await asyncio.gather(
        *(
            store.admit_run(other, r, keyed_builder(r), idempotency_key="k1", queue_if_busy=True)
            for r in keyed
        )
    )
    assert len({a.run.id for a in outcomes}) == 1 and sum(a.created for a in outcomes) == 1
    holder = (await store.get_agent(other)).active_run_id
    assert holder == outcomes[0].run.id, "a repeated key gave its claim back"


async def test_insert_new_fills_defaults_and_keeps_order(store: Store) -> None:
    """The Core insert used on the hot path behaves like an ORM flush for new rows: rows with
    different sets of columns, scalar defaults applied to the objects, keys from the database."""
    agent_id = await make_agent(store)
    first = message(agent_id, "run-x", "user", [{"type": "text", "text": "one"}])
    second = Message(
        id=new_id("message"),
        agent_id=agent_id,
        run_id="run-x",
        step_id=None,
        role="assistant",
        content=[{"type": "text", "text": "two", "n": {1: "int keys survive"}}],
        meta=[],
        created_at=now_iso(),
    )  # `partial` left unset: its default applies
    await store.transaction(lambda s: insert_new(s, [first, second]))
    assert second.partial is False
    rows = [HistoryRow(*r) for r in await store.history(agent_id)]
    assert [r.id for r in rows] == [first.id, second.id]
    assert rows[0].pos < rows[1].pos
    assert rows[1].partial is False
    assert rows[1].content == [{"type": "text", "text": "two", "n": {"1": "int keys survive"}}]


async def test_history_reads_only_new_rows_and_notices_other_changes(store: Store) -> None:
    """history() keeps the rows it read and then reads only the later ones; anything else
    (here a row removed behind its back) is noticed by the row count and read afresh."""
    agent_id = await make_agent(store)
    await store.add_messages([message(agent_id, "r1", "user", [{"type": "text", "text": "a"}])])
    first = await store.history(agent_id)
    await store.add_messages([message(agent_id, "r1", "assistant", [{"type": "text", "text": "b"}])])
    second = await store.history(agent_id)
    assert second[0] is first[0], "the earlier row was not read again"
    assert [HistoryRow(*m).content[0]["text"] for m in second] == ["a", "b"]

    def fresh(s: Session) -> list[str]:
        q = select(Message.id).where(Message.agent_id == agent_id).order_by(Message.pos)
        return list(s.execute(q).scalars())

    assert [HistoryRow(*m).id for m in second] == await store.transaction(fresh)

    def drop_first(s: Session) -> None:
        s.execute(delete(Message).where(Message.id == HistoryRow(*second[0]).id))

    await store.transaction(drop_first)
    await store.add_messages([message(agent_id, "r1", "user", [{"type": "text", "text": "c"}])])
    third = await store.history(agent_id)
    assert [HistoryRow(*m).content[0]["text"] for m in third] == ["b", "c"]
    assert [HistoryRow(*m).id for m in third] == await store.transaction(fresh)
    assert await store.delete_agent(agent_id)
    assert await store.history(agent_id) == ()


async def test_the_history_cache_holds_nothing_the_garbage_collector_walks(store: Store) -> None:
    """Cached histories are tuples of plain values (an ORM row is ~17 tracked objects, and the
    cache keeps up to 1024 agents' histories, which every full collection walked); each read of
    a row's content is a fresh copy, so a caller changing it changes nothing cached."""
    agent_id = await make_agent(store)
    call = {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": [1, 2]}}
    await store.add_messages(
        [
            message(agent_id, "r1", "user", [{"type": "text", "text": "a"}]),
            message(agent_id, "r1", "assistant", [call]),
        ]
    )
    rows = await store.history(agent_id)
    gc.collect()
    gc.collect()  # the outer tuple is untracked once the collector has seen the inner ones are
    assert isinstance(rows, tuple) and not gc.is_tracked(rows)
    assert not any(gc.is_tracked(row) for row in rows)
    blocks = HistoryRow(*rows[1]).content
    blocks[0]["input"]["x"].append(3)
    assert HistoryRow(*(await store.history(agent_id))[1]).content == [call]
