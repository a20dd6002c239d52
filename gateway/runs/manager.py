"""The run manager: accepts runs, owns their tasks in this process, routes cancel and
approval decisions to them, starts queued runs when their agent frees up, and recovers
runs left behind by a previous process at start-up.

Concurrency rules: one active run per agent is enforced by the store (`acquire_agent`, a
conditional UPDATE), idempotency keys by a unique constraint, and every status change that
two parties could race for (resume after approval, start of a queued run, cancel of a parked
run) by a compare-and-set in the store. An in-process lock per agent only avoids needless
round trips.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.agent import events as ev
from gateway.agent.history import user_content
from gateway.agent.loop import ActiveRun, Executor, Stop, new_epoch, run_from_row
from gateway.broker import Broker
from gateway.errors import GatewayError, not_found
from gateway.llm.client import ModelRouter
from gateway.runs.lifecycle import Action, advance, is_terminal
from gateway.store import Agent, Message, Run, Store, new_id, now_iso

log = logging.getLogger("gateway.runs")

RUN_OWNER_RESTARTED = "the gateway restarted while this run was in progress"


class RunManager:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        router: ModelRouter,
        *,
        tool_timeout_s: float,
        default_max_steps: int,
        shared: bool = False,
        lease_s: float = 15.0,
    ):
        self.store = store
        self.broker = broker
        self.default_max_steps = default_max_steps
        # Several processes share the store and the broker: runs are owned under a lease.
        self.shared = shared
        self.lease_s = lease_s
        self.instance_id = uuid.uuid4().hex
        self._heartbeat: asyncio.Task[None] | None = None
        self.executor = Executor(
            store,
            broker,
            router,
            tool_timeout_s=tool_timeout_s,
            on_finished=self._finished,
            on_parked=self._parked,
        )
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.active: dict[str, ActiveRun] = {}
        self._run_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.accepting = True

    # -- start -------------------------------------------------------------------------------

    async def start(
        self,
        agent_id: str,
        messages: Sequence[dict[str, Any]],
        *,
        stream_tokens: bool = True,
        max_steps: int | None = None,
        idempotency_key: str | None = None,
        if_busy: str = "reject",
    ) -> tuple[Run, bool]:
        """Accept a run. Returns (run, created); created is False for a repeated idempotency key."""
        if not self.accepting:
            raise GatewayError(
                "rate_limited", "the gateway is shutting down; retry on another instance", retryable=True
            )
        run_id = new_id("run")
        inputs = [
            {"id": new_id("message"), "otid": m.get("otid") or new_id("otid"), "content": m["content"]}
            for m in messages
        ]

        def build(agent: Agent, acquired: bool) -> tuple[Run, list[Message]]:
            run = Run(
                id=run_id,
                agent_id=agent_id,
                status="running" if acquired else "queued",
                idempotency_key=idempotency_key,
                request={
                    "messages": inputs,
                    "stream_tokens": stream_tokens,
                    "max_steps": max_steps or self.default_max_steps,
                },
                usage={},
                step_count=0,
                last_seq=0,
                epoch=new_epoch(),
                created_at=now_iso(),
                **(self._lease() if acquired else {}),
            )
            return run, self._input_rows(run) if acquired else []

        admitted = await self.store.admit_run(
            agent_id, run_id, build, idempotency_key=idempotency_key, queue_if_busy=if_busy == "queue"
        )
        if admitted.agent is None:
            raise not_found("agent", agent_id)
        if admitted.run is None:
            active = admitted.busy_with
            raise GatewayError(
                "agent_busy",
                f"agent {agent_id} is running {active}; retry later or use if_busy: queue",
                details={"active_run_id": active},
                retryable=True,
            )
        run = admitted.run
        if not admitted.created:
            return run, False
        self._open_log(run)
        if admitted.started:
            starting = run_from_row(run)
            starting.agent, starting.tools, starting.history = (
                admitted.agent,
                admitted.tools,
                admitted.history,
            )
            self._spawn_drive(starting)
        else:
            self._spawn(self._drain_queue(agent_id))
        return run, True

    def _lease(self) -> dict[str, Any]:
        return {"owner": self.instance_id, "lease_until": time.time() + self.lease_s}

    async def _hold_log(self, run: Run) -> None:
        """Make this process the writer of the run's log: adopt it (another process wrote
        it), or rebuild it from the store when it is lost."""
        if self.broker.info(run.id) is None and await self.broker.adopt(run.id) is None:
            await self._rebuild_log(run)

    def _input_rows(self, run: Run) -> list[Message]:
        return [
            Message(
                id=m["id"],
                agent_id=run.agent_id,
                run_id=run.id,
                step_id=None,
                role="user",
                content=user_content(m["content"]),
                meta=[{"otid": m["otid"]}],
                partial=False,
                created_at=run.created_at,
            )
            for m in run.request["messages"]
        ]

    def _open_log(self, run: Run) -> None:
        """A new log opens with the inputs (seq 1..n) and the first run_status."""
        self.broker.open(run.id, run.epoch)
        for m in run.request["messages"]:
            self.broker.append(run.id, ev.user_message(m["id"], m["otid"], m["content"], run.created_at))
        self.broker.append(run.id, ev.run_status(run.status))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _spawn_drive(self, active: ActiveRun) -> None:
        self.active[active.run_id] = active
        active.task = self._spawn(self.executor.drive(active))

    def _finished(self, run: ActiveRun, queued_next: bool) -> None:
        self.active.pop(run.run_id, None)
        self._run_locks.pop(run.run_id, None)
        timer = self._timers.pop(run.run_id, None)
        if timer is not None:
            timer.cancel()
        if queued_next:
            self._spawn(self._drain_queue(run.agent_id))

    def _parked(self, run: ActiveRun, agent: Agent) -> None:
        """A parked run holds no task; only its approval timeout (if the agent sets one) is armed."""
        self.active.pop(run.run_id, None)
        timeout = (agent.settings or {}).get("approval_timeout_s")
        if timeout:
            self._arm_timeout(run.run_id, float(timeout))

    def _arm_timeout(self, run_id: str, delay: float) -> None:
        old = self._timers.pop(run_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[run_id] = loop.call_later(max(0.0, delay), lambda: self._spawn(self._expire(run_id)))

    async def _expire(self, run_id: str) -> None:
        """Deny every call still pending with reason "timed out", then continue the run."""
        self._timers.pop(run_id, None)
        async with self._run_lock(run_id):
            run = await self.store.get_run(run_id)
            if run is None or run.status != "awaiting_approval":
                return
            await self._hold_log(run)
            denied = await self.store.deny_pending(run_id, "timed out")
            if denied:
                self.broker.append(
                    run_id,
                    ev.approval_response(
                        run_id, [{"tool_call_id": i, "approve": False, "reason": "timed out"} for i in denied]
                    ),
                )
            await self._resume(run, [a for a in await self.store.approvals(run_id) if not a.resolved])

    async def _drain_queue(self, agent_id: str) -> None:
        """Start the agent's oldest queued run if the agent is free."""
        while self.accepting:
            run = await self.store.next_queued_run(agent_id)
            if run is None or not await self.store.acquire_agent(agent_id, run.id):
                return
            started = advance("queued", Action.START).value
            if not await self.store.transition_run(run.id, "queued", started, **self._lease()):
                await self.store.release_agent(agent_id, run.id)
                continue  # cancelled meanwhile: try the next one
            await self.store.add_messages(self._input_rows(run))
            if self.broker.info(run.id) is None and await self.broker.adopt(run.id) is None:
                run.status = "queued"
                self._open_log(run)
            self.broker.append(run.id, ev.run_status("running"))
            active = run_from_row(run)
            active.status = "running"
            self._spawn_drive(active)
            return

    # -- cancel ------------------------------------------------------------------------------

    async def cancel(self, run_id: str, mode: str = "immediate") -> str:
        """Ask a run to stop. Returns 'cancelling', or the terminal status it already had."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise not_found("run", run_id)
        if is_terminal(run.status):
            return run.status
        active = self.active.get(run_id)
        if active is not None and active.task is not None and not active.task.done():
            active.request_cancel(mode)
            return "cancelling"
        async with self._run_lock(run_id):
            run = await self.store.get_run(run_id)
            assert run is not None
            if run.status == "queued":
                if await self.store.transition_run(run_id, "queued", "cancelled"):
                    await self._hold_log(run)
                    await self._finish_idle(run, "queued", Stop("cancelled"))
            elif run.status == "awaiting_approval":
                await self._cancel_parked(run)
            elif run.status == "running":
                active = self.active.get(run_id)
                if active is not None:
                    active.request_cancel(mode)
                else:  # owned by another process: tell it
                    await self.broker.publish_control({"kind": "cancel", "run_id": run_id, "mode": mode})
        return "cancelling"

    async def _on_control(self, message: dict[str, Any]) -> None:
        """Control messages from any process; cancels act on the runs this process owns."""
        if message.get("kind") == "cancel":
            active = self.active.get(str(message.get("run_id")))
            if active is not None:
                active.request_cancel(str(message.get("mode") or "immediate"))

    async def _cancel_parked(self, run: Run) -> None:
        await self._hold_log(run)
        denied = await self.store.deny_pending(run.id, "cancelled")
        if denied:
            self.broker.append(
                run.id,
                ev.approval_response(
                    run.id, [{"tool_call_id": i, "approve": False, "reason": "cancelled"} for i in denied]
                ),
            )
        await self.executor.cancel_parked(run_from_row(run))

    async def _finish_idle(self, run: Run, status: str, stop: Stop) -> None:
        """Close the log of a run that holds no task (queued, or found dead at start-up)."""
        active = run_from_row(run)
        active.status = status
        await self.executor.finish(active, stop)

    def _run_lock(self, run_id: str) -> asyncio.Lock:
        return self._run_locks.setdefault(run_id, asyncio.Lock())

    # -- approvals ---------------------------------------------------------------------------

    async def respond(self, run_id: str, decisions: Sequence[dict[str, Any]]) -> list[str]:
        """Record approval decisions (all or none). Returns the calls still pending."""
        ids = [d["tool_call_id"] for d in decisions]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise GatewayError(
                "approval_not_pending",
                f"tool call {dup} is decided twice in one command; the first decision wins",
                details={"tool_call_id": dup},
            )
        async with self._run_lock(run_id):
            run = await self.store.get_run(run_id)
            if run is None:
                raise not_found("run", run_id)
            approvals = {a.tool_call_id: a for a in await self.store.approvals(run_id)}
            for tool_call_id in ids:
                a = approvals.get(tool_call_id)
                if a is None:
                    if is_terminal(run.status):
                        raise GatewayError(
                            "run_finished",
                            f"run {run_id} has finished ({run.status})",
                            details={"tool_call_id": tool_call_id},
                        )
                    raise GatewayError(
                        "approval_not_pending",
                        f"tool call {tool_call_id} is not awaiting approval in run {run_id}",
                        details={"tool_call_id": tool_call_id},
                    )
                if a.decision is not None:
                    raise GatewayError(
                        "approval_not_pending",
                        f"tool call {tool_call_id} was already decided",
                        details={"tool_call_id": tool_call_id},
                    )
                if run.status != "awaiting_approval":
                    raise GatewayError(
                        "approval_not_pending",
                        f"run {run_id} is not awaiting approval (it is {run.status})",
                        details={"tool_call_id": tool_call_id, "status": run.status},
                    )
            await self._hold_log(run)
            lost = await self.store.decide_approvals(
                run_id, [(d["tool_call_id"], bool(d["approve"]), d.get("reason")) for d in decisions]
            )
            if lost:
                raise GatewayError(
                    "approval_not_pending",
                    f"tool call {lost[0]} was already decided",
                    details={"tool_call_id": lost[0]},
                )
            self.broker.append(
                run_id,
                ev.approval_response(
                    run_id,
                    [
                        {
                            "tool_call_id": d["tool_call_id"],
                            "approve": bool(d["approve"]),
                            **({"reason": d["reason"]} if d.get("reason") else {}),
                        }
                        for d in decisions
                    ],
                ),
            )
            current = await self.store.approvals(run_id)
            pending = [a.tool_call_id for a in current if a.decision is None]
            if not pending:
                await self._resume(run, [a for a in current if not a.resolved])
            return pending

    async def _resume(self, run: Run, decided: list[Any]) -> None:
        if not await self.store.transition_run(run.id, "awaiting_approval", "running", **self._lease()):
            return  # someone else resumed (or cancelled) it
        timer = self._timers.pop(run.id, None)
        if timer is not None:
            timer.cancel()
        self.broker.append(run.id, ev.run_status("running"))
        active = run_from_row(run)
        active.status = "running"
        self.active[run.id] = active
        active.task = self._spawn(self.executor.resume(active, decided))

    # -- lifecycle of the process ------------------------------------------------------------

    async def recover(self) -> None:
        """Settle what a process that died left behind, and (shared) keep leases alive.

        Alone (memory broker), every run still `running` belonged to a dead process: it is
        failed at once. Shared, a run is failed only when its owner's lease has expired; a
        heartbeat renews this process's leases and takes over expired ones.
        """
        self.broker.on_control(self._on_control)
        if self.shared:
            await self._take_over_expired()
            self._heartbeat = asyncio.ensure_future(self._beat())
        else:
            for run in await self.store.list_runs(statuses=["running"]):
                if run.id not in self.active:
                    await self._fail_orphan(run)
        for run in await self.store.list_runs(statuses=["awaiting_approval"]):
            if self.broker.info(run.id) is None and not self.shared:
                await self._rebuild_log(run)
            agent = await self.store.get_agent(run.agent_id)
            timeout = (agent.settings or {}).get("approval_timeout_s") if agent else None
            approvals = await self.store.approvals(run.id)
            if timeout and approvals:
                asked = datetime.fromisoformat(max(a.requested_at for a in approvals))
                elapsed = (datetime.now(UTC) - asked).total_seconds()
                self._arm_timeout(run.id, float(timeout) - elapsed)
        for run in await self.store.list_runs(statuses=["queued"]):
            if self.broker.info(run.id) is None and await self.broker.fetch_info(run.id) is None:
                self._open_log(run)
            self._spawn(self._drain_queue(run.agent_id))

    async def _fail_orphan(self, run: Run) -> None:
        await self._hold_log(run)
        await self._finish_idle(run, "running", Stop("error", "gateway_restarted", RUN_OWNER_RESTARTED, True))

    async def _take_over_expired(self) -> None:
        now = time.time()
        for run in await self.store.take_over_expired(self.instance_id, now, now + self.lease_s):
            if run.id not in self.active:
                await self._fail_orphan(run)

    async def _beat(self) -> None:
        """Renew this process's leases and fail runs whose owner stopped beating."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.renew_leases(self.instance_id, time.time() + self.lease_s)
                await self._take_over_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease heartbeat failed")

    async def _rebuild_log(self, run: Run) -> None:
        """A run whose log was lost gets a new log (new epoch) from what is persisted, so a
        client sees its messages, its pending approvals, and how it ends."""
        epoch = new_epoch()
        await self.store.update_run(run.id, epoch=epoch)
        self.broker.open(run.id, epoch)
        rows = await self.store.list_messages(run_id=run.id)
        for row in rows:
            for event in ev.row_events(row):
                self.broker.append(run.id, event)
        if run.status != "awaiting_approval":
            return
        approvals = await self.store.approvals(run.id)
        pending = [a for a in approvals if not a.resolved]
        if pending:
            calls = [
                {"tool_call_id": a.tool_call_id, "name": a.name, "arguments": a.arguments} for a in pending
            ]
            msg_id = next((r.id for r in reversed(rows) if r.role == "assistant"), new_id("message"))
            self.broker.append(
                run.id, ev.approval_request(msg_id, f"{msg_id}-approval", pending[0].step_id, calls)
            )
            decided = [
                {
                    "tool_call_id": a.tool_call_id,
                    "approve": a.decision,
                    **({"reason": a.reason} if a.reason else {}),
                }
                for a in pending
                if a.decision is not None
            ]
            if decided:
                self.broker.append(run.id, ev.approval_response(run.id, decided))
        self.broker.append(run.id, ev.run_status("awaiting_approval"))

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, let running steps finish within the grace period, then cancel the rest."""
        self.accepting = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for active in list(self.active.values()):
            active.draining = True
        tasks = [a.task for a in self.active.values() if a.task is not None and not a.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        cut = [a for a in self.active.values() if a.task is not None and not a.task.done()]
        for active in cut:
            assert active.task is not None
            active.task.cancel()
        if cut:
            await asyncio.gather(*(a.task for a in cut if a.task is not None), return_exceptions=True)
        for active in cut:  # leave no run `running`: what the grace could not finish has failed
            if active.status == "running":
                try:
                    await self.executor.finish(
                        active,
                        Stop("error", "gateway_shutdown", "the gateway shut down during this run", True),
                    )
                except Exception:
                    log.exception("could not record the end of run %s", active.run_id)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        pending = [t for t in self._background if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
