"""The gateway's persistent state behind one small async API (SQLite or PostgreSQL).

Every method is one transaction. Rows come back detached (safe to read after the call).
Contention points use conditional UPDATEs, so they are safe across processes too:
`acquire_agent` (one active run per agent) and `decide_approvals` (first decision wins).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.store.db import create_engine, migrate
from gateway.store.models import Agent, Approval, Message, Run, Step, Tool

ACTIVE_STATUSES = ("running", "awaiting_approval")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str) -> Store:
        engine = create_engine(url)
        await migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- tools -------------------------------------------------------------------------------

    async def upsert_tool(self, **fields: Any) -> Tool:
        """Create the tool, or update the one with the same name (Letta's PUT /v1/tools/)."""
        async with self.session.begin() as s:
            tool = (await s.execute(select(Tool).where(Tool.name == fields["name"]))).scalar_one_or_none()
            stamp = now_iso()
            if tool is None:
                tool = Tool(id=new_id("tool"), created_at=stamp, updated_at=stamp, **fields)
                s.add(tool)
            else:
                for key, value in fields.items():
                    setattr(tool, key, value)
                tool.updated_at = stamp
            return tool

    async def get_tool(self, tool_id: str) -> Tool | None:
        async with self.session() as s:
            return await s.get(Tool, tool_id)

    async def list_tools(self, ids: Sequence[str] | None = None) -> list[Tool]:
        async with self.session() as s:
            q = select(Tool).order_by(Tool.created_at)
            if ids is not None:
                q = q.where(Tool.id.in_(list(ids)))
            return list((await s.execute(q)).scalars())

    async def delete_tool(self, tool_id: str) -> bool:
        async with self.session.begin() as s:
            return bool((await s.execute(delete(Tool).where(Tool.id == tool_id))).rowcount > 0)  # type: ignore[attr-defined]

    # -- agents ------------------------------------------------------------------------------

    async def create_agent(self, **fields: Any) -> Agent:
        async with self.session.begin() as s:
            stamp = now_iso()
            agent = Agent(id=new_id("agent"), created_at=stamp, updated_at=stamp, **fields)
            s.add(agent)
            return agent

    async def get_agent(self, agent_id: str) -> Agent | None:
        async with self.session() as s:
            return await s.get(Agent, agent_id)

    async def list_agents(self) -> list[Agent]:
        async with self.session() as s:
            return list((await s.execute(select(Agent).order_by(Agent.created_at))).scalars())

    async def update_agent(self, agent_id: str, **fields: Any) -> Agent | None:
        async with self.session.begin() as s:
            agent = await s.get(Agent, agent_id)
            if agent is None:
                return None
            for key, value in fields.items():
                setattr(agent, key, value)
            agent.updated_at = now_iso()
            return agent

    async def delete_agent(self, agent_id: str) -> bool:
        async with self.session.begin() as s:
            await s.execute(delete(Message).where(Message.agent_id == agent_id))
            run_ids = select(Run.id).where(Run.agent_id == agent_id)
            await s.execute(delete(Approval).where(Approval.run_id.in_(run_ids)))
            await s.execute(delete(Step).where(Step.agent_id == agent_id))
            await s.execute(delete(Run).where(Run.agent_id == agent_id))
            return bool((await s.execute(delete(Agent).where(Agent.id == agent_id))).rowcount > 0)  # type: ignore[attr-defined]

    async def acquire_agent(self, agent_id: str, run_id: str) -> bool:
        """Make `run_id` the agent's active run if it has none. Atomic across processes."""
        async with self.session.begin() as s:
            result = await s.execute(
                update(Agent)
                .where(Agent.id == agent_id, Agent.active_run_id.is_(None))
                .values(active_run_id=run_id)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def release_agent(self, agent_id: str, run_id: str) -> None:
        async with self.session.begin() as s:
            await s.execute(
                update(Agent)
                .where(Agent.id == agent_id, Agent.active_run_id == run_id)
                .values(active_run_id=None)
            )

    # -- runs --------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        async with self.session() as s:
            return await s.get(Run, run_id)

    async def find_run_by_key(self, agent_id: str, key: str) -> Run | None:
        async with self.session() as s:
            q = select(Run).where(Run.agent_id == agent_id, Run.idempotency_key == key)
            return (await s.execute(q)).scalar_one_or_none()

    async def list_runs(
        self, agent_id: str | None = None, statuses: Sequence[str] | None = None
    ) -> list[Run]:
        async with self.session() as s:
            q = select(Run).order_by(Run.created_at)
            if agent_id is not None:
                q = q.where(Run.agent_id == agent_id)
            if statuses is not None:
                q = q.where(Run.status.in_(list(statuses)))
            return list((await s.execute(q)).scalars())

    async def update_run(self, run_id: str, **fields: Any) -> None:
        async with self.session.begin() as s:
            await s.execute(update(Run).where(Run.id == run_id).values(**fields))

    async def next_queued_run(self, agent_id: str) -> Run | None:
        async with self.session() as s:
            q = (
                select(Run)
                .where(Run.agent_id == agent_id, Run.status == "queued")
                .order_by(Run.created_at, Run.id)
                .limit(1)
            )
            return (await s.execute(q)).scalar_one_or_none()

    # -- messages and steps ------------------------------------------------------------------

    async def add_messages(self, messages: Iterable[Message]) -> None:
        async with self.session.begin() as s:
            s.add_all(list(messages))

    async def persist_step(
        self,
        step: Step,
        messages: Iterable[Message],
        run_id: str,
        run_fields: dict[str, Any],
        approvals: Iterable[Approval] = (),
    ) -> None:
        """A step's messages, usage row, run counters and pending approvals, in one transaction."""
        async with self.session.begin() as s:
            s.add(step)
            s.add_all(list(messages))
            s.add_all(list(approvals))
            if run_fields:
                await s.execute(update(Run).where(Run.id == run_id).values(**run_fields))

    async def history(self, agent_id: str) -> list[Message]:
        async with self.session() as s:
            q = select(Message).where(Message.agent_id == agent_id).order_by(Message.pos)
            return list((await s.execute(q)).scalars())

    async def list_messages(
        self,
        *,
        agent_id: str | None = None,
        run_id: str | None = None,
        after_pos: int | None = None,
        before_pos: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[Message]:
        async with self.session() as s:
            q = select(Message)
            if agent_id is not None:
                q = q.where(Message.agent_id == agent_id)
            if run_id is not None:
                q = q.where(Message.run_id == run_id)
            if after_pos is not None:
                q = q.where(Message.pos > after_pos)
            if before_pos is not None:
                q = q.where(Message.pos < before_pos)
            q = q.order_by(Message.pos.desc() if descending else Message.pos)
            if limit is not None:
                q = q.limit(limit)
            return list((await s.execute(q)).scalars())

    async def message_pos(self, message_id: str) -> int | None:
        async with self.session() as s:
            return (await s.execute(select(Message.pos).where(Message.id == message_id))).scalar_one_or_none()

    async def approvals_of(self, run_ids: Iterable[str | None]) -> list[Approval]:
        ids = sorted({r for r in run_ids if r})
        if not ids:
            return []
        async with self.session() as s:
            q = select(Approval).where(Approval.run_id.in_(ids)).order_by(Approval.position)
            return list((await s.execute(q)).scalars())

    async def approvals(self, run_id: str) -> list[Approval]:
        async with self.session() as s:
            q = select(Approval).where(Approval.run_id == run_id).order_by(Approval.position)
            return list((await s.execute(q)).scalars())

    async def decide_approvals(
        self, run_id: str, decisions: Sequence[tuple[str, bool, str | None]]
    ) -> list[str]:
        """Record several decisions atomically: all win, or none is written.

        Returns the ids that lost (already decided); empty means every decision was recorded.
        """
        lost: list[str] = []
        async with self.session() as s, s.begin():
            stamp = now_iso()
            for tool_call_id, approve, reason in decisions:
                result = await s.execute(
                    update(Approval)
                    .where(
                        Approval.run_id == run_id,
                        Approval.tool_call_id == tool_call_id,
                        Approval.decision.is_(None),
                    )
                    .values(decision=approve, reason=reason, decided_at=stamp)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    lost.append(tool_call_id)
            if lost:
                await s.rollback()
        return lost

    async def deny_pending(self, run_id: str, reason: str) -> list[str]:
        """Deny every undecided call of the run (cancel, timeout). Returns their ids."""
        async with self.session.begin() as s:
            q = select(Approval.tool_call_id).where(Approval.run_id == run_id, Approval.decision.is_(None))
            ids = list((await s.execute(q)).scalars())
            if ids:
                await s.execute(
                    update(Approval)
                    .where(Approval.run_id == run_id, Approval.decision.is_(None))
                    .values(decision=False, reason=reason, decided_at=now_iso())
                )
            return ids

    async def add_tool_results(self, row: Message, run_id: str, approval_ids: Sequence[str]) -> None:
        """A step's tool results, marking the approvals they answer as resolved, in one transaction."""
        async with self.session.begin() as s:
            s.add(row)
            if approval_ids:
                await s.execute(
                    update(Approval)
                    .where(Approval.run_id == run_id, Approval.tool_call_id.in_(list(approval_ids)))
                    .values(resolved=True)
                )

    async def transition_run(self, run_id: str, from_status: str, to_status: str, **fields: Any) -> bool:
        """Compare-and-set of a run's status; True when this caller made the move."""
        async with self.session.begin() as s:
            result = await s.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == from_status)
                .values(status=to_status, **fields)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def renew_leases(self, owner: str, until: float) -> None:
        """Extend the lease of every running run this process owns (its heartbeat)."""
        async with self.session.begin() as s:
            await s.execute(
                update(Run).where(Run.owner == owner, Run.status == "running").values(lease_until=until)
            )

    async def take_over_expired(self, owner: str, now: float, until: float) -> list[Run]:
        """Claim running runs whose owner's lease expired (the owner died). Each run is
        claimed by exactly one process: a compare-and-set on the old owner and lease."""
        async with self.session() as s:
            q = select(Run).where(
                Run.status == "running", (Run.lease_until.is_(None)) | (Run.lease_until < now)
            )
            candidates = list((await s.execute(q)).scalars())
        claimed = []
        for run in candidates:
            async with self.session.begin() as s:
                cond = [Run.id == run.id, Run.status == "running"]
                cond.append(Run.owner.is_(None) if run.owner is None else Run.owner == run.owner)
                cond.append(
                    Run.lease_until.is_(None)
                    if run.lease_until is None
                    else Run.lease_until == run.lease_until
                )
                result = await s.execute(update(Run).where(*cond).values(owner=owner, lease_until=until))
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    run.owner, run.lease_until = owner, until
                    claimed.append(run)
        return claimed

    async def admit_run(
        self,
        agent_id: str,
        run_id: str,
        build: Callable[[Agent, bool], tuple[Run, list[Message]]],
        *,
        idempotency_key: str | None,
        queue_if_busy: bool,
    ) -> Admission:
        """Everything `run.start` needs from the store, in ONE transaction: the agent, an
        earlier run with the same idempotency key, the claim of the agent (a conditional
        UPDATE), the new run and its inputs, and, for a run that starts now, the tools and the
        history its first step sends. A duplicate key found only at insert (a concurrent
        start) rolls the whole thing back, the claim included."""
        try:
            async with self.session() as s, s.begin():
                # The claim comes first: a write as the transaction's first statement takes
                # SQLite's write lock (waiting for it) before anything is read, so a concurrent
                # start cannot invalidate our snapshot (SQLITE_BUSY_SNAPSHOT) halfway through.
                claim = await s.execute(
                    update(Agent)
                    .where(Agent.id == agent_id, Agent.active_run_id.is_(None))
                    .values(active_run_id=run_id)
                    .execution_options(synchronize_session=False)
                )
                acquired = claim.rowcount == 1  # type: ignore[attr-defined]
                agent = await s.get(Agent, agent_id)
                if agent is None:
                    return Admission(agent=None)
                if idempotency_key is not None:
                    q = select(Run).where(Run.agent_id == agent_id, Run.idempotency_key == idempotency_key)
                    existing = (await s.execute(q)).scalar_one_or_none()
                    if existing is not None:
                        s.expunge(existing)  # keep it loaded through the rollback
                        s.expunge(agent)
                        await s.rollback()  # give the claim back
                        return Admission(agent=agent, run=existing, created=False)
                if not acquired and not queue_if_busy:
                    return Admission(agent=agent, busy_with=agent.active_run_id)
                run, rows = build(agent, acquired)
                s.add(run)
                await s.flush()
                if not acquired:
                    return Admission(agent=agent, run=run, created=True)
                s.add_all(rows)
                await s.flush()
                tools = list(
                    (await s.execute(select(Tool).where(Tool.id.in_(list(agent.tool_ids))))).scalars()
                )
                q3 = select(Message).where(Message.agent_id == agent_id).order_by(Message.pos)
                history = list((await s.execute(q3)).scalars())
                return Admission(
                    agent=agent, run=run, created=True, started=True, tools=tools, history=history
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self.find_run_by_key(agent_id, idempotency_key)
            if existing is None:
                raise
            return Admission(agent=await self.get_agent(agent_id), run=existing, created=False)

    async def finish_run(self, run_id: str, agent_id: str, fields: dict[str, Any]) -> bool:
        """A run's terminal state and the release of its agent, in one transaction. Returns
        whether the agent has a queued run waiting (so the caller only then looks for it)."""
        async with self.session.begin() as s:
            await s.execute(update(Run).where(Run.id == run_id).values(**fields))
            await s.execute(
                update(Agent)
                .where(Agent.id == agent_id, Agent.active_run_id == run_id)
                .values(active_run_id=None)
            )
            q = select(Run.id).where(Run.agent_id == agent_id, Run.status == "queued").limit(1)
            return (await s.execute(q)).first() is not None


@dataclass(slots=True)
class Admission:
    """What `Store.admit_run` decided. `agent is None`: no such agent. `busy_with`: refused,
    the agent runs that run. Otherwise `run`, `created` (False: the key's earlier run),
    `started` (True: claimed the agent now; `tools` and `history` are prefetched)."""

    agent: Agent | None
    run: Run | None = None
    created: bool = False
    started: bool = False
    busy_with: str | None = None
    tools: list[Tool] | None = None
    history: list[Message] | None = None
