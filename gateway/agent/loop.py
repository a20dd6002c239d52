"""The step loop: history -> model request -> stream -> persist -> tools -> repeat.

One `ActiveRun` per run executing in this process. Its task runs `Executor.drive`; the
interruptible phases (the model stream, tool execution) run as child tasks in
`ActiveRun.phase`, so an immediate cancel interrupts exactly those, and everything that
persists state runs to completion. A run parked for approval holds no task at all: the
pending calls are rows in the store, and `Executor.resume` continues from them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import orjson

from gateway.agent import events as ev
from gateway.agent.history import build_request
from gateway.broker import Broker
from gateway.llm.body import UpstreamConnectionError, pump
from gateway.llm.client import ModelRouter, UnknownModel, open_stream
from gateway.llm.interpreter import (
    StepOutput,
    StreamProtocolError,
    ToolCall,
    UpstreamStreamError,
    feed,
    finish,
    new_stream,
    snapshot_partial,
)
from gateway.llm.sse import SSEDataError, SSEJsonDecoder
from gateway.runs.lifecycle import STOP_ACTIONS, Action, advance
from gateway.store import Agent, Approval, Message, Run, Step, Store, Tool, new_id, now_iso
from gateway.store.store import HistoryTuple
from gateway.tools import ToolResult, execute_tool

log = logging.getLogger("gateway.run")

PARKED = "__parked__"
CANCELLED_RETURN = "error: the run was cancelled before this tool call completed"
NOT_RUN_RETURN = "error: this tool call was not executed because the run stopped ({reason})"


@dataclass(slots=True)
class Stop:
    reason: str
    error_type: str | None = None
    message: str | None = None
    retryable: bool = False


@dataclass(slots=True)
class ActiveRun:
    run_id: str
    agent_id: str
    stream_tokens: bool
    max_steps: int
    status: str = "running"
    step_count: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    phase: asyncio.Future[Any] | None = None
    cancel_mode: str | None = None
    draining: bool = False  # the process is shutting down: stop after this step
    # The agent and its tools as the run started: read once, not on every step.
    agent: Agent | None = None
    tools: list[Tool] | None = None
    history: Sequence[HistoryTuple] | None = None  # prefetched for the first step only
    # The last step's rows when it ended the run: written by `finish` in the same transaction
    # as the terminal status (one commit fewer per run).
    last_step: tuple[Step, list[Message]] | None = None

    def request_cancel(self, mode: str) -> None:
        if mode == "immediate" or self.cancel_mode == "immediate":
            self.cancel_mode = "immediate"
            if self.phase is not None and not self.phase.done():
                self.phase.cancel()
        elif self.cancel_mode is None:
            self.cancel_mode = "after_step"

    def add_usage(self, out: StepOutput) -> None:
        u = out.usage
        totals = self.usage
        totals["prompt_tokens"] = totals.get("prompt_tokens", 0) + u.prompt_tokens
        totals["completion_tokens"] = totals.get("completion_tokens", 0) + u.output_tokens
        totals["cached_input_tokens"] = totals.get("cached_input_tokens", 0) + u.cache_read_tokens
        totals["cache_write_tokens"] = totals.get("cache_write_tokens", 0) + u.cache_write_tokens


@dataclass(slots=True)
class PlannedCall:
    call: ToolCall
    tool: Tool | None
    needs_approval: bool
    result: ToolResult | None = None  # set when answered without running (invalid, unknown)


def requires_approval(agent: Agent, tool: Tool) -> bool:
    override = (agent.approval_overrides or {}).get(tool.name)
    return bool(tool.default_requires_approval if override is None else override)


def tool_error(text: str) -> ToolResult:
    return ToolResult(status="error", tool_return=text, stdout="", stderr="")


class Executor:
    """Runs the steps of runs. Owned by the RunManager, which supplies `on_finished`."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        router: ModelRouter,
        *,
        tool_timeout_s: float,
        on_finished: Callable[[ActiveRun, bool], None],
        on_parked: Callable[[ActiveRun, Agent], None],
    ) -> None:
        self.store = store
        self.broker = broker
        self.router = router
        self.tool_timeout_s = tool_timeout_s
        self.on_finished = on_finished
        self.on_parked = on_parked

    # -- task bodies -------------------------------------------------------------------------

    async def drive(self, run: ActiveRun) -> None:
        """Task body of a running run: steps until it stops or parks."""
        try:
            stop = await self._steps(run)
        except asyncio.CancelledError:
            raise  # process shutdown: the run is failed (or left parked) by recovery
        except Exception:
            log.exception("run %s crashed", run.run_id)
            stop = Stop(
                "error", "internal_error", "the gateway hit an internal error while running this step"
            )
        if stop.reason != PARKED:
            await self.finish(run, stop)

    async def resume(self, run: ActiveRun, decided: list[Approval]) -> None:
        """Task body after the last approval decision: answer the calls, then step on."""
        try:
            agent = await self.store.get_agent(run.agent_id)
            assert agent is not None
            tools = {t.name: t for t in await self.store.list_tools(agent.tool_ids)}
            step_id = decided[0].step_id
            plans = [
                PlannedCall(
                    ToolCall(
                        id=a.tool_call_id,
                        name=a.name,
                        input=orjson.loads(a.arguments),
                        arguments=a.arguments,
                        error=None,
                    ),
                    tools.get(a.name),
                    False,
                    None if a.decision else tool_error(denied_text(a.reason)),
                )
                for a in decided
            ]
            if run.cancel_mode == "immediate":
                for p in plans:
                    p.result = p.result or tool_error(CANCELLED_RETURN)
            stop = await self._answer_calls(run, step_id, plans, [a.tool_call_id for a in decided])
            if stop is None:
                stop = await self._steps(run)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s crashed while resuming", run.run_id)
            stop = Stop("error", "internal_error", "the gateway hit an internal error while resuming the run")
        if stop.reason != PARKED:
            await self.finish(run, stop)

    # -- steps -------------------------------------------------------------------------------

    async def _steps(self, run: ActiveRun) -> Stop:
        while True:
            if run.cancel_mode is not None:
                return Stop("cancelled")
            if run.draining:
                return Stop(
                    "error", "gateway_shutdown", "the gateway shut down before the run finished", True
                )
            if run.step_count >= run.max_steps:
                return Stop("max_steps")
            stop = await self._step(run)
            if stop is not None:
                return stop

    async def _step(self, run: ActiveRun) -> Stop | None:
        agent = run.agent or await self.store.get_agent(run.agent_id)
        if agent is None:
            return Stop("error", "not_found", "the agent was deleted during the run")
        tools = run.tools if run.tools is not None else await self.store.list_tools(agent.tool_ids)
        run.agent, run.tools = agent, tools
        rows = run.history if run.history is not None else await self.store.history(run.agent_id)
        run.history = None
        request = build_request(agent, tools, rows)
        try:
            client, request["model"] = self.router.resolve(agent.model)
        except UnknownModel as exc:
            return Stop("error", "invalid_model", str(exc))
        step_id = new_id("step")
        message_id = new_id("message")
        state = new_stream(
            message_id=message_id,
            step_id=step_id,
            otid_prefix=f"{message_id}",
            stream_tokens=run.stream_tokens,
        )
        run.step_count += 1
        before = self.broker.info(run.run_id)
        seq_before = before.last_seq if before else 0
        failure: Stop | None = None
        cancelled = False
        run.phase = asyncio.ensure_future(self._consume(client, request, state, run.run_id))
        if run.cancel_mode == "immediate":  # arrived while the request was being built
            run.phase.cancel()
        try:
            await run.phase
            out = finish(state)
        except asyncio.CancelledError:
            if run.cancel_mode != "immediate" or _being_cancelled():
                raise
            cancelled = True
            out = snapshot_partial(state)
        except UpstreamStreamError as exc:
            failure = Stop("llm_api_error", exc.error_type, exc.message, exc.retryable)
            out = snapshot_partial(state)
        except anthropic.APIStatusError as exc:
            failure = Stop(
                "llm_api_error",
                f"http_{exc.status_code}",
                _api_message(exc),
                exc.status_code >= 500 or exc.status_code == 429,
            )
            out = snapshot_partial(state)
        except anthropic.APIConnectionError as exc:
            failure = Stop("llm_api_error", "connection_error", f"could not reach the model: {exc}", True)
            out = snapshot_partial(state)
        except UpstreamConnectionError as exc:
            failure = Stop("llm_api_error", "connection_error", str(exc), True)
            out = snapshot_partial(state)
        except (StreamProtocolError, SSEDataError) as exc:
            failure = Stop("llm_api_error", "stream_protocol_error", str(exc), True)
            out = snapshot_partial(state)
        finally:
            run.phase = None
        if out.incomplete:  # cut before message_delta reported usage: count what was streamed
            info = self.broker.info(run.run_id)
            streamed = (info.last_seq if info else 0) - seq_before
            out.usage.output_tokens = max(out.usage.output_tokens, streamed)
        run.add_usage(out)

        if cancelled or failure is not None or out.stop_reason == "max_tokens":
            stop = failure or (Stop("cancelled") if cancelled else None)
            if stop is None:
                stop = Stop(
                    "max_tokens_exceeded",
                    "max_tokens_exceeded",
                    "the model reached max_tokens before finishing its answer",
                )
            note = CANCELLED_RETURN if cancelled else NOT_RUN_RETURN.format(reason=stop.reason)
            plans = [PlannedCall(c, None, False, tool_error(note)) for c in out.tool_calls]
            await self._persist_step(run, step_id, message_id, out, plans)
            if plans:
                await self._answer_calls(run, step_id, plans, [])
            return stop

        tools_by_name = {t.name: t for t in tools}
        plans = [self._plan(agent, tools_by_name, c) for c in out.tool_calls]
        if not plans:  # the run ends here: `finish` persists this step with the end
            step, messages, _ = self._step_rows(run, step_id, message_id, out, plans)
            run.last_step = (step, messages)
            return Stop("refusal" if out.stop_reason == "refusal" else "end_turn")
        await self._persist_step(run, step_id, message_id, out, plans)
        waiting = [p for p in plans if p.needs_approval]
        now = [p for p in plans if not p.needs_approval]
        if now:
            stop = await self._answer_calls(run, step_id, now, [])
            if stop is not None:
                if waiting:
                    await self._cancel_pending(run, step_id, [p.call.id for p in waiting])
                return stop
        if waiting:
            stop = await self._park(run, step_id, message_id, waiting)
            self.on_parked(run, agent)
            return stop
        return None

    async def _consume(
        self, client: anthropic.AsyncAnthropic, request: dict[str, Any], state: Any, run_id: str
    ) -> None:
        append = self.broker.append
        decode = SSEJsonDecoder().feed

        def relay(raws: list[dict[str, Any]]) -> None:
            for raw in raws:
                for event in feed(state, raw):
                    append(run_id, event)

        def on_chunk(chunk: bytes) -> None:
            # Runs in the upstream connection's protocol callback (gateway.llm.body): a
            # chunk goes to the subscribers' sockets without waking this task.
            try:
                raws = decode(chunk)
            except SSEDataError as exc:
                relay(exc.before)  # the events before the bad one are good: keep them
                raise
            relay(raws)

        async with open_stream(client, request) as response:
            await pump(response, on_chunk)

    def _plan(self, agent: Agent, tools: dict[str, Tool], call: ToolCall) -> PlannedCall:
        tool = tools.get(call.name)
        if call.error is not None:
            return PlannedCall(
                call, tool, False, tool_error(f"error: invalid tool call arguments: {call.error}")
            )
        if tool is None:
            return PlannedCall(call, None, False, tool_error(f"error: unknown tool {call.name!r}"))
        return PlannedCall(call, tool, requires_approval(agent, tool))

    async def _persist_step(
        self, run: ActiveRun, step_id: str, message_id: str, out: StepOutput, plans: list[PlannedCall]
    ) -> None:
        step, messages, approvals = self._step_rows(run, step_id, message_id, out, plans)
        await self.store.persist_step(
            step, messages, run.run_id, {"step_count": run.step_count, "usage": dict(run.usage)}, approvals
        )

    def _step_rows(
        self, run: ActiveRun, step_id: str, message_id: str, out: StepOutput, plans: list[PlannedCall]
    ) -> tuple[Step, list[Message], list[Approval]]:
        """A step's usage row, its assistant message (if it said anything) and the approvals
        its calls wait for."""
        messages = []
        if out.content:
            meta = [{"otid": otid} for otid in out.block_otids]
            messages.append(
                Message(
                    id=message_id,
                    agent_id=run.agent_id,
                    run_id=run.run_id,
                    step_id=step_id,
                    role="assistant",
                    content=out.content,
                    meta=meta,
                    partial=bool(out.partial_otids),
                    created_at=now_iso(),
                )
            )
        approvals = [
            Approval(
                run_id=run.run_id,
                tool_call_id=p.call.id,
                step_id=step_id,
                name=p.call.name,
                arguments=orjson.dumps(p.call.input).decode(),
                position=i,
                requested_at=now_iso(),
                resolved=False,
            )
            for i, p in enumerate(plans)
            if p.needs_approval
        ]
        step = Step(
            id=step_id,
            run_id=run.run_id,
            agent_id=run.agent_id,
            number=run.step_count,
            stop_reason=out.stop_reason,
            usage={
                "prompt_tokens": out.usage.prompt_tokens,
                "completion_tokens": out.usage.output_tokens,
                "cached_input_tokens": out.usage.cache_read_tokens,
                "cache_write_tokens": out.usage.cache_write_tokens,
            },
            created_at=now_iso(),
        )
        return step, messages, approvals

    async def _answer_calls(
        self, run: ActiveRun, step_id: str, plans: list[PlannedCall], approval_ids: list[str]
    ) -> Stop | None:
        """Run the calls that have no result yet (concurrently), persist and emit the returns."""
        to_run = [p for p in plans if p.result is None]
        stop: Stop | None = None
        if to_run:
            tasks = [
                asyncio.ensure_future(
                    execute_tool(
                        source_code=p.tool.source_code if p.tool else "",
                        name=p.call.name,
                        arguments=p.call.input,
                        timeout_s=self.tool_timeout_s,
                    )
                )
                for p in to_run
            ]
            phase = run.phase = asyncio.gather(*tasks)
            try:
                if run.cancel_mode == "immediate":
                    phase.cancel()
                await phase
            except asyncio.CancelledError:
                if run.cancel_mode != "immediate" or _being_cancelled():
                    for t in tasks:
                        t.cancel()
                    raise
                stop = Stop("cancelled")
            finally:
                run.phase = None
            for p, task in zip(to_run, tasks, strict=True):
                if task.done() and not task.cancelled() and task.exception() is None:
                    p.result = task.result()
                else:
                    p.result = tool_error(CANCELLED_RETURN)
        returns = []
        content = []
        meta = []
        message_id = new_id("message")
        otid = f"{message_id}-0"
        for p in plans:
            result = p.result
            assert result is not None
            limit = p.tool.return_char_limit if p.tool else 50000
            text = result.tool_return if len(result.tool_return) <= limit else result.tool_return[:limit]
            item: dict[str, Any] = {"tool_call_id": p.call.id, "status": result.status, "tool_return": text}
            if result.stdout:
                item["stdout"] = [result.stdout]
            if result.stderr:
                item["stderr"] = [result.stderr]
            returns.append(item)
            content.append(
                {
                    "type": "tool_result",
                    "tool_use_id": p.call.id,
                    "content": text,
                    "is_error": result.status == "error",
                }
            )
            meta.append(
                {"otid": otid, "status": result.status, "stdout": result.stdout, "stderr": result.stderr}
            )
        row = Message(
            id=message_id,
            agent_id=run.agent_id,
            run_id=run.run_id,
            step_id=step_id,
            role="tool",
            content=content,
            meta=meta,
            partial=False,
            created_at=now_iso(),
        )
        await self.store.add_tool_results(row, run.run_id, approval_ids)
        self.broker.append(run.run_id, ev.tool_return_message(message_id, otid, step_id, returns))
        return stop

    async def _park(self, run: ActiveRun, step_id: str, message_id: str, waiting: list[PlannedCall]) -> Stop:
        calls = [
            {"tool_call_id": p.call.id, "name": p.call.name, "arguments": orjson.dumps(p.call.input).decode()}
            for p in waiting
        ]
        # The store says awaiting_approval before anyone can see the request: a decision sent
        # the instant the request arrives must find the run ready for it.
        run.status = advance(run.status, Action.PARK)
        await self.store.update_run(run.run_id, status=run.status)
        self.broker.append(
            run.run_id, ev.approval_request(message_id, f"{message_id}-approval", step_id, calls)
        )
        self.broker.append(run.run_id, ev.run_status(run.status))
        return Stop(PARKED)

    async def _cancel_pending(self, run: ActiveRun, step_id: str, ids: list[str]) -> None:
        """Deny calls that were waiting for approval when the run stopped (history stays valid)."""
        plans = [
            PlannedCall(
                ToolCall(id=i, name="", input={}, arguments="{}", error=None),
                None,
                False,
                tool_error(CANCELLED_RETURN),
            )
            for i in ids
        ]
        await self.store.deny_pending(run.run_id, "cancelled")
        await self._answer_calls(run, step_id, plans, ids)

    async def cancel_parked(self, run: ActiveRun) -> None:
        """End a parked run as cancelled: every call still unanswered gets an error return
        (denied ones say so), so the next request's history stays valid."""
        approvals = [a for a in await self.store.approvals(run.run_id) if not a.resolved]
        if approvals:
            plans = [
                PlannedCall(
                    ToolCall(id=a.tool_call_id, name=a.name, input={}, arguments=a.arguments, error=None),
                    None,
                    False,
                    tool_error(denied_text(a.reason) if a.decision is False else CANCELLED_RETURN),
                )
                for a in approvals
            ]
            await self._answer_calls(run, approvals[0].step_id, plans, [a.tool_call_id for a in approvals])
        await self.finish(run, Stop("cancelled"))

    # -- the end -----------------------------------------------------------------------------

    async def finish(self, run: ActiveRun, stop: Stop) -> None:
        """Persist the terminal status, then emit the closing events (PROTOCOL.md section 4)."""
        status = advance(run.status, STOP_ACTIONS[stop.reason])
        failing = STOP_ACTIONS[stop.reason] is Action.FAIL
        info = self.broker.info(run.run_id)
        last_seq = (info.last_seq if info else 0) + (4 if failing else 3)
        error = None
        if failing:
            error = {"error_type": stop.error_type or stop.reason, "message": stop.message or stop.reason}
        last_step, run.last_step = run.last_step, None
        queued_next = await self.store.finish_run(
            run.run_id,
            run.agent_id,
            {
                "status": status.value,
                "stop_reason": stop.reason,
                "usage": dict(run.usage),
                "step_count": run.step_count,
                "completed_at": now_iso(),
                "last_seq": last_seq,
                "error": error,
            },
            last_step,
        )
        run.status = status.value
        if failing:
            self.broker.append(
                run.run_id,
                ev.error_message(stop.error_type or stop.reason, stop.message or stop.reason, stop.retryable),
            )
        self.broker.append(run.run_id, ev.stop_reason(stop.reason))
        self.broker.append(run.run_id, ev.usage_statistics(run.usage, run.step_count))
        self.broker.append(run.run_id, ev.run_status(status.value, stop.reason))
        self.broker.close(run.run_id)
        self.on_finished(run, queued_next)


def denied_text(reason: str | None) -> str:
    text = "error: the user denied this tool call"
    return f"{text}. Reason: {reason}" if reason else text


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return f"model API error {exc.status_code}: {err['message']}"
    return f"model API error {exc.status_code}"


def run_from_row(row: Run) -> ActiveRun:
    req = row.request or {}
    return ActiveRun(
        run_id=row.id,
        agent_id=row.agent_id,
        stream_tokens=bool(req.get("stream_tokens", True)),
        max_steps=int(req.get("max_steps") or 50),
        status=row.status,
        step_count=row.step_count,
        usage=dict(row.usage or {}),
    )


def new_epoch() -> str:
    return uuid.uuid4().hex
