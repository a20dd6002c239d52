"""The stream interpreter, replayed on the recorded SSE transcripts in fixtures/.

Every replay decodes the transcript with SSEDecoder cut whole, byte by byte and at random
sizes, and checks that all cuts give the same events, the same error and the same output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from gateway.llm.interpreter import (
    StepOutput,
    StreamError,
    StreamProtocolError,
    StreamState,
    ToolCall,
    UpstreamStreamError,
    Usage,
    feed,
    finish,
    iso_now,
    new_stream,
    snapshot_partial,
)
from gateway.llm.sse import SSEDecoder
from tests.llm.sse_replay import FIXTURES, chunkings, fixture

NOW = "2025-01-01T00:00:00.000000+00:00"
MESSAGE_ID = "message-1"
STEP_ID = "step-1"
COMPLETE = [
    "text.sse",
    "thinking.sse",
    "redacted_thinking.sse",
    "tool_use.sse",
    "parallel_tools.sse",
    "parallel_tools_interleaved.sse",
    "tool_no_args.sse",
    "usage_cumulative.sse",
    "max_tokens_tool_truncated.sse",
    "max_tokens_tool_unstopped.sse",
    "padded.sse",
    "invalid_tool_args.sse",
    "server_tool.sse",
]


def ev(message_type: str, index: int, **fields: Any) -> dict[str, Any]:
    """An expected message event of block `index`."""
    return {
        "message_type": message_type,
        "id": MESSAGE_ID,
        "otid": f"otid-{index}",
        "step_id": STEP_ID,
        "date": NOW,
        **fields,
    }


def text(index: int, content: str) -> dict[str, Any]:
    return ev("assistant_message", index, content=content)


def reasoning(index: int, text: str, signature: str | None = None) -> dict[str, Any]:
    if signature is None:
        return ev("reasoning_message", index, reasoning=text, source="reasoner_model")
    return ev("reasoning_message", index, reasoning=text, source="reasoner_model", signature=signature)


def call(index: int, call_id: str, arguments: str, name: str | None = None) -> dict[str, Any]:
    tool_call = {"tool_call_id": call_id, "arguments": arguments}
    if name is not None:
        tool_call = {"tool_call_id": call_id, "name": name, "arguments": arguments}
    return ev("tool_call_message", index, tool_call=tool_call)


@dataclass
class Replay:
    state: StreamState
    events: list[dict[str, Any]]
    error: StreamError | None


def replay_chunks(chunks: list[bytes], stream_tokens: bool) -> Replay:
    state = new_stream(
        message_id=MESSAGE_ID,
        step_id=STEP_ID,
        otid_prefix="otid",
        stream_tokens=stream_tokens,
        now=lambda: NOW,
    )
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    try:
        for chunk in chunks:
            for _name, data in decoder.feed(chunk):
                events.extend(feed(state, orjson.loads(data)))
    except StreamError as exc:
        return Replay(state, events, exc)
    return Replay(state, events, None)


def replay(body: bytes | str, *, stream_tokens: bool = True, raises: bool = False) -> Replay:
    """Replay a fixture (by name) or a body under every chunking; all must agree."""
    data = fixture(body) if isinstance(body, str) else body
    runs = [replay_chunks(chunks, stream_tokens) for chunks in chunkings(data, seeds=4).values()]
    first = runs[0]
    for other in runs[1:]:
        assert other.events == first.events
        assert repr(other.error) == repr(first.error)
        assert snapshot_partial(other.state) == snapshot_partial(first.state)
    if first.error is not None and not raises:
        raise first.error
    if raises:
        assert first.error is not None, "the replay was expected to raise"
    return first


def cut(name: str, marker: str, extra: int = 0) -> bytes:
    """The fixture cut in the middle of the event holding `marker` (`extra` bytes after it)."""
    data = fixture(name)
    return data[: data.index(marker.encode()) + len(marker) + extra]


def output(
    content: list[dict[str, Any]],
    otids: list[int],
    *,
    tool_calls: list[ToolCall] | None = None,
    stop_reason: str | None,
    usage: Usage,
    incomplete: bool = False,
    partial: set[int] | None = None,
    dropped: list[str] | None = None,
) -> StepOutput:
    return StepOutput(
        content=content,
        block_otids=[f"otid-{i}" for i in otids],
        tool_calls=tool_calls or [],
        stop_reason=stop_reason,
        usage=usage,
        incomplete=incomplete,
        partial_otids={f"otid-{i}" for i in partial or ()},
        dropped_tool_call_ids=dropped or [],
    )


# -- plain text -----------------------------------------------------------------------------


def test_text_streams_one_event_per_delta() -> None:
    run = replay("text.sse")
    assert run.events == [
        {
            "message_type": "assistant_message",
            "id": "message-1",
            "otid": "otid-0",
            "step_id": "step-1",
            "date": NOW,
            "content": "Hello",
        },
        text(0, ", wörld ☀"),
        text(0, "!\nBye."),
    ]
    assert finish(run.state) == output(
        [{"type": "text", "text": "Hello, wörld ☀!\nBye."}],
        [0],
        stop_reason="end_turn",
        usage=Usage(input_tokens=25, output_tokens=15),
    )


def test_event_fields_come_in_the_documented_order() -> None:
    first = replay("text.sse").events[0]
    assert list(first) == ["message_type", "id", "otid", "step_id", "date", "content"]


def test_text_without_streaming_is_one_event_at_block_stop() -> None:
    run = replay("text.sse", stream_tokens=False)
    assert run.events == [text(0, "Hello, wörld ☀!\nBye.")]


def test_ping_is_ignored() -> None:
    run = replay(cut("text.sse", 'event: ping\ndata: {"type": "ping"}\n\n'))
    assert run.events == []
    assert feed(run.state, {"type": "ping"}) == []


def test_date_comes_from_now_for_each_event() -> None:
    ticks = iter(["t1", "t2", "t3"])
    state = new_stream(
        message_id="m", step_id="s", otid_prefix="o", stream_tokens=True, now=lambda: next(ticks)
    )
    dates = [
        e["date"]
        for _, data in SSEDecoder().feed(fixture("text.sse"))
        for e in feed(state, orjson.loads(data))
    ]
    assert dates == ["t1", "t2", "t3"]


def test_iso_now_is_utc_iso8601_with_microseconds() -> None:
    from datetime import datetime

    stamp = iso_now()
    assert len(stamp) == len("2025-01-01T00:00:00.000000+00:00")
    assert datetime.fromisoformat(stamp).utcoffset() is not None


# -- thinking ------------------------------------------------------------------------------

SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


def test_thinking_streams_deltas_then_the_signature() -> None:
    run = replay("thinking.sse")
    assert run.events == [
        reasoning(0, "The user asks 2+2."),
        # the empty thinking_delta emits nothing
        reasoning(0, " That is 4."),
        reasoning(0, "", SIGNATURE),
        text(1, "2 + 2 = 4."),
    ]
    assert finish(run.state) == output(
        [
            {"type": "thinking", "thinking": "The user asks 2+2. That is 4.", "signature": SIGNATURE},
            {"type": "text", "text": "2 + 2 = 4."},
        ],
        [0, 1],
        stop_reason="end_turn",
        usage=Usage(input_tokens=40, output_tokens=30),
    )


def test_thinking_without_streaming_is_one_event_with_its_signature() -> None:
    run = replay("thinking.sse", stream_tokens=False)
    assert run.events == [
        reasoning(0, "The user asks 2+2. That is 4.", SIGNATURE),
        text(1, "2 + 2 = 4."),
    ]


# -- redacted thinking ------------------------------------------------------------------------

REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"


def test_redacted_thinking_is_one_hidden_event_at_its_start() -> None:
    run = replay("redacted_thinking.sse")
    hidden = ev("hidden_reasoning_message", 1, state="redacted", hidden_reasoning=REDACTED)
    assert run.events == [
        reasoning(0, "Hmm."),
        reasoning(0, "", "SigOfThinking0"),
        hidden,
        text(2, "Done."),
    ]
    # At its start, before its stop:
    assert replay(cut("redacted_thinking.sse", REDACTED, 5)).events[-1] == hidden
    assert finish(run.state).content == [
        {"type": "thinking", "thinking": "Hmm.", "signature": "SigOfThinking0"},
        {"type": "redacted_thinking", "data": REDACTED},
        {"type": "text", "text": "Done."},
    ]
    assert finish(run.state).block_otids == ["otid-0", "otid-1", "otid-2"]


def test_redacted_thinking_without_streaming() -> None:
    run = replay("redacted_thinking.sse", stream_tokens=False)
    assert run.events == [
        reasoning(0, "Hmm.", "SigOfThinking0"),
        ev("hidden_reasoning_message", 1, state="redacted", hidden_reasoning=REDACTED),
        text(2, "Done."),
    ]


# -- tool use -------------------------------------------------------------------------------

WEATHER_ARGS = '{"location": "San Francisco, CA", "unit": "fahrenheit"}'


def test_one_tool_call_streams_its_fragments() -> None:
    run = replay("tool_use.sse")
    assert run.events == [
        text(0, "Let me check the weather."),
        # the empty first fragment is not sent; the first sent one carries the name
        call(1, "toolu_01Weather", '{"location": "San Fra', name="get_weather"),
        call(1, "toolu_01Weather", 'ncisco, CA", "unit": "fah'),
        call(1, "toolu_01Weather", 'renheit"}'),
    ]
    weather = {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert finish(run.state) == output(
        [
            {"type": "text", "text": "Let me check the weather."},
            {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather", "input": weather},
        ],
        [0, 1],
        tool_calls=[ToolCall("toolu_01Weather", "get_weather", weather, WEATHER_ARGS)],
        stop_reason="tool_use",
        usage=Usage(input_tokens=472, output_tokens=89),
    )


def test_one_tool_call_without_streaming_has_compact_arguments() -> None:
    run = replay("tool_use.sse", stream_tokens=False)
    assert run.events == [
        text(0, "Let me check the weather."),
        call(
            1, "toolu_01Weather", '{"location":"San Francisco, CA","unit":"fahrenheit"}', name="get_weather"
        ),
    ]


PARALLEL_CALLS = [
    ToolCall("toolu_01A", "get_weather", {"city": "Paris"}, '{"city": "Paris"}'),
    ToolCall("toolu_01B", "get_weather", {"city": "Oslo"}, '{"city": "Oslo"}'),
    ToolCall("toolu_01C", "get_time", {"tz": "Asia/Tokyo"}, '{"tz": "Asia/Tokyo"}'),
]
PARALLEL_CONTENT = [
    {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in PARALLEL_CALLS
]


def test_three_parallel_tool_calls() -> None:
    run = replay("parallel_tools.sse")
    assert run.events == [
        call(0, "toolu_01A", '{"city": "Paris"}', name="get_weather"),
        call(1, "toolu_01B", '{"city": ', name="get_weather"),
        call(1, "toolu_01B", '"Oslo"}'),
        call(2, "toolu_01C", '{"tz": "Asia/Tokyo"}', name="get_time"),
    ]
    assert finish(run.state) == output(
        PARALLEL_CONTENT,
        [0, 1, 2],
        tool_calls=PARALLEL_CALLS,
        stop_reason="tool_use",
        usage=Usage(input_tokens=600, output_tokens=120),
    )


def test_three_parallel_tool_calls_with_interleaved_deltas() -> None:
    run = replay("parallel_tools_interleaved.sse")
    assert run.events == [
        call(1, "toolu_01B", '{"city": ', name="get_weather"),
        call(0, "toolu_01A", '{"city": ', name="get_weather"),
        call(2, "toolu_01C", '{"tz": "Asia/Tokyo"}', name="get_time"),
        call(0, "toolu_01A", '"Paris"}'),
        call(1, "toolu_01B", '"Oslo"}'),
    ]
    # Same message as the sequential transcript: index order, calls in start order.
    assert finish(run.state) == finish(replay("parallel_tools.sse").state)


def test_three_parallel_tool_calls_without_streaming() -> None:
    run = replay("parallel_tools_interleaved.sse", stream_tokens=False)
    assert run.events == [  # one event per call, when its block stops
        call(2, "toolu_01C", '{"tz":"Asia/Tokyo"}', name="get_time"),
        call(0, "toolu_01A", '{"city":"Paris"}', name="get_weather"),
        call(1, "toolu_01B", '{"city":"Oslo"}', name="get_weather"),
    ]


def test_tool_without_arguments_is_sent_at_its_stop() -> None:
    for stream_tokens in (True, False):
        run = replay("tool_no_args.sse", stream_tokens=stream_tokens)
        assert run.events == [
            call(0, "toolu_01Now", "{}", name="current_time"),
            call(1, "toolu_01Roll", "{}", name="roll_dice"),
        ]
        result = finish(run.state)
        assert result.content == [
            {"type": "tool_use", "id": "toolu_01Now", "name": "current_time", "input": {}},
            {"type": "tool_use", "id": "toolu_01Roll", "name": "roll_dice", "input": {}},
        ]
        assert result.tool_calls == [
            ToolCall("toolu_01Now", "current_time", {}, "{}"),
            ToolCall("toolu_01Roll", "roll_dice", {}, "{}"),
        ]


def test_invalid_tool_arguments_are_kept_with_an_error() -> None:
    run = replay("invalid_tool_args.sse")
    result = finish(run.state)
    assert [c.id for c in result.tool_calls] == ["toolu_01Bad", "toolu_01List", "toolu_01Good"]
    bad, listed, good = result.tool_calls
    assert (bad.input, bad.arguments) == ({}, '{"a": 1,,}')
    assert bad.error is not None and bad.error.startswith("invalid JSON in tool arguments")
    assert (listed.input, listed.arguments) == ({}, "[1, 2]")
    assert listed.error == "tool arguments must be a JSON object, not list"
    assert good == ToolCall("toolu_01Good", "add", {"a": 1, "b": 2}, '{"a": 1, "b": 2}')
    assert [block["input"] for block in result.content] == [{}, {}, {"a": 1, "b": 2}]
    assert result.dropped_tool_call_ids == []
    # Without streaming, an invalid call's event carries the raw string.
    assert [
        e["tool_call"]["arguments"] for e in replay("invalid_tool_args.sse", stream_tokens=False).events
    ] == [
        '{"a": 1,,}',
        "[1, 2]",
        '{"a":1,"b":2}',
    ]


# -- padding, whitespace ----------------------------------------------------------------------


def test_padded_json_and_spaces_inside_fragments() -> None:
    run = replay("padded.sse")
    assert run.events == [
        call(0, "toolu_01Spaces", '  {  "query" :  ', name="search"),
        call(0, "toolu_01Spaces", ' "two  spaces" , "limit":\t3 }  '),
    ]
    raw = '  {  "query" :   "two  spaces" , "limit":\t3 }  '
    arguments = {"query": "two  spaces", "limit": 3}
    assert finish(run.state) == output(
        [{"type": "tool_use", "id": "toolu_01Spaces", "name": "search", "input": arguments}],
        [0],
        tool_calls=[ToolCall("toolu_01Spaces", "search", arguments, raw)],
        stop_reason="tool_use",
        usage=Usage(input_tokens=12, output_tokens=33),
    )
    plain = replay("padded.sse", stream_tokens=False)
    assert plain.events == [call(0, "toolu_01Spaces", '{"query":"two  spaces","limit":3}', name="search")]


# -- usage --------------------------------------------------------------------------------


def test_message_delta_usage_is_cumulative_the_last_value_wins() -> None:
    result = finish(replay("usage_cumulative.sse").state)
    # message_start: input 25, cache write 7, cache read null; first message_delta: input 30,
    # cache read 100, output 10; second: output 42 (not 52).
    assert result.usage == Usage(
        input_tokens=30, output_tokens=42, cache_read_tokens=100, cache_write_tokens=7
    )
    assert result.usage.prompt_tokens == 137
    assert result.usage.total_tokens == 179
    assert result.stop_reason == "end_turn"  # the first message_delta's null does not count


# -- errors ---------------------------------------------------------------------------------


def test_error_event_mid_stream_raises_upstream_error() -> None:
    run = replay("error_mid_stream.sse", raises=True)
    assert run.events == [text(0, "Partial ans")]
    assert isinstance(run.error, UpstreamStreamError)
    assert (run.error.error_type, run.error.message, run.error.retryable) == (
        "overloaded_error",
        "Overloaded",
        True,
    )
    # What was streamed before the error is still there to keep.
    kept = snapshot_partial(run.state)
    assert kept.content == [{"type": "text", "text": "Partial ans"}]
    assert kept.partial_otids == {"otid-0"}
    assert kept.incomplete


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [
        ("overloaded_error", True),
        ("api_error", True),
        ("rate_limit_error", True),
        ("invalid_request_error", False),
        ("authentication_error", False),
    ],
)
def test_error_event_retryable_by_type(error_type: str, retryable: bool) -> None:
    state = new_stream(message_id="m", step_id="s", otid_prefix="o", stream_tokens=True)
    # Also as the very first event: an upstream error, not a protocol error.
    with pytest.raises(UpstreamStreamError) as info:
        feed(state, {"type": "error", "error": {"type": error_type, "message": "boom"}})
    assert (info.value.error_type, info.value.message, info.value.retryable) == (
        error_type,
        "boom",
        retryable,
    )


def test_event_before_message_start_is_a_protocol_error() -> None:
    run = replay("event_before_start.sse", raises=True)
    assert isinstance(run.error, StreamProtocolError)
    assert str(run.error) == "content_block_start event before message_start"


def test_delta_for_an_unknown_index_is_a_protocol_error() -> None:
    run = replay("unknown_index.sse", raises=True)
    assert run.events == [text(0, "Hi")]
    assert isinstance(run.error, StreamProtocolError)
    assert str(run.error) == "content_block_delta (text_delta) for unknown block index 3"


MESSAGE_START = {
    "type": "message_start",
    "message": {"id": "msg_x", "model": "m", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}},
}


def started(*raws: dict[str, Any]) -> StreamState:
    state = new_stream(message_id="m", step_id="s", otid_prefix="o", stream_tokens=True, now=lambda: NOW)
    for raw in (MESSAGE_START, *raws):
        feed(state, raw)
    return state


def block_start(index: int, block_type: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": {"type": block_type, **fields}}


def delta(index: int, delta_type: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": delta_type, **fields}}


TOOL = block_start(0, "tool_use", id="toolu_1", name="f", input={})
TEXT = block_start(0, "text", text="")
STOP = {"type": "content_block_stop", "index": 0}


@pytest.mark.parametrize(
    ("before", "raw", "message"),
    [
        ((), {"type": "ping"}, "'ping' event before message_start"),
        ((), {"type": "message_stop"}, "'message_stop' event before message_start"),
        ((), STOP, "content_block_stop event before message_start"),
        ((), delta(0, "text_delta", text="x"), "content_block_delta (text_delta) before message_start"),
        ((MESSAGE_START,), MESSAGE_START, "second message_start event"),
        (
            (MESSAGE_START, TOOL),
            delta(0, "text_delta", text="x"),
            "text_delta for block index 0, a tool_use block",
        ),
        (
            (MESSAGE_START, TEXT),
            delta(0, "thinking_delta", thinking="x"),
            "thinking_delta for block index 0, a text",
        ),
        (
            (MESSAGE_START, TEXT),
            delta(0, "signature_delta", signature="x"),
            "signature_delta for block index 0",
        ),
        (
            (MESSAGE_START, TEXT),
            delta(0, "input_json_delta", partial_json="{"),
            "input_json_delta for block index 0",
        ),
        ((MESSAGE_START, TEXT, STOP), delta(0, "text_delta", text="x"), "for stopped block index 0"),
        ((MESSAGE_START, TEXT, STOP), STOP, "content_block_stop for block index 0, already stopped"),
        ((MESSAGE_START, TEXT), TEXT, "content_block_start for block index 0, already started"),
        (
            (MESSAGE_START, TEXT),
            {"type": "content_block_stop", "index": 1},
            "content_block_stop for unknown block",
        ),
        ((MESSAGE_START, {"type": "message_stop"}), TEXT, "content_block_start event after message_stop"),
        (
            (MESSAGE_START, {"type": "message_stop"}),
            {"type": "message_stop"},
            "message_stop event after message_stop",
        ),
        ((MESSAGE_START,), {"type": "content_block_delta", "delta": {"type": "text_delta"}}, "malformed"),
        ((MESSAGE_START,), {"type": "content_block_start", "index": 0}, "malformed 'content_block_start'"),
        ((), {"type": "message_start"}, "malformed 'message_start' event"),
    ],
)
def test_protocol_errors(before: tuple[dict[str, Any], ...], raw: dict[str, Any], message: str) -> None:
    state = new_stream(message_id="m", step_id="s", otid_prefix="o", stream_tokens=True)
    for event in before:
        feed(state, event)
    with pytest.raises(StreamProtocolError, match=re.escape(message)):
        feed(state, raw)


def test_unknown_blocks_events_and_deltas_are_ignored() -> None:
    run = replay("server_tool.sse")
    assert run.events == [text(2, "It is sunny.")]
    result = finish(run.state)
    assert result.content == [{"type": "text", "text": "It is sunny."}]
    assert result.block_otids == ["otid-2"]
    assert result.tool_calls == []
    assert result.usage == Usage(input_tokens=2679, output_tokens=510)


def test_blank_text_blocks_are_left_out_of_the_content() -> None:
    state = started(TEXT, delta(0, "text_delta", text=""), delta(0, "text_delta", text=" \n"), STOP)
    assert finish(state).content == []


def test_thinking_that_never_got_its_signature_is_left_out() -> None:
    state = started(block_start(0, "thinking", thinking=""), delta(0, "thinking_delta", thinking="hm"), STOP)
    assert finish(state).content == []


# -- max_tokens ------------------------------------------------------------------------------


def test_max_tokens_drops_a_tool_call_with_truncated_arguments() -> None:
    run = replay("max_tokens_tool_truncated.sse")
    assert run.events == [
        text(0, "Writing the file."),
        call(1, "toolu_01Write", '{"path": "/tmp/re', name="write_file"),
    ]
    assert finish(run.state) == output(
        [{"type": "text", "text": "Writing the file."}],
        [0],
        stop_reason="max_tokens",
        usage=Usage(input_tokens=90, output_tokens=64),
        dropped=["toolu_01Write"],
    )


def test_max_tokens_drops_an_unstopped_tool_call_and_keeps_the_complete_one() -> None:
    result = finish(replay("max_tokens_tool_unstopped.sse").state)
    assert result == output(
        [{"type": "tool_use", "id": "toolu_01Done", "name": "get_time", "input": {"tz": "UTC"}}],
        [0],
        tool_calls=[ToolCall("toolu_01Done", "get_time", {"tz": "UTC"}, '{"tz": "UTC"}')],
        stop_reason="max_tokens",
        usage=Usage(input_tokens=90, output_tokens=64),
        dropped=["toolu_01Cut"],
    )


# -- snapshot_partial (a cancelled step) --------------------------------------------------------


def test_snapshot_mid_text_keeps_the_text_so_far_marked_partial() -> None:
    run = replay(cut("text.sse", '"text":"!\\nBye.', -4))  # cut inside the third text delta
    assert run.events == [text(0, "Hello"), text(0, ", wörld ☀")]
    assert snapshot_partial(run.state) == output(
        [{"type": "text", "text": "Hello, wörld ☀"}],
        [0],
        stop_reason=None,
        usage=Usage(input_tokens=25, output_tokens=1),
        incomplete=True,
        partial={0},
    )


def test_snapshot_mid_thinking_without_signature_keeps_nothing() -> None:
    run = replay(cut("thinking.sse", '"thinking":" That is 4."}}\n\n'))
    assert run.events == [reasoning(0, "The user asks 2+2."), reasoning(0, " That is 4.")]
    result = snapshot_partial(run.state)
    assert (result.content, result.block_otids, result.partial_otids) == ([], [], set())


def test_snapshot_after_the_signature_keeps_the_thinking_and_partial_text() -> None:
    run = replay(cut("thinking.sse", '"text":"2 + 2 = 4."}}\n\n'))
    result = snapshot_partial(run.state)
    assert result.content == [
        {"type": "thinking", "thinking": "The user asks 2+2. That is 4.", "signature": SIGNATURE},
        {"type": "text", "text": "2 + 2 = 4."},
    ]
    assert result.partial_otids == {"otid-1"}


def test_snapshot_mid_tool_arguments_drops_the_call() -> None:
    run = replay(cut("tool_use.sse", '"partial_json":"ncisco', 3))
    result = snapshot_partial(run.state)
    assert result == output(
        [{"type": "text", "text": "Let me check the weather."}],
        [0],
        stop_reason=None,
        usage=Usage(input_tokens=472, output_tokens=2),
        incomplete=True,
        dropped=["toolu_01Weather"],
    )


def test_snapshot_after_a_complete_tool_call_keeps_it() -> None:
    run = replay(cut("tool_use.sse", '{"type":"content_block_stop","index":1}\n\n'))
    result = snapshot_partial(run.state)
    assert result.tool_calls == [
        ToolCall(
            "toolu_01Weather",
            "get_weather",
            {"location": "San Francisco, CA", "unit": "fahrenheit"},
            WEATHER_ARGS,
        )
    ]
    assert [block["type"] for block in result.content] == ["text", "tool_use"]
    assert result.incomplete and result.dropped_tool_call_ids == [] and result.partial_otids == set()


def test_snapshot_between_parallel_calls_keeps_the_complete_ones() -> None:
    run = replay(cut("parallel_tools.sse", '"partial_json":"{\\"city\\": "}}\n\n'))
    result = snapshot_partial(run.state)
    assert result.tool_calls == PARALLEL_CALLS[:1]
    assert result.content == PARALLEL_CONTENT[:1]
    assert result.dropped_tool_call_ids == ["toolu_01B"]


def test_snapshot_mid_redacted_thinking_keeps_it_whole() -> None:
    run = replay(cut("redacted_thinking.sse", REDACTED, 5))
    assert snapshot_partial(run.state).content[-1] == {"type": "redacted_thinking", "data": REDACTED}


# -- properties over every transcript ---------------------------------------------------------


@pytest.mark.parametrize("name", COMPLETE)
def test_output_does_not_depend_on_stream_tokens(name: str) -> None:
    assert finish(replay(name).state) == finish(replay(name, stream_tokens=False).state)


def _payload(event: dict[str, Any]) -> str:
    """The text an event carries (a delta when streaming, the whole block otherwise)."""
    kind = event["message_type"]
    if kind == "assistant_message":
        return str(event["content"])
    if kind == "reasoning_message":
        return str(event["reasoning"])
    if kind == "hidden_reasoning_message":
        return str(event["hidden_reasoning"])
    return str(event["tool_call"]["arguments"])


@pytest.mark.parametrize("name", COMPLETE)
def test_streamed_deltas_add_up_to_the_unstreamed_events(name: str) -> None:
    def joined(events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for e in events:
            kind = e["message_type"]
            piece = _payload(e)
            out[(e["otid"], kind)] = out.get((e["otid"], kind), "") + piece
        return out

    streamed, plain = replay(name), replay(name, stream_tokens=False)
    calls = {c.id: c for c in finish(plain.state).tool_calls}
    expected = joined(plain.events)
    for e in plain.events:  # unstreamed tool events carry compact JSON, streamed ones the raw
        if e["message_type"] == "tool_call_message" and e["tool_call"]["tool_call_id"] in calls:
            expected[(e["otid"], "tool_call_message")] = calls[e["tool_call"]["tool_call_id"]].arguments
    got = joined(streamed.events)
    for key in set(got) - set(expected):  # dropped (truncated) calls are streamed, then dropped
        assert key[1] == "tool_call_message"
        del got[key]
    assert got == expected


@pytest.mark.parametrize("name", COMPLETE)
def test_every_block_keeps_one_otid_and_the_first_tool_event_names_the_call(name: str) -> None:
    run = replay(name)
    named: set[str] = set()
    for e in run.events:
        assert e["id"] == MESSAGE_ID and e["step_id"] == STEP_ID and e["otid"].startswith("otid-")
        if e["message_type"] == "tool_call_message":
            call_id = e["tool_call"]["tool_call_id"]
            assert ("name" in e["tool_call"]) == (call_id not in named)
            assert e["tool_call"]["arguments"]
            named.add(call_id)
    result = finish(run.state)
    assert not result.incomplete
    assert len(result.content) == len(result.block_otids)
    for block in result.content:  # Anthropic request format only
        assert "partial" not in block


def test_all_fixtures_are_exercised() -> None:
    used = {*COMPLETE, "error_mid_stream.sse", "event_before_start.sse", "unknown_index.sse"}
    assert {p.name for p in FIXTURES.glob("*.sse")} == used
