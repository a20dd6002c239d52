"""Letta's send-message API over the run log: SSE is one more reader of the same events.

`POST /v1/agents/{id}/messages/stream` starts a run and streams it; `POST|GET
/v1/runs/{id}/stream` replays a run's log after `starting_after` and follows it live;
`POST /v1/agents/{id}/messages` waits for the run and returns its messages;
`POST /v1/agents/{id}/messages/async` returns the run at once; `POST
/v1/agents/{id}/messages/cancel` cancels the agent's active run.

The SSE view is Letta's: `data: <message>\\n\\n` per event, each carrying `run_id` and
`seq_id`, with the gateway's `user_message` and `run_status` events left out (Letta streams
neither), and a final `data: [DONE]`. Each event also has an SSE `id:` (its seq), so a client
can resume with `starting_after` (or `Last-Event-ID`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.agent.events import letta_messages
from gateway.api.routes import JSON, HTTPError, body, endpoint, gw
from gateway.api.schemas import SendMessages
from gateway.api.serialize import run_json
from gateway.broker import find_log
from gateway.runs.lifecycle import is_terminal

if TYPE_CHECKING:
    from gateway.app import Gateway

HIDDEN = frozenset({"user_message", "run_status"})
TERMINAL = frozenset({"completed", "failed", "cancelled"})
DONE = b"data: [DONE]\n\n"


class SSESink:
    """A broker sink that buffers (seq, event) for one SSE response. Bounded: a client this
    far behind is cut off and resumes with `starting_after`."""

    def __init__(self, limit: int = 100_000) -> None:
        self.items: deque[tuple[int, dict[str, Any]]] = deque()
        self.wake = asyncio.Event()
        self.limit = limit
        self.overflowed = False

    def deliver(self, run_id: str, seq: int, frame: str, event: dict[str, Any]) -> None:
        if len(self.items) >= self.limit:
            self.overflowed = True
        else:
            self.items.append((seq, event))
        self.wake.set()


async def run_events(gateway: Gateway, run_id: str, after: int) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(seq, event) of the run's log after `after`, live, until its terminal run_status.
    Ends early (the client resumes) if the reader falls too far behind. Empty if the log is gone."""
    sink = SSESink()
    info = await gateway.broker.attach(run_id, sink, after)
    if info is None or (info.closed and after >= info.last_seq):
        gateway.broker.detach(run_id, sink)
        return
    try:
        while True:
            await sink.wake.wait()
            sink.wake.clear()
            while sink.items:
                seq, event = sink.items.popleft()
                yield seq, event
                if event["message_type"] == "run_status" and event["status"] in TERMINAL:
                    return
            if sink.overflowed:
                return
    finally:
        gateway.broker.detach(run_id, sink)


async def follow(gateway: Gateway, run_id: str, after: int) -> AsyncIterator[bytes]:
    """The run's events after `after` in Letta's SSE form; from the store if the log is gone."""
    run = await gateway.store.get_run(run_id)
    live = run is not None and not is_terminal(run.status)
    info = await find_log(gateway.broker, run_id, live=live)
    if info is not None and info.closed and after >= info.last_seq:
        yield DONE
        return
    seen = False
    async for seq, event in run_events(gateway, run_id, after):
        seen = True
        if event["message_type"] == "run_status" and event["status"] in TERMINAL:
            yield DONE
            return
        if event["message_type"] not in HIDDEN:
            yield b"id: %d\ndata: " % seq + orjson.dumps({**event, "run_id": run_id, "seq_id": seq}) + b"\n\n"
    if seen:
        return  # cut off for falling behind: no [DONE], the client resumes with starting_after
    for message in letta_messages(await gateway.store.list_messages(run_id=run_id)):
        if message["message_type"] not in HIDDEN:
            yield b"data: " + orjson.dumps(message) + b"\n\n"
    if run is not None and run.stop_reason:
        yield (
            b"data: "
            + orjson.dumps({"message_type": "stop_reason", "stop_reason": run.stop_reason})
            + b"\n\n"
        )
    yield DONE


def sse(stream: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _start(request: Request, data: SendMessages) -> Any:
    messages = [m.model_dump(exclude_none=True) for m in data.messages]
    run, _ = await gw(request).manager.start(
        request.path_params["agent_id"],
        messages,
        stream_tokens=data.stream_tokens,
        max_steps=data.max_steps,
        idempotency_key=data.idempotency_key,
        if_busy="reject",
    )
    return run


@endpoint
async def send_stream(request: Request) -> Any:
    data = await body(request, SendMessages)
    run = await _start(request, data)
    return sse(follow(gw(request), run.id, 0))


@endpoint
async def send_async(request: Request) -> Any:
    data = await body(request, SendMessages)
    run = await _start(request, data)
    return run_json(run)


@endpoint
async def send_blocking(request: Request) -> Any:
    """Run to the end, then answer with its messages (the inputs left out), as Letta does."""
    data = await body(request, SendMessages)
    gateway = gw(request)
    run = await _start(request, data)
    usage: dict[str, Any] | None = None
    async for _seq, event in run_events(gateway, run.id, 0):
        if event["message_type"] == "usage_statistics":
            usage = event
    final = await gateway.store.get_run(run.id)
    rows = await gateway.store.list_messages(run_id=run.id)
    messages = [m for m in letta_messages(rows) if m["message_type"] != "user_message"]
    return {
        "messages": messages,
        "stop_reason": {"message_type": "stop_reason", "stop_reason": final.stop_reason if final else None},
        "usage": usage,
    }


@endpoint
async def run_stream(request: Request) -> Any:
    gateway = gw(request)
    run_id = request.path_params["run_id"]
    if await gateway.store.get_run(run_id) is None:
        raise HTTPError(404, f"run {run_id!r} not found")
    after: object = 0
    if request.method == "POST":
        raw = await request.body()
        try:
            params = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise HTTPError(400, "the request body is not valid JSON") from None
        after = params.get("starting_after", 0) if isinstance(params, dict) else 0
    else:
        after = request.query_params.get("starting_after") or request.headers.get("last-event-id") or 0
    try:
        start = int(after)  # type: ignore[call-overload,unused-ignore]
        if start < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise HTTPError(
            422,
            [{"loc": ["body", "starting_after"], "msg": "must be an integer >= 0", "type": "value_error"}],
        ) from None
    return sse(follow(gateway, run_id, start))


@endpoint
async def cancel_agent_runs(request: Request) -> Any:
    gateway = gw(request)
    agent = await gateway.store.get_agent(request.path_params["agent_id"])
    if agent is None:
        raise HTTPError(404, f"agent {request.path_params['agent_id']!r} not found")
    raw = await request.body()
    wanted = None
    if raw:
        try:
            wanted = (orjson.loads(raw) or {}).get("run_ids")
        except (orjson.JSONDecodeError, AttributeError):
            raise HTTPError(400, "the request body is not valid JSON") from None
    runs = await gateway.store.list_runs(
        agent_id=agent.id, statuses=["queued", "running", "awaiting_approval"]
    )
    result = {}
    for run in runs:
        if wanted is None or run.id in wanted:
            result[run.id] = await gateway.manager.cancel(run.id, "immediate")
    return JSON(result)


routes = [
    Route("/v1/agents/{agent_id}/messages", send_blocking, methods=["POST"]),
    Route("/v1/agents/{agent_id}/messages/stream", send_stream, methods=["POST"]),
    Route("/v1/agents/{agent_id}/messages/async", send_async, methods=["POST"]),
    Route("/v1/agents/{agent_id}/messages/cancel", cancel_agent_runs, methods=["POST"]),
    Route("/v1/runs/{run_id}/stream", run_stream, methods=["GET", "POST"]),
]
