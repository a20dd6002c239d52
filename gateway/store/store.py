"""The gateway's persistent state behind one small async API (SQLite or PostgreSQL).

Every method is one transaction, written once as a plain function of a SQLAlchemy `Session`
and run by `Store.transaction`: on PostgreSQL through the async engine (asyncpg,
`AsyncSession.run_sync`); on SQLite inline on the event loop, with the standard `sqlite3`
driver. A SQLite transaction here is a few hundred microseconds of C with no await inside, so
running it inline costs less than handing each statement to a driver thread and back (about
2.5x less CPU per run, measured), and transactions of one process can never interleave, so
they never wait for each other's locks. Rows come back detached (safe to read after the call).
Contention points use conditional UPDATEs, so they are safe across processes too:
`acquire_agent` (one active run per agent) and `decide_approvals` (first decision wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import Engine, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from gateway.store.db import create_engine, migrate
from gateway.store.models import Agent, Approval, Base, Message, Run, Step, Tool

ACTIVE_STATUSES = ("running", "awaiting_approval")

T = TypeVar("T")
CHECKPOINT_EVERY_S = 1.0
HISTORY_CACHE_AGENTS = 1024

log = logging.getLogger("gateway.store")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


_NO_DEFAULT = object()
_COLUMNS: dict[type[Base], list[tuple[str, Any]]] = {}


def _columns(cls: type[Base]) -> list[tuple[str, Any]]:
    """(attribute, scalar default or _NO_DEFAULT) of each column of a mapped class."""
    cols = _COLUMNS.get(cls)
    if cols is None:
        table = cls.__table__
        assert isinstance(table, Table)
        cols = [
            (c.key, c.default.arg if c.default is not None and c.default.is_scalar else _NO_DEFAULT)
            for c in table.columns
        ]
        _COLUMNS[cls] = cols
    return cols


_INSERTS: dict[Table, Any] = {}  # insert(table), built once per table


def insert_new(s: Session, objects: Iterable[Base]) -> None:
    """INSERT new rows given as (transient) ORM objects with one Core statement per table and
    set of columns, in order of first appearance, without the ORM's unit of work (which costs
    several times the INSERT itself). As a flush would, unset columns get their scalar
    defaults on the object too; autoincrement keys are left to the database and unset."""
    batches: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
    for obj in objects:
        values = obj.__dict__
        row: dict[str, Any] = {}
        for key, default in _columns(type(obj)):
            if key in values:
                row[key] = values[key]
            elif default is not _NO_DEFAULT:
                setattr(obj, key, default)
                row[key] = default
        table = obj.__table__
        assert isinstance(table, Table)
        batches.setdefault((table, tuple(row)), []).append(row)
    conn = s.connection()
    for (table, _), rows in batches.items():
        stmt = _INSERTS.get(table)
        if stmt is None:
            stmt = _INSERTS[table] = insert(table)
        conn.execute(stmt, rows)


# The statements every run executes, built once and run on the session's Connection: no
# statement construction, no ORM execution layer (bulk-update synchronisation, ORM compile).
_agents = cast(Table, Agent.__table__)
_runs = cast(Table, Run.__table__)
_messages = cast(Table, Message.__table__)
_CLAIM_AGENT = (
    update(_agents)
    .where(_agents.c.id == bindparam("b_agent"), _agents.c.active_run_id.is_(None))
    .values(active_run_id=bindparam("b_run"))
)
_RELEASE_AGENT = (
    update(_agents)
    .where(_agents.c.id == bindparam("b_agent"), _agents.c.active_run_id == bindparam("b_run"))
    .values(active_run_id=None)
)
_QUEUED_RUN = (
    select(_runs.c.id).where(_runs.c.agent_id == bindparam("b_agent"), _runs.c.status == "queued").limit(1)
)


_HISTORY_AFTER = (
    select(_messages.c.pos, _messages.c.id, _messages.c.role, _messages.c.content, _messages.c.partial)
    .where(_messages.c.agent_id == bindparam("b_agent"), _messages.c.pos > bindparam("b_pos"))
    .order_by(_messages.c.pos)
)
# Runs' columns are set from the keys of the parameters given with it.
_UPDATE_RUN = update(_runs).where(_runs.c.id == bindparam("b_run"))
_AGENT = select(Agent).where(Agent.id == bindparam("b_agent"))
_MESSAGE_COUNT = (
    select(func.count()).select_from(_messages).where(_messages.c.agent_id == bindparam("b_agent"))
)


# A message of an agent's history as `Store.history` returns and caches it:
# (pos, id, role, content blocks as JSON, partial). A plain tuple of plain values, which the
# garbage collector stops tracking (as it does the cache's tuple of them): an ORM `Message`
# with its loaded state is about 17 tracked objects, the cache keeps the histories of up to
# HISTORY_CACHE_AGENTS agents, and every full collection walked them all.
HistoryTuple = tuple[int, str, str, bytes, bool]


def _history_rows(s: Session, agent_id: str, after: int) -> list[HistoryTuple]:
    rows = s.connection().execute(_HISTORY_AFTER, {"b_agent": agent_id, "b_pos": after})
    dumps = orjson.dumps
    return [(pos, i, role, dumps(blocks), bool(partial)) for pos, i, role, blocks, partial in rows]


def _claim(s: Session, agent_id: str, run_id: str) -> bool:
    """Make `run_id` the agent's active run if it has none (a conditional UPDATE)."""
    return bool(s.connection().execute(_CLAIM_AGENT, {"b_agent": agent_id, "b_run": run_id}).rowcount == 1)


def _release(s: Session, agent_id: str, run_id: str) -> None:
    """Clear the agent's active run if it is still `run_id`."""
    s.connection().execute(_RELEASE_AGENT, {"b_agent": agent_id, "b_run": run_id})


class Store:
    def __init__(self, engine: AsyncEngine | Engine) -> None:
        self.engine = engine
        self._checkpointer: asyncio.Future[None] | None = None
        # agent id -> (its messages in order, the last one's pos), most recently used last.
        self._histories: dict[str, tuple[tuple[HistoryTuple, ...], int]] = {}
        self._async: async_sessionmaker[Any] | None = None
        self._sync: sessionmaker[Session] | None = None
        if isinstance(engine, AsyncEngine):
            self._async = async_sessionmaker(engine, expire_on_commit=False)
        else:
            self._sync = sessionmaker(engine, expire_on_commit=False)

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(session, *args)` in one transaction (committed unless it raises or rolls
        back itself) and return its result."""
        if self._sync is not None:
            with self._sync() as s, s.begin():
                return fn(s, *args)
        assert self._async is not None
        async with self._async() as s, s.begin():
            return await s.run_sync(fn, *args)  # type: ignore[no-any-return]

    @classmethod
    async def open(cls, url: str) -> Store:
        engine = create_engine(url)
        await migrate(engine)
        store = cls(engine)
        if not isinstance(engine, AsyncEngine):
            store._checkpointer = asyncio.ensure_future(store._checkpoint_wal())
        return store

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
        else:
            await asyncio.to_thread(self._checkpoint)
            self.engine.dispose()

    async def _checkpoint_wal(self) -> None:
        """SQLite: copy the write-ahead log into the database file from a worker thread
        (PASSIVE: it never waits for, or blocks, readers and writers). The engine turns
        SQLite's automatic checkpoint off, which would otherwise run, fsync included,
        inside whichever inline commit crossed the threshold, stalling the event loop."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                await asyncio.to_thread(self._checkpoint)
            except Exception:  # e.g. the disk is full: commits still work; try again later
                log.warning("SQLite WAL checkpoint failed", exc_info=True)

    def _checkpoint(self) -> None:
        assert isinstance(self.engine, Engine)
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- tools -------------------------------------------------------------------------------

    async def upsert_tool(self, **fields: Any) -> Tool:
        """Create the tool, or update the one with the same name (Letta's PUT /v1/tools/)."""

        def tx(s: Session) -> Tool:
            tool = s.execute(select(Tool).where(Tool.name == fields["name"])).scalar_one_or_none()
            stamp = now_iso()
            if tool is None:
                tool = Tool(id=new_id("tool"), created_at=stamp, updated_at=stamp, **fields)
                s.add(tool)
            else:
                for key, value in fields.items():
                    setattr(tool, key, value)
                tool.updated_at = stamp
            return tool

        return await self.transaction(tx)

    async def get_tool(self, tool_id: str) -> Tool | None:
        def tx(s: Session) -> Tool | None:
            return s.get(Tool, tool_id)

        return await self.transaction(tx)

    async def list_tools(self, ids: Sequence[str] | None = None) -> list[Tool]:
        def tx(s: Session) -> list[Tool]:
            q = select(Tool).order_by(Tool.created_at)
            if ids is not None:
                q = q.where(Tool.id.in_(list(ids)))
            return list(s.execute(q).scalars())

        return await self.transaction(tx)

    async def delete_tool(self, tool_id: str) -> bool:
        def tx(s: Session) -> bool:
            return bool(s.execute(delete(Tool).where(Tool.id == tool_id)).rowcount > 0)  # type: ignore[attr-defined]

        return await self.transaction(tx)

    # -- agents ------------------------------------------------------------------------------

    async def create_agent(self, **fields: Any) -> Agent:
        def tx(s: Session) -> Agent:
            stamp = now_iso()
            agent = Agent(id=new_id("agent"), created_at=stamp, updated_at=stamp, **fields)
            s.add(agent)
            return agent

        return await self.transaction(tx)

    async def get_agent(self, agent_id: str) -> Agent | None:
        def tx(s: Session) -> Agent | None:
            return s.get(Agent, agent_id)

        return await self.transaction(tx)

    async def list_agents(self) -> list[Agent]:
        def tx(s: Session) -> list[Agent]:
            return list(s.execute(select(Agent).order_by(Agent.created_at)).scalars())

        return await self.transaction(tx)

    async def update_agent(self, agent_id: str, **fields: Any) -> Agent | None:
        def tx(s: Session) -> Agent | None:
            agent = s.get(Agent, agent_id)
            if agent is None:
                return None
            for key, value in fields.items():
                setattr(agent, key, value)
            agent.updated_at = now_iso()
            return agent

        return await self.transaction(tx)

    async def delete_agent(self, agent_id: str) -> bool:
        self._histories.pop(agent_id, None)

        def tx(s: Session) -> bool:
            s.execute(delete(Message).where(Message.agent_id == agent_id))
            run_ids = select(Run.id).where(Run.agent_id == agent_id)
            s.execute(delete(Approval).where(Approval.run_id.in_(run_ids)))
            s.execute(delete(Step).where(Step.agent_id == agent_id))
            s.execute(delete(Run).where(Run.agent_id == agent_id))
            return bool(s.execute(delete(Agent).where(Agent.id == agent_id)).rowcount > 0)  # type: ignore[attr-defined]

        return await self.transaction(tx)

    async def acquire_agent(self, agent_id: str, run_id: str) -> bool:
        """Make `run_id` the agent's active run if it has none. Atomic across processes."""
        return await self.transaction(_claim, agent_id, run_id)

    async def release_agent(self, agent_id: str, run_id: str) -> None:
        await self.transaction(_release, agent_id, run_id)

    # -- runs --------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        def tx(s: Session) -> Run | None:
            return s.get(Run, run_id)

        return await self.transaction(tx)

    async def find_run_by_key(self, agent_id: str, key: str) -> Run | None:
        def tx(s: Session) -> Run | None:
            q = select(Run).where(Run.agent_id == agent_id, Run.idempotency_key == key)
            return s.execute(q).scalar_one_or_none()

        return await self.transaction(tx)

    async def list_runs(
        self, agent_id: str | None = None, statuses: Sequence[str] | None = None
    ) -> list[Run]:
        def tx(s: Session) -> list[Run]:
            q = select(Run).order_by(Run.created_at)
            if agent_id is not None:
                q = q.where(Run.agent_id == agent_id)
            if statuses is not None:
                q = q.where(Run.status.in_(list(statuses)))
            return list(s.execute(q).scalars())

        return await self.transaction(tx)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        def tx(s: Session) -> None:
            s.execute(update(Run).where(Run.id == run_id).values(**fields))

        return await self.transaction(tx)

    async def next_queued_run(self, agent_id: str) -> Run | None:
        def tx(s: Session) -> Run | None:
            q = (
                select(Run)
                .where(Run.agent_id == agent_id, Run.status == "queued")
                .order_by(Run.created_at, Run.id)
                .limit(1)
            )
            return s.execute(q).scalar_one_or_none()

        return await self.transaction(tx)

    # -- messages and steps ------------------------------------------------------------------

    async def add_messages(self, messages: Iterable[Message]) -> None:
        def tx(s: Session) -> None:
            insert_new(s, list(messages))

        return await self.transaction(tx)

    async def persist_step(
        self,
        step: Step,
        messages: Iterable[Message],
        run_id: str,
        run_fields: dict[str, Any],
        approvals: Iterable[Approval] = (),
    ) -> None:
        """A step's messages, usage row, run counters and pending approvals, in one transaction."""

        def tx(s: Session) -> None:
            insert_new(s, [step, *messages, *approvals])
            if run_fields:
                s.connection().execute(_UPDATE_RUN, {"b_run": run_id, **run_fields})

        return await self.transaction(tx)

    async def history(self, agent_id: str) -> Sequence[HistoryTuple]:
        return await self.transaction(self._history_in, agent_id)

    def _history_in(self, s: Session, agent_id: str) -> Sequence[HistoryTuple]:
        """The agent's messages in order. Messages are append-only, so the rows read last
        time are kept (per agent, for the most recently used agents) and only the rows after
        them are read; a count of the agent's rows checks that nothing else changed (a row
        committed late with a lower position, the agent deleted), and reads all of them if so.
        The rows are plain immutable tuples (HistoryTuple), shared between runs."""
        cached = self._histories.get(agent_id)
        if cached is not None:
            rows, last_pos = cached
            new = _history_rows(s, agent_id, last_pos)
            total = s.connection().execute(_MESSAGE_COUNT, {"b_agent": agent_id}).scalar_one()
            if total == len(rows) + len(new):
                history = rows + tuple(new) if new else rows
                self._remember(agent_id, history)
                return history
        history = tuple(_history_rows(s, agent_id, -1))
        self._remember(agent_id, history)
        return history

    def _remember(self, agent_id: str, history: tuple[HistoryTuple, ...]) -> None:
        histories = self._histories
        histories.pop(agent_id, None)
        if history:
            histories[agent_id] = (history, history[-1][0])
            if len(histories) > HISTORY_CACHE_AGENTS:
                del histories[next(iter(histories))]

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
        def tx(s: Session) -> list[Message]:
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
            return list(s.execute(q).scalars())

        return await self.transaction(tx)

    async def message_pos(self, message_id: str) -> int | None:
        def tx(s: Session) -> int | None:
            return s.execute(select(Message.pos).where(Message.id == message_id)).scalar_one_or_none()

        return await self.transaction(tx)

    async def approvals_of(self, run_ids: Iterable[str | None]) -> list[Approval]:
        ids = sorted({r for r in run_ids if r})
        if not ids:
            return []

        def tx(s: Session) -> list[Approval]:
            q = select(Approval).where(Approval.run_id.in_(ids)).order_by(Approval.position)
            return list(s.execute(q).scalars())

        return await self.transaction(tx)

    async def approvals(self, run_id: str) -> list[Approval]:
        def tx(s: Session) -> list[Approval]:
            q = select(Approval).where(Approval.run_id == run_id).order_by(Approval.position)
            return list(s.execute(q).scalars())

        return await self.transaction(tx)

    async def decide_approvals(
        self, run_id: str, decisions: Sequence[tuple[str, bool, str | None]]
    ) -> list[str]:
        """Record several decisions atomically: all win, or none is written.

        Returns the ids that lost (already decided); empty means every decision was recorded.
        """

        def tx(s: Session) -> list[str]:
            lost: list[str] = []
            stamp = now_iso()
            for tool_call_id, approve, reason in decisions:
                result = s.execute(
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
                s.rollback()
            return lost

        return await self.transaction(tx)

    async def deny_pending(self, run_id: str, reason: str) -> list[str]:
        """Deny every undecided call of the run (cancel, timeout). Returns their ids."""

        def tx(s: Session) -> list[str]:
            q = select(Approval.tool_call_id).where(Approval.run_id == run_id, Approval.decision.is_(None))
            ids = list(s.execute(q).scalars())
            if ids:
                s.execute(
                    update(Approval)
                    .where(Approval.run_id == run_id, Approval.decision.is_(None))
                    .values(decision=False, reason=reason, decided_at=now_iso())
                )
            return ids

        return await self.transaction(tx)

    async def add_tool_results(self, row: Message, run_id: str, approval_ids: Sequence[str]) -> None:
        """A step's tool results, marking the approvals they answer as resolved, in one transaction."""

        def tx(s: Session) -> None:
            insert_new(s, [row])
            if approval_ids:
                s.execute(
                    update(Approval)
                    .where(Approval.run_id == run_id, Approval.tool_call_id.in_(list(approval_ids)))
                    .values(resolved=True)
                )

        return await self.transaction(tx)

    async def transition_run(self, run_id: str, from_status: str, to_status: str, **fields: Any) -> bool:
        """Compare-and-set of a run's status; True when this caller made the move."""

        def tx(s: Session) -> bool:
            result = s.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == from_status)
                .values(status=to_status, **fields)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

        return await self.transaction(tx)

    async def renew_leases(self, owner: str, until: float) -> None:
        """Extend the lease of every running run this process owns (its heartbeat)."""

        def tx(s: Session) -> None:
            s.execute(
                update(Run).where(Run.owner == owner, Run.status == "running").values(lease_until=until)
            )

        return await self.transaction(tx)

    async def take_over_expired(self, owner: str, now: float, until: float) -> list[Run]:
        """Claim running runs whose owner's lease expired (the owner died). Each run is
        claimed by exactly one process: a compare-and-set on the old owner and lease."""

        def candidates(s: Session) -> list[Run]:
            q = select(Run).where(
                Run.status == "running", (Run.lease_until.is_(None)) | (Run.lease_until < now)
            )
            return list(s.execute(q).scalars())

        def claim(s: Session, run: Run) -> bool:
            cond = [Run.id == run.id, Run.status == "running"]
            cond.append(Run.owner.is_(None) if run.owner is None else Run.owner == run.owner)
            cond.append(
                Run.lease_until.is_(None) if run.lease_until is None else Run.lease_until == run.lease_until
            )
            result = s.execute(update(Run).where(*cond).values(owner=owner, lease_until=until))
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

        claimed = []
        for run in await self.transaction(candidates):
            if await self.transaction(claim, run):
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

        def tx(s: Session) -> Admission:
            # The claim comes first: a write as the transaction's first statement takes
            # SQLite's write lock (waiting for another process's) before anything is read, so
            # no concurrent start can invalidate our snapshot (SQLITE_BUSY_SNAPSHOT) halfway.
            acquired = _claim(s, agent_id, run_id)
            agent = s.execute(_AGENT, {"b_agent": agent_id}).scalar_one_or_none()
            if agent is None:
                return Admission(agent=None)
            if idempotency_key is not None:
                q = select(Run).where(Run.agent_id == agent_id, Run.idempotency_key == idempotency_key)
                existing = s.execute(q).scalar_one_or_none()
                if existing is not None:
                    s.expunge(existing)  # keep it loaded through the rollback
                    s.expunge(agent)
                    s.rollback()  # give the claim back
                    return Admission(agent=agent, run=existing, created=False)
            if not acquired and not queue_if_busy:
                return Admission(agent=agent, busy_with=agent.active_run_id)
            run, rows = build(agent, acquired)
            insert_new(s, [run])
            if not acquired:
                return Admission(agent=agent, run=run, created=True)
            insert_new(s, rows)
            tools = []
            if agent.tool_ids:
                tools = list(s.execute(select(Tool).where(Tool.id.in_(list(agent.tool_ids)))).scalars())
            history = self._history_in(s, agent_id)
            return Admission(agent=agent, run=run, created=True, started=True, tools=tools, history=history)

        try:
            return await self.transaction(tx)
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self.find_run_by_key(agent_id, idempotency_key)
            if existing is None:
                raise
            return Admission(agent=await self.get_agent(agent_id), run=existing, created=False)

    async def finish_run(
        self,
        run_id: str,
        agent_id: str,
        fields: dict[str, Any],
        last_step: tuple[Step, list[Message]] | None = None,
    ) -> bool:
        """A run's terminal state and the release of its agent, in one transaction, with the
        rows of the step that ended it (`last_step`: its usage row and messages), if not yet
        written. Returns whether the agent has a queued run waiting (so the caller only then
        looks for it)."""

        def tx(s: Session) -> bool:
            if last_step is not None:
                insert_new(s, [last_step[0], *last_step[1]])
            conn = s.connection()
            conn.execute(_UPDATE_RUN, {"b_run": run_id, **fields})
            _release(s, agent_id, run_id)
            return conn.execute(_QUEUED_RUN, {"b_agent": agent_id}).first() is not None

        return await self.transaction(tx)


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
    history: Sequence[HistoryTuple] | None = None
