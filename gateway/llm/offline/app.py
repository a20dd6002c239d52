"""The offline model's ASGI app: `POST /v1/messages` (and `/v1/messages/count_tokens`).

Contracts (see the package docstring for the magic phrases):

- Routes are relative, so the app works mounted under any prefix. Any `x-api-key` and
  `anthropic-version` are accepted; none is required.
- Every response carries a `request-id` header; every error is the API's shape,
  `{"type":"error","error":{"type":..,"message":..},"request_id":..}` (400 invalid request,
  404 unknown path, 405 wrong method, 413 body over 32 MB).
- A stream is the API's SSE: `message_start`, per block `content_block_start` (a `ping` after
  the first one and after every 64 deltas), its deltas, `content_block_stop`, then
  `message_delta` (stop_reason, cumulative usage) and `message_stop`. Payloads are exactly the
  API's; the only addition is an SSE comment line `: t=<time.time_ns()>` in front of every
  `content_block_delta` event (the SDK ignores comments), taken when the event is handed to
  the server, so a reader can measure the latency it adds.
- Pacing: with `tokens_per_second` > 0, token deltas leave on an absolute schedule
  (`start + k / tps`), each written as soon as it is due. With 0, events are written in
  batches of 16 with an `await asyncio.sleep(0)` after each batch.
- A client that goes away is noticed within one batch or one token interval, whatever the
  pacing: a watcher task waits on `receive()` for `http.disconnect` and cancels the writer.
- `app.state.stats` (`OfflineStats`) counts requests, active streams, completed responses,
  disconnects (requests whose client went away before the response was complete, e.g. a
  stream closed before `message_stop`), rejected requests (4xx), errors (injected by magic
  phrases, or internal) and output tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.llm.offline.responder import Plan, PlannedBlock, error_status, joined, plan_reply
from gateway.llm.offline.signing import DEFAULT_KEY, sign_thinking
from gateway.llm.offline.validation import ApiError, MessagesRequest, error_type_for, validate_request

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
BATCH_EVENTS = 16
PING_EVERY = 64

_PLAIN, _TOKEN, _STAMPED = 0, 1, 2
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DELTA_HEAD = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":'
)
_DELTA_TAIL = b"}}\n\n"
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_DELTA_FIELDS = {
    "text": (b"text_delta", b"text"),
    "thinking": (b"thinking_delta", b"thinking"),
    "tool_use": (b"input_json_delta", b"partial_json"),
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_ERROR_MESSAGES = {
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
    "rate_limit_error": "Number of request tokens has exceeded your rate limit",
}


@dataclass(slots=True)
class OfflineStats:
    """Counters of one app; plain ints, read them at any time."""

    requests: int = 0
    active_streams: int = 0
    completed: int = 0
    disconnects: int = 0
    rejected: int = 0
    errors: int = 0
    output_tokens: int = 0
    #: time.time_ns() of the most recent disconnects (at most 4096), for cancel benchmarks.
    disconnect_times: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def disconnected(self) -> None:
        self.disconnects += 1
        self.disconnect_times.append(time.time_ns())

    def snapshot(self) -> dict[str, Any]:
        data = asdict(self)
        data["disconnect_times"] = list(self.disconnect_times)
        return data


@dataclass(slots=True)
class _Tally:
    emitted: int = 0
    finished: bool = False
    failed: bool = False


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def _injected_message(error_type: str) -> str:
    return _ERROR_MESSAGES.get(error_type, f"{error_type} injected by the offline model")


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _block_start(block: PlannedBlock) -> dict[str, Any]:
    if block.kind == "text":
        return {"type": "text", "text": ""}
    if block.kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if block.kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.data}
    return {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": {}}


def _stream_events(
    plan: Plan, request: MessagesRequest, key: bytes, request_id: str, tally: _Tally
) -> Iterator[tuple[int, bytes]]:
    """The SSE events of a plan, each tagged plain, token (paced, stamped) or stamped."""
    message: dict[str, Any] = {
        "id": plan.message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(request.input_tokens, 1),
    }
    yield _PLAIN, _event(b"message_start", {"type": "message_start", "message": message})
    limit = plan.limit
    fail_at = plan.error_after if plan.error_type is not None else -1
    emitted = 0
    cut = False
    dumps = orjson.dumps
    for index, block in enumerate(plan.blocks):
        if limit is not None and emitted >= limit:
            cut = True
            break
        start = {"type": "content_block_start", "index": index, "content_block": _block_start(block)}
        yield _PLAIN, _event(b"content_block_start", start)
        if index == 0:
            yield _PLAIN, _PING
        if block.kind in _DELTA_FIELDS:
            delta_type, field = _DELTA_FIELDS[block.kind]
            head = _DELTA_HEAD % (index, delta_type, field)
            thought: list[str] | None = [] if block.kind == "thinking" else None
            for token in block.tokens:
                if emitted == fail_at:
                    break
                if limit is not None and emitted >= limit:
                    cut = True
                    break
                yield _TOKEN, head + dumps(token) + _DELTA_TAIL
                emitted += 1
                if thought is not None:
                    thought.append(token)
                if emitted % PING_EVERY == 0:
                    yield _PLAIN, _PING
            if emitted == fail_at:
                break
            if thought is not None:
                signature = sign_thinking("".join(thought), key)
                yield (
                    _STAMPED,
                    (_DELTA_HEAD % (index, b"signature_delta", b"signature"))
                    + dumps(signature)
                    + _DELTA_TAIL,
                )
        yield _PLAIN, _BLOCK_STOP % index
        if cut:
            break
    tally.emitted = emitted
    if plan.error_type is not None:
        tally.failed = True
        error = _error_body(plan.error_type, _injected_message(plan.error_type), request_id)
        yield _PLAIN, _event(b"error", error)
        return
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens" if cut else plan.stop_reason, "stop_sequence": None},
        "usage": {
            "input_tokens": request.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": emitted,
        },
    }
    yield _PLAIN, _event(b"message_delta", delta)
    yield _PLAIN, _MESSAGE_STOP
    tally.finished = True


def _partial_input(json_prefix: str) -> dict[str, Any]:
    """What the API returns as `input` for tool arguments cut short: the parsable prefix."""
    from jiter import from_json

    try:
        value = from_json(json_prefix.encode(), partial_mode="trailing-strings")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _message(plan: Plan, request: MessagesRequest, key: bytes) -> tuple[dict[str, Any], int]:
    """The non-streaming Message for a plan, and its output token count."""
    content: list[dict[str, Any]] = []
    limit = plan.limit
    emitted = 0
    cut = False
    for block in plan.blocks:
        if limit is not None and emitted >= limit:
            cut = True
            break
        size = len(block.tokens)
        take = size if limit is None else min(size, limit - emitted)
        cut = take < size
        emitted += take
        if block.kind == "text":
            content.append({"type": "text", "text": joined(block.tokens, take)})
        elif block.kind == "thinking":
            thinking = joined(block.tokens, take)
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": sign_thinking(thinking, key)}
            )
        elif block.kind == "redacted_thinking":
            content.append({"type": "redacted_thinking", "data": block.data})
        else:
            tool_input = block.input if not cut else _partial_input(joined(block.tokens, take))
            content.append({"type": "tool_use", "id": block.tool_id, "name": block.name, "input": tool_input})
        if cut:
            break
    message = {
        "id": plan.message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": "max_tokens" if cut else plan.stop_reason,
        "stop_sequence": None,
        "usage": _usage(request.input_tokens, emitted),
    }
    return message, emitted


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole request body; None if the client left first. Raises 413 past the limit."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(send: Send, status: int, payload: Any, request_id: str) -> None:
    body = orjson.dumps(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work`; if the client disconnects first, cancel it and return True."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
    finally:
        watcher.cancel()
    return gone


async def _pump(send: Send, events: Iterator[tuple[int, bytes]], interval: float) -> None:
    """Write events: token deltas on schedule when paced, in batches otherwise."""
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []
    stamp: bytes | None = None
    queued = 0
    tokens = 0
    start = loop.time()
    for kind, data in events:
        if kind == _TOKEN and interval:
            delay = start + tokens * interval - loop.time()
            if delay > 0:
                if pending:
                    await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                    pending.clear()
                await asyncio.sleep(delay)
                stamp = None
                queued = 0
            tokens += 1
        if kind:
            if stamp is None:
                stamp = b": t=%d\n" % time.time_ns()
            pending.append(stamp)
        pending.append(data)
        queued += 1
        if queued >= BATCH_EVENTS:
            await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
            pending.clear()
            stamp = None
            queued = 0
            await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"".join(pending), "more_body": False})


class MessagesEndpoint:
    """ASGI endpoint for `POST /v1/messages` (or `/v1/messages/count_tokens`)."""

    def __init__(
        self,
        stats: OfflineStats,
        key: bytes,
        tokens_per_second: float,
        *,
        count_only: bool,
        ids: Iterator[int],
    ) -> None:
        self.stats = stats
        self.key = key
        self.tokens_per_second = tokens_per_second
        self.count_only = count_only
        self._ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        stats.requests += 1
        request_id = f"req_{next(self._ids):024x}"
        try:
            raw = await _read_body(scope, receive)
            if raw is None:
                stats.disconnected()
                return
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiError(400, f"Invalid JSON in request body: {exc}") from None
            request = validate_request(body, self.key, count_only=self.count_only)
            if self.count_only:
                stats.completed += 1
                await _send_json(send, 200, {"input_tokens": request.input_tokens}, request_id)
                return
            seed = hashlib.blake2b(
                orjson.dumps([request.model, body.get("system"), body["messages"]]), digest_size=16
            ).digest()
            plan = plan_reply(request, key=self.key, seed=seed)
        except ApiError as err:
            stats.rejected += 1
            payload = _error_body(err.error_type, err.message, request_id)
            await _send_json(send, err.status, payload, request_id)
            return
        except Exception:
            logger.exception("offline model: request %s failed", request_id)
            stats.errors += 1
            payload = _error_body("api_error", "Internal server error", request_id)
            await _send_json(send, 500, payload, request_id)
            return
        if plan.http_status is not None:
            stats.errors += 1
            error_type = error_type_for(plan.http_status)
            payload = _error_body(error_type, _injected_message(error_type), request_id)
            await _send_json(send, plan.http_status, payload, request_id)
            return
        tps = self.tokens_per_second if plan.tokens_per_second is None else plan.tokens_per_second
        interval = 1.0 / tps if tps > 0 else 0.0
        delay = plan.first_token_delay_s
        if delay and await _until_disconnect(receive, asyncio.sleep(delay)):
            stats.disconnected()
            return
        if request.stream:
            await self._stream(receive, send, plan, request, request_id, interval)
        else:
            await self._complete(receive, send, plan, request, request_id, interval)

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        plan: Plan,
        request: MessagesRequest,
        request_id: str,
        interval: float,
    ) -> None:
        stats = self.stats
        headers = [*_SSE_HEADERS, (b"request-id", request_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        tally = _Tally()
        events = _stream_events(plan, request, self.key, request_id, tally)
        stats.active_streams += 1
        try:
            gone = await _until_disconnect(receive, _pump(send, events, interval))
        finally:
            stats.active_streams -= 1
            stats.output_tokens += tally.emitted
        if gone:
            stats.disconnected()
        elif tally.failed:
            stats.errors += 1
        elif tally.finished:
            stats.completed += 1

    async def _complete(
        self,
        receive: Receive,
        send: Send,
        plan: Plan,
        request: MessagesRequest,
        request_id: str,
        interval: float,
    ) -> None:
        stats = self.stats
        if plan.error_type is not None:
            stats.errors += 1
            payload = _error_body(plan.error_type, _injected_message(plan.error_type), request_id)
            await _send_json(send, error_status(plan.error_type), payload, request_id)
            return
        message, emitted = _message(plan, request, self.key)
        if interval and emitted:
            if await _until_disconnect(receive, asyncio.sleep(emitted * interval)):
                stats.disconnected()
                return
        stats.output_tokens += emitted
        stats.completed += 1
        await _send_json(send, 200, message, request_id)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "Not Found", 405: "Method Not Allowed"}.get(status, "Internal server error")
    if status == 404:
        message = f"Not Found: {request.method} {request.url.path}"
    body = _error_body(error_type_for(status), message, "req_offline_routing")
    headers = {"request-id": "req_offline_routing"}
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class OfflineApp(Starlette):
    """Starlette, with `POST` to the two endpoints dispatched straight to them: the middleware
    stack would wrap every `send` of every stream, and cost more than the event itself."""

    def __init__(self, endpoints: dict[str, MessagesEndpoint]) -> None:
        super().__init__(
            routes=[
                *(Route(path, endpoint, methods=["POST"]) for path, endpoint in endpoints.items()),
                Route("/v1/stats", self._stats, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )
        self._direct = endpoints

    async def _stats(self, request: Request) -> Response:
        """`GET /v1/stats`: the counters, and recent disconnect times (not part of the real API)."""
        return Response(orjson.dumps(self.state.stats.snapshot()), media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            endpoint = self._direct.get(path)
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(*, tokens_per_second: float = 0.0, signing_key: bytes = DEFAULT_KEY) -> Starlette:
    """The offline model as a Starlette app; `app.state.stats` holds its `OfflineStats`."""
    if tokens_per_second < 0:
        raise ValueError("tokens_per_second must be >= 0")
    stats = OfflineStats()
    ids = itertools.count(1)
    app = OfflineApp(
        {
            "/v1/messages": MessagesEndpoint(
                stats, signing_key, tokens_per_second, count_only=False, ids=ids
            ),
            "/v1/messages/count_tokens": MessagesEndpoint(
                stats, signing_key, tokens_per_second, count_only=True, ids=ids
            ),
        }
    )
    app.state.stats = stats
    app.state.signing_key = signing_key
    app.state.tokens_per_second = tokens_per_second
    return app
