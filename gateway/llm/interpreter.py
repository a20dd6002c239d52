"""The Anthropic stream interpreter: raw stream events in, run events and a step's output out.

Fold, then derive (as `anthropic.lib.streaming._messages` does with `accumulate_event` and
`build_events`, but over plain dicts and without pydantic): `feed(state, raw)` folds one raw
event (the JSON of one SSE `data:` line, see `gateway.llm.sse`) into a `StreamState` and
returns the run events to emit now; `finish(state)` and `snapshot_partial(state)` derive the
assistant message to persist and send back to the model. No I/O; the clock is injected.

Contracts of `feed`:

- Order. `message_start` comes first and once. Before it only an `error` event is accepted;
  any other event (`ping` and unknown types included) raises `StreamProtocolError`. A
  content block is started once, receives deltas, is stopped once, all by its `index`; a
  delta or stop for an index never started or already stopped, a second start of an index,
  a known delta type sent to the wrong block type (e.g. `text_delta` to a `tool_use`
  block), or a content/message event after `message_stop` raises `StreamProtocolError`, as
  does a payload missing a required field.
- Ignored, never a crash: `ping` after `message_start`; unknown event types; unknown delta
  types; `citations_delta` (citations are not kept); blocks of any type other than `text`,
  `thinking`, `redacted_thinking` and `tool_use` (e.g. `server_tool_use`,
  `web_search_tool_result`, `mcp_tool_use`), with all their deltas. Such blocks are left
  out of the step output.
- `error` events raise `UpstreamStreamError(error_type, message, retryable)` wherever they
  come; `retryable` is true for `overloaded_error`, `api_error` and `rate_limit_error`.
- Emitted events are plain dicts shaped as in `docs/internals.md`: `message_type`, `id`
  (the `message_id` given to `new_stream`), `otid` (`f"{otid_prefix}-{index}"`, shared by
  all events of a block), `step_id`, `date` (`now()`), then the type's fields.
- With `stream_tokens=True`: every non-empty `text_delta` gives an `assistant_message` and
  every non-empty `thinking_delta` a `reasoning_message` carrying the delta; a thinking
  block's `content_block_stop` gives one more `reasoning_message` with `reasoning: ""` and
  the `signature` (if one arrived). A `redacted_thinking` block gives its one
  `hidden_reasoning_message` at `content_block_start` (its data is complete there). Every
  non-empty `input_json_delta` gives a `tool_call_message` whose `arguments` is the
  fragment; the first event of each call also carries `name`; a call that stops with no
  event yet (no arguments) gives one with `name` and its complete JSON (`"{}"`).
- With `stream_tokens=False`: nothing per delta; each block gives exactly one event at its
  `content_block_stop`, with complete content: `reasoning_message` (+ `signature`),
  `assistant_message` (none for an empty text block), `tool_call_message` (`name` and the
  arguments re-serialised as compact JSON, or the raw string when they are not a valid
  JSON object), `hidden_reasoning_message`.
- Tool arguments are joined and parsed once, at the block's `content_block_stop`, with
  orjson (blank -> `{}`, or the `input` of `content_block_start` if it was not empty).
  Invalid JSON or a non-object makes the call invalid: it keeps `input == {}`, its raw
  `arguments`, and an `error` string the step loop sends back as an error tool_return.
- Usage: `message_start.message.usage` sets all four counters; `message_delta.usage` is
  cumulative, so each field it carries (non-null) replaces the previous value (never
  summed). `message_delta.delta.stop_reason` is recorded.
- Cost per delta: a few dict lookups, one list append, one dict for the emitted event.

Contracts of `finish` / `snapshot_partial` (one builder; `finish` for a stream that reached
`message_stop` or ended, `snapshot_partial` for a step being cancelled):

- `content` lists the blocks in index order, in Anthropic request format, ready to be sent
  back unchanged; `block_otids` is parallel to it. Kept: text (blank text is omitted: the
  API rejects it), thinking only with its signature, redacted thinking whole, tool_use
  blocks that were stopped. An unfinished text block keeps the text so far and its otid is
  put in `partial_otids` (the Anthropic block dict itself carries no marker).
- Dropped, with the id in `dropped_tool_call_ids`: a tool_use block that never stopped (its
  arguments were still streaming), and with `stop_reason == "max_tokens"` a tool_use whose
  arguments are invalid (truncated). Otherwise an invalid call stays, with `input: {}`.
- `tool_calls` lists the kept calls in start order. `incomplete` is true when
  `message_stop` was not received.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson

__all__ = [
    "RETRYABLE_ERROR_TYPES",
    "RedactedThinkingBuffer",
    "RunEvent",
    "SkippedBuffer",
    "StepOutput",
    "StreamError",
    "StreamProtocolError",
    "StreamState",
    "TextBuffer",
    "ThinkingBuffer",
    "ToolCall",
    "ToolUseBuffer",
    "UpstreamStreamError",
    "Usage",
    "feed",
    "finish",
    "iso_now",
    "new_stream",
    "snapshot_partial",
]

RunEvent: TypeAlias = dict[str, Any]
"""One outbound run event (the `event` of a websocket frame), encoded later with orjson."""

RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


# -- errors -------------------------------------------------------------------------------
#
#   StreamError
#   ├── StreamProtocolError   the upstream broke the stream's grammar (our blame: none)
#   └── UpstreamStreamError   the upstream reported an error inside the stream


class StreamError(Exception):
    """Base of the errors `feed` raises."""


class StreamProtocolError(StreamError):
    """The event sequence is not a valid Messages stream (order, index or type mismatch)."""


class UpstreamStreamError(StreamError):
    """An `error` event arrived in the stream."""

    def __init__(self, error_type: str, message: str, retryable: bool) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.retryable = retryable


# -- clock ----------------------------------------------------------------------------------

_clock_second = -1
_clock_prefix = ""


def iso_now() -> str:
    """Current UTC time as ISO 8601 with microseconds, e.g. `2025-01-02T03:04:05.123456+00:00`.

    Same text as `datetime.now(UTC).isoformat(timespec="microseconds")`, at a third of the
    cost: the date part is formatted once per second.
    """
    global _clock_second, _clock_prefix
    ns = time.time_ns()
    second, frac = divmod(ns, 1_000_000_000)
    if second != _clock_second:
        _clock_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _clock_second = second
    return f"{_clock_prefix}.{frac // 1000:06d}+00:00"


# -- results --------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """Token counts of one model call, as Anthropic reports them."""

    input_tokens: int = 0  # input not read from or written to the cache
    output_tokens: int = 0
    cache_read_tokens: int = 0  # `cache_read_input_tokens`
    cache_write_tokens: int = 0  # `cache_creation_input_tokens`

    @property
    def prompt_tokens(self) -> int:
        """All input: uncached, cache reads and cache writes."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True)
class ToolCall:
    """One tool_use block, parsed at its `content_block_stop`."""

    id: str
    name: str
    input: dict[str, Any]  # `{}` when invalid
    arguments: str  # the raw joined JSON (`"{}"`-like compact JSON when nothing streamed)
    error: str | None = None  # why the arguments are invalid; None when valid


@dataclass(slots=True)
class StepOutput:
    """The assistant message of one model call, derived from a `StreamState`."""

    content: list[dict[str, Any]]  # Anthropic request content blocks, index order
    block_otids: list[str]  # parallel to `content`
    tool_calls: list[ToolCall]  # kept calls, start order
    stop_reason: str | None  # upstream's, None if no `message_delta` carried one
    usage: Usage
    incomplete: bool  # no `message_stop`
    partial_otids: set[str] = field(default_factory=set)  # text blocks cut mid-stream
    dropped_tool_call_ids: list[str] = field(default_factory=list)


# -- per-block buffers ------------------------------------------------------------------------


@dataclass(slots=True)
class TextBuffer:
    otid: str
    parts: list[str]
    done: bool = False


@dataclass(slots=True)
class ThinkingBuffer:
    otid: str
    parts: list[str]
    signature: str | None = None
    done: bool = False


@dataclass(slots=True)
class RedactedThinkingBuffer:
    otid: str
    data: str
    done: bool = False


@dataclass(slots=True)
class ToolUseBuffer:
    otid: str
    id: str
    name: str
    parts: list[str]  # `input_json_delta` fragments, joined once at stop
    start_input: dict[str, Any] | None = None  # a non-empty `input` from content_block_start
    emitted: bool = False  # a tool_call_message (with `name`) was emitted for this call
    done: bool = False
    call: ToolCall | None = None  # set at content_block_stop


@dataclass(slots=True)
class SkippedBuffer:
    """A block of a type we do not handle; its deltas are ignored."""

    block_type: str
    done: bool = False


Buffer: TypeAlias = TextBuffer | ThinkingBuffer | RedactedThinkingBuffer | ToolUseBuffer | SkippedBuffer


@dataclass(slots=True)
class StreamState:
    """Everything folded from one stream so far. Create with `new_stream`."""

    message_id: str
    step_id: str
    otid_prefix: str
    stream_tokens: bool
    now: Callable[[], str]
    started: bool = False  # message_start seen
    stopped: bool = False  # message_stop seen
    blocks: dict[int, Buffer] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # block indexes in start order
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    model: str | None = None
    upstream_message_id: str | None = None


def new_stream(
    *,
    message_id: str,
    step_id: str,
    otid_prefix: str,
    stream_tokens: bool,
    now: Callable[[], str] = iso_now,
) -> StreamState:
    """A fresh state for one model call's stream."""
    return StreamState(
        message_id=message_id,
        step_id=step_id,
        otid_prefix=otid_prefix,
        stream_tokens=stream_tokens,
        now=now,
    )


# -- fold and emit ----------------------------------------------------------------------------


def feed(state: StreamState, raw: dict[str, Any]) -> list[RunEvent]:
    """Fold one raw stream event into `state`; return the run events to emit now, in order."""
    kind = raw.get("type")
    try:
        if kind == "content_block_delta":
            return _on_delta(state, raw)
        if kind == "content_block_start":
            return _on_block_start(state, raw)
        if kind == "content_block_stop":
            return _on_block_stop(state, raw)
        if kind == "error":
            raise _upstream_error(raw)
        if not state.started:
            if kind == "message_start":
                _on_message_start(state, raw)
                return []
            raise StreamProtocolError(f"{kind!r} event before message_start")
        if kind == "ping":
            return []
        if kind == "message_delta":
            _check_open(state, kind)
            _on_message_delta(state, raw)
        elif kind == "message_stop":
            _check_open(state, kind)
            state.stopped = True
        elif kind == "message_start":
            raise StreamProtocolError("second message_start event")
        return []
    except (KeyError, TypeError, AttributeError) as exc:
        raise StreamProtocolError(f"malformed {kind!r} event: {exc!r}") from exc


def _on_delta(state: StreamState, raw: dict[str, Any]) -> list[RunEvent]:
    index = raw["index"]
    block = state.blocks.get(index)
    delta = raw["delta"]
    dtype = delta["type"]
    if dtype == "text_delta":
        if not isinstance(block, TextBuffer) or block.done:
            return _misplaced_delta(state, index, dtype, block)
        text = delta["text"]
        block.parts.append(text)
        if state.stream_tokens and text:
            return [
                {
                    "message_type": "assistant_message",
                    "id": state.message_id,
                    "otid": block.otid,
                    "step_id": state.step_id,
                    "date": state.now(),
                    "content": text,
                }
            ]
        return []
    if dtype == "input_json_delta":
        if not isinstance(block, ToolUseBuffer) or block.done:
            return _misplaced_delta(state, index, dtype, block)
        fragment = delta["partial_json"]
        if not fragment:
            return []
        block.parts.append(fragment)
        if not state.stream_tokens:
            return []
        if block.emitted:
            tool_call = {"tool_call_id": block.id, "arguments": fragment}
        else:
            block.emitted = True
            tool_call = {"tool_call_id": block.id, "name": block.name, "arguments": fragment}
        return [
            {
                "message_type": "tool_call_message",
                "id": state.message_id,
                "otid": block.otid,
                "step_id": state.step_id,
                "date": state.now(),
                "tool_call": tool_call,
            }
        ]
    if dtype == "thinking_delta":
        if not isinstance(block, ThinkingBuffer) or block.done:
            return _misplaced_delta(state, index, dtype, block)
        thinking = delta["thinking"]
        if not thinking:
            return []
        block.parts.append(thinking)
        if state.stream_tokens:
            return [
                {
                    "message_type": "reasoning_message",
                    "id": state.message_id,
                    "otid": block.otid,
                    "step_id": state.step_id,
                    "date": state.now(),
                    "reasoning": thinking,
                    "source": "reasoner_model",
                }
            ]
        return []
    if dtype == "signature_delta":
        if not isinstance(block, ThinkingBuffer) or block.done:
            return _misplaced_delta(state, index, dtype, block)
        block.signature = delta["signature"]
        return []
    if dtype == "citations_delta":
        if not isinstance(block, TextBuffer) or block.done:
            return _misplaced_delta(state, index, dtype, block)
        return []
    # An unknown delta type: ignored, but only for a block that is open.
    if block is None or block.done:
        return _misplaced_delta(state, index, dtype, block)
    return []


def _misplaced_delta(state: StreamState, index: int, dtype: str, block: Buffer | None) -> list[RunEvent]:
    """The slow path of `_on_delta`: ignore deltas of skipped blocks, raise for the rest."""
    if block is None:
        if not state.started:
            raise StreamProtocolError(f"content_block_delta ({dtype}) before message_start")
        raise StreamProtocolError(f"content_block_delta ({dtype}) for unknown block index {index}")
    if block.done:
        raise StreamProtocolError(f"content_block_delta ({dtype}) for stopped block index {index}")
    if isinstance(block, SkippedBuffer):
        return []
    raise StreamProtocolError(f"{dtype} for block index {index}, a {_block_type(block)} block")


def _block_type(block: Buffer) -> str:
    if isinstance(block, TextBuffer):
        return "text"
    if isinstance(block, ThinkingBuffer):
        return "thinking"
    if isinstance(block, RedactedThinkingBuffer):
        return "redacted_thinking"
    if isinstance(block, ToolUseBuffer):
        return "tool_use"
    return block.block_type


def _check_open(state: StreamState, kind: str) -> None:
    if state.stopped:
        raise StreamProtocolError(f"{kind} event after message_stop")


def _on_block_start(state: StreamState, raw: dict[str, Any]) -> list[RunEvent]:
    if not state.started:
        raise StreamProtocolError("content_block_start event before message_start")
    _check_open(state, "content_block_start")
    index = raw["index"]
    if type(index) is not int:
        raise StreamProtocolError(f"content_block_start with a non-integer index {index!r}")
    if index in state.blocks:
        raise StreamProtocolError(f"content_block_start for block index {index}, already started")
    cb = raw["content_block"]
    btype = cb["type"]
    otid = f"{state.otid_prefix}-{index}"
    block: Buffer
    out: list[RunEvent] = []
    if btype == "text":
        initial = cb.get("text") or ""
        block = TextBuffer(otid, [initial] if initial else [])
        if initial and state.stream_tokens:
            out.append(_assistant(state, otid, initial))
    elif btype == "thinking":
        initial = cb.get("thinking") or ""
        block = ThinkingBuffer(otid, [initial] if initial else [], cb.get("signature") or None)
        if initial and state.stream_tokens:
            out.append(_reasoning(state, otid, initial, None))
    elif btype == "redacted_thinking":
        block = RedactedThinkingBuffer(otid, cb["data"])
        if state.stream_tokens:
            out.append(_hidden(state, block))
    elif btype == "tool_use":
        start_input = cb.get("input")
        block = ToolUseBuffer(
            otid,
            cb["id"],
            cb["name"],
            [],
            start_input if isinstance(start_input, dict) and start_input else None,
        )
    else:
        block = SkippedBuffer(btype)
    state.blocks[index] = block
    state.order.append(index)
    return out


def _on_block_stop(state: StreamState, raw: dict[str, Any]) -> list[RunEvent]:
    index = raw["index"]
    block = state.blocks.get(index)
    if block is None:
        if not state.started:
            raise StreamProtocolError("content_block_stop event before message_start")
        raise StreamProtocolError(f"content_block_stop for unknown block index {index}")
    if block.done:
        raise StreamProtocolError(f"content_block_stop for block index {index}, already stopped")
    block.done = True
    streaming = state.stream_tokens
    if isinstance(block, TextBuffer):
        if not streaming:
            text = "".join(block.parts)
            if text:
                return [_assistant(state, block.otid, text)]
    elif isinstance(block, ThinkingBuffer):
        if streaming:
            if block.signature is not None:
                return [_reasoning(state, block.otid, "", block.signature)]
        else:
            return [_reasoning(state, block.otid, "".join(block.parts), block.signature)]
    elif isinstance(block, ToolUseBuffer):
        call = block.call = _parse_call(block)
        if not streaming:
            arguments = call.arguments if call.error else orjson.dumps(call.input).decode()
            return [_tool_call(state, block, arguments)]
        if not block.emitted:
            block.emitted = True
            return [_tool_call(state, block, call.arguments)]
    elif isinstance(block, RedactedThinkingBuffer):
        if not streaming:
            return [_hidden(state, block)]
    return []


def _parse_call(block: ToolUseBuffer) -> ToolCall:
    """Join and parse a stopped tool_use block's arguments (once)."""
    arguments = "".join(block.parts)
    if not arguments or arguments.isspace():
        value = block.start_input or {}
        return ToolCall(block.id, block.name, value, orjson.dumps(value).decode())
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        return ToolCall(block.id, block.name, {}, arguments, f"invalid JSON in tool arguments: {exc}")
    if type(parsed) is not dict:
        error = f"tool arguments must be a JSON object, not {type(parsed).__name__}"
        return ToolCall(block.id, block.name, {}, arguments, error)
    return ToolCall(block.id, block.name, parsed, arguments)


def _on_message_start(state: StreamState, raw: dict[str, Any]) -> None:
    message = raw["message"]
    state.started = True
    state.upstream_message_id = message.get("id")
    state.model = message.get("model")
    usage = message.get("usage")
    if usage:
        _apply_usage(state.usage, usage)


def _on_message_delta(state: StreamState, raw: dict[str, Any]) -> None:
    delta = raw.get("delta")
    if delta:
        stop_reason = delta.get("stop_reason")
        if stop_reason is not None:
            state.stop_reason = stop_reason
        stop_sequence = delta.get("stop_sequence")
        if stop_sequence is not None:
            state.stop_sequence = stop_sequence
    usage = raw.get("usage")
    if usage:
        _apply_usage(state.usage, usage)


def _apply_usage(usage: Usage, raw: dict[str, Any]) -> None:
    """Overwrite each counter `raw` carries: Anthropic's counts are cumulative."""
    value = raw.get("input_tokens")
    if value is not None:
        usage.input_tokens = value
    value = raw.get("output_tokens")
    if value is not None:
        usage.output_tokens = value
    value = raw.get("cache_read_input_tokens")
    if value is not None:
        usage.cache_read_tokens = value
    value = raw.get("cache_creation_input_tokens")
    if value is not None:
        usage.cache_write_tokens = value


def _upstream_error(raw: dict[str, Any]) -> UpstreamStreamError:
    error = raw.get("error")
    if not isinstance(error, dict):
        error = {}
    error_type = error.get("type") or "unknown_error"
    message = error.get("message") or ""
    return UpstreamStreamError(str(error_type), str(message), error_type in RETRYABLE_ERROR_TYPES)


# -- event builders (the per-delta ones are inlined in `_on_delta`) ----------------------------


def _assistant(state: StreamState, otid: str, text: str) -> RunEvent:
    return {
        "message_type": "assistant_message",
        "id": state.message_id,
        "otid": otid,
        "step_id": state.step_id,
        "date": state.now(),
        "content": text,
    }


def _reasoning(state: StreamState, otid: str, reasoning: str, signature: str | None) -> RunEvent:
    event: RunEvent = {
        "message_type": "reasoning_message",
        "id": state.message_id,
        "otid": otid,
        "step_id": state.step_id,
        "date": state.now(),
        "reasoning": reasoning,
        "source": "reasoner_model",
    }
    if signature is not None:
        event["signature"] = signature
    return event


def _hidden(state: StreamState, block: RedactedThinkingBuffer) -> RunEvent:
    return {
        "message_type": "hidden_reasoning_message",
        "id": state.message_id,
        "otid": block.otid,
        "step_id": state.step_id,
        "date": state.now(),
        "state": "redacted",
        "hidden_reasoning": block.data,
    }


def _tool_call(state: StreamState, block: ToolUseBuffer, arguments: str) -> RunEvent:
    return {
        "message_type": "tool_call_message",
        "id": state.message_id,
        "otid": block.otid,
        "step_id": state.step_id,
        "date": state.now(),
        "tool_call": {"tool_call_id": block.id, "name": block.name, "arguments": arguments},
    }


# -- derive -------------------------------------------------------------------------------


def finish(state: StreamState) -> StepOutput:
    """The step's assistant message once the stream ended (see the module docstring)."""
    return _derive(state)


def snapshot_partial(state: StreamState) -> StepOutput:
    """What a cancelled step keeps of the stream so far (see the module docstring)."""
    return _derive(state)


def _derive(state: StreamState) -> StepOutput:
    content: list[dict[str, Any]] = []
    otids: list[str] = []
    partial: set[str] = set()
    dropped: list[str] = []
    kept: dict[int, ToolCall] = {}
    truncated = state.stop_reason == "max_tokens"
    for index in sorted(state.blocks):
        block = state.blocks[index]
        if isinstance(block, TextBuffer):
            text = "".join(block.parts)
            if not text or text.isspace():
                continue
            content.append({"type": "text", "text": text})
            if not block.done:
                partial.add(block.otid)
        elif isinstance(block, ThinkingBuffer):
            if block.signature is None:
                continue
            thinking = "".join(block.parts)
            content.append({"type": "thinking", "thinking": thinking, "signature": block.signature})
        elif isinstance(block, RedactedThinkingBuffer):
            content.append({"type": "redacted_thinking", "data": block.data})
        elif isinstance(block, ToolUseBuffer):
            call = block.call
            if call is None or (truncated and call.error is not None):
                dropped.append(block.id)
                continue
            kept[index] = call
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
        else:
            continue
        otids.append(block.otid)
    return StepOutput(
        content=content,
        block_otids=otids,
        tool_calls=[kept[index] for index in state.order if index in kept],
        stop_reason=state.stop_reason,
        usage=Usage(
            state.usage.input_tokens,
            state.usage.output_tokens,
            state.usage.cache_read_tokens,
            state.usage.cache_write_tokens,
        ),
        incomplete=not state.stopped,
        partial_otids=partial,
        dropped_tool_call_ids=dropped,
    )
