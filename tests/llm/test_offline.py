"""The offline model, driven only through the official `anthropic` SDK over real HTTP.

Each test starts the app under a real uvicorn server on a free port and talks to it with
`anthropic.AsyncAnthropic(base_url=..., api_key="test", max_retries=0)`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
import uvicorn
from anthropic.types import Message
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from gateway.llm.offline import (
    DEFAULT_KEY,
    MAX_BODY_BYTES,
    OfflineStats,
    create_app,
    seal_redacted,
    sign_thinking,
    verify_redacted,
    verify_thinking,
)

MODEL = "claude-offline-test"
GREETING = "This is an automated test message. Reply with the message 'Teamwork makes the dream work'."
ROLL_16 = (
    "This is an automated test message. Call the roll_dice tool with 16 sides and reply back to me "
    "with the outcome."
)
PARALLEL = "This is an automated test message. Please call the roll_dice tool three times in parallel."
ROLL_DICE: dict[str, Any] = {
    "name": "roll_dice",
    "description": "Returns a random number between 1 and num_sides.",
    "input_schema": {
        "type": "object",
        "properties": {"num_sides": {"type": "integer", "description": "The number of sides on the die."}},
        "required": ["num_sides"],
    },
}
GET_WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
        },
        "required": ["city", "unit", "detailed"],
    },
}
THINKING: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}
TOOL_ID_RE = re.compile(r"^toolu_[A-Za-z0-9_-]{24}$")


@asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Offline:
    stats: OfflineStats
    client: anthropic.AsyncAnthropic
    url: str


@asynccontextmanager
async def offline_model(tokens_per_second: float = 0.0, key: bytes = DEFAULT_KEY) -> AsyncIterator[Offline]:
    app = create_app(tokens_per_second=tokens_per_second, signing_key=key)
    async with serve(app) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="test", max_retries=0)
        try:
            yield Offline(app.state.stats, client, url)
        finally:
            await client.close()


@pytest.fixture
async def offline() -> AsyncIterator[Offline]:
    async with offline_model() as model:
        yield model


@pytest.fixture
def client(offline: Offline) -> anthropic.AsyncAnthropic:
    return offline.client


async def collect(client: anthropic.AsyncAnthropic, **params: Any) -> tuple[list[Any], Message]:
    """Raw events of `create(stream=True)` and the message accumulated with `messages.stream`."""
    stream = await client.messages.create(stream=True, **params)
    events = [event async for event in stream]
    async with client.messages.stream(**params) as streaming:
        final = await streaming.get_final_message()
    return events, final


def text_of(message: Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def as_params(message: Message) -> list[dict[str, Any]]:
    """The message's content as it is passed back in the next request, unchanged."""
    blocks = []
    for block in message.content:
        if block.type == "text":
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "thinking":
            blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif block.type == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": block.data})
        elif block.type == "tool_use":
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return blocks


async def bad_request(client: anthropic.AsyncAnthropic, body: dict[str, Any]) -> anthropic.BadRequestError:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.post("/v1/messages", cast_to=Message, body=body)
    return caught.value


def body(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    request.update(overrides)
    return request


# ---------------------------------------------------------------- text replies


async def test_greeting_non_streaming(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": GREETING}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Teamwork makes the dream work"
    assert message.stop_reason == "end_turn"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == 5


async def test_greeting_streaming_both_ways(client: anthropic.AsyncAnthropic) -> None:
    events, final = await collect(
        client, model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": GREETING}]
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start"
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(deltas) == 5
    assert "".join(deltas) == "Teamwork makes the dream work"
    start = events[0].message
    assert start.content == [] and start.stop_reason is None and start.usage.input_tokens > 0
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == 5
    assert text_of(final) == "Teamwork makes the dream work"
    assert final.stop_reason == "end_turn"


async def test_same_request_same_reply_and_friendly_echo(client: anthropic.AsyncAnthropic) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "How are the penguins doing today?"}],
    }
    first = await client.messages.create(**params)
    second = await client.messages.create(**params)
    assert text_of(first) == text_of(second)
    assert first.id == second.id
    assert "penguins" in text_of(first)


async def test_consecutive_same_role_messages_are_merged(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=[
            {"role": "user", "content": "First part."},
            {"role": "user", "content": "Say 'merged fine'."},
        ],
    )
    assert text_of(message) == "merged fine"


async def test_long_reply_counts_and_words(client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.create(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "Please count to 12."}]
    )
    assert text_of(counted) == "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12."
    assert counted.usage.output_tokens == 12
    wordy = await client.messages.create(
        model=MODEL, max_tokens=4096, messages=[{"role": "user", "content": "write 300 words about rivers"}]
    )
    assert len(text_of(wordy).split()) == 300
    assert wordy.usage.output_tokens == 300


async def test_count_tokens(client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "x" * 400}]
    )
    assert counted.input_tokens == 101


async def test_works_mounted_under_a_prefix() -> None:
    outer = Starlette(routes=[Mount("/offline", app=create_app())])
    async with serve(outer) as url:
        client = anthropic.AsyncAnthropic(base_url=f"{url}/offline", api_key="test", max_retries=0)
        try:
            async with client.messages.stream(
                model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": GREETING}]
            ) as stream:
                final = await stream.get_final_message()
            with pytest.raises(anthropic.NotFoundError) as caught:
                await client.get("/v1/nothing-here", cast_to=Message)
        finally:
            await client.close()
    assert text_of(final) == "Teamwork makes the dream work"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Not Found: GET /offline/v1/nothing-here"},
        "request_id": "req_offline_routing",
    }


# ---------------------------------------------------------------- tools


async def test_roll_dice_with_16_sides(client: anthropic.AsyncAnthropic) -> None:
    events, final = await collect(
        client,
        model=MODEL,
        max_tokens=1024,
        tools=[ROLL_DICE],
        messages=[{"role": "user", "content": ROLL_16}],
    )
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "I'll call roll_dice."
    tool = final.content[1]
    assert tool.name == "roll_dice" and tool.input == {"num_sides": 16}
    assert TOOL_ID_RE.match(tool.id)
    assert final.stop_reason == "tool_use"
    fragments = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.index == 1]
    assert len(fragments) >= 2
    assert "".join(fragments) == '{"num_sides": 16}'
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert starts[1].type == "tool_use" and starts[1].input == {} and starts[1].id == tool.id
    non_streaming = await client.messages.create(
        model=MODEL, max_tokens=1024, tools=[ROLL_DICE], messages=[{"role": "user", "content": ROLL_16}]
    )
    assert non_streaming.content[1].input == {"num_sides": 16}
    assert non_streaming.content[1].id == tool.id


async def test_three_parallel_calls_have_distinct_ids(client: anthropic.AsyncAnthropic) -> None:
    _, final = await collect(
        client,
        model=MODEL,
        max_tokens=1024,
        tools=[ROLL_DICE],
        messages=[{"role": "user", "content": PARALLEL}],
    )
    calls = [b for b in final.content if b.type == "tool_use"]
    assert len(calls) == 3
    assert len({c.id for c in calls}) == 3
    assert all(TOOL_ID_RE.match(c.id) for c in calls)
    assert all(c.name == "roll_dice" and 1 <= c.input["num_sides"] <= 6 for c in calls)
    assert final.content[0].type == "text"


async def test_tool_results_are_reported(client: anthropic.AsyncAnthropic) -> None:
    first = await client.messages.create(
        model=MODEL, max_tokens=1024, tools=[ROLL_DICE], messages=[{"role": "user", "content": PARALLEL}]
    )
    calls = [b for b in first.content if b.type == "tool_use"]
    results = [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "3"},
        {"type": "tool_result", "tool_use_id": calls[1].id, "content": [{"type": "text", "text": "5"}]},
        {
            "type": "tool_result",
            "tool_use_id": calls[2].id,
            "content": "Tool call denied by the user",
            "is_error": True,
        },
    ]
    history = [
        {"role": "user", "content": PARALLEL},
        {"role": "assistant", "content": as_params(first)},
        {"role": "user", "content": results},
    ]
    _, final = await collect(client, model=MODEL, max_tokens=1024, tools=[ROLL_DICE], messages=history)
    assert text_of(final) == "Results: 3, 5, denied."
    assert final.stop_reason == "end_turn"


async def test_single_tool_result(client: anthropic.AsyncAnthropic) -> None:
    first = await client.messages.create(
        model=MODEL, max_tokens=1024, tools=[ROLL_DICE], messages=[{"role": "user", "content": ROLL_16}]
    )
    call = first.content[1]
    history = [
        {"role": "user", "content": ROLL_16},
        {"role": "assistant", "content": as_params(first)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "7"}]},
    ]
    reply = await client.messages.create(model=MODEL, max_tokens=1024, tools=[ROLL_DICE], messages=history)
    assert text_of(reply) == "The tool returned 7."


async def test_two_named_tools_and_schema_filling(client: anthropic.AsyncAnthropic) -> None:
    prompt = "Call get_weather for 'Paris' in fahrenheit and roll_dice with 20 sides."
    message = await client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[ROLL_DICE, GET_WEATHER],
        messages=[{"role": "user", "content": prompt}],
    )
    calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert calls == [
        ("get_weather", {"city": "Paris", "unit": "fahrenheit", "detailed": False}),
        ("roll_dice", {"num_sides": 20}),
    ]
    assert text_of(message) == "I'll call get_weather and roll_dice."


async def test_tool_choice_rules(client: anthropic.AsyncAnthropic) -> None:
    chat = [{"role": "user", "content": "Just chatting about the weather."}]
    auto = await client.messages.create(model=MODEL, max_tokens=512, tools=[ROLL_DICE], messages=chat)
    assert [b.type for b in auto.content] == ["text"]
    forced = await client.messages.create(
        model=MODEL,
        max_tokens=512,
        tools=[ROLL_DICE, GET_WEATHER],
        tool_choice={"type": "tool", "name": "roll_dice"},
        messages=chat,
    )
    assert [b.type for b in forced.content] == ["tool_use"]
    assert forced.content[0].input == {"num_sides": 6}
    single = await client.messages.create(
        model=MODEL,
        max_tokens=512,
        tools=[ROLL_DICE],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": PARALLEL}],
    )
    assert sum(b.type == "tool_use" for b in single.content) == 1
    none = await client.messages.create(
        model=MODEL,
        max_tokens=512,
        tools=[ROLL_DICE],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": PARALLEL}],
    )
    assert all(b.type == "text" for b in none.content)


# ---------------------------------------------------------------- thinking


async def test_thinking_signed_and_passed_back(client: anthropic.AsyncAnthropic) -> None:
    events, final = await collect(
        client,
        model=MODEL,
        max_tokens=4096,
        thinking=THINKING,
        tools=[ROLL_DICE],
        messages=[{"role": "user", "content": ROLL_16}],
    )
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    thinking = final.content[0]
    assert thinking.thinking and verify_thinking(thinking.thinking, thinking.signature, DEFAULT_KEY)
    block_zero = [e.delta.type for e in events if e.type == "content_block_delta" and e.index == 0]
    assert block_zero[-1] == "signature_delta"
    assert set(block_zero[:-1]) == {"thinking_delta"} and len(block_zero) > 2
    call = final.content[2]
    history = [
        {"role": "user", "content": ROLL_16},
        {"role": "assistant", "content": as_params(final)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "11"}]},
    ]
    reply = await client.messages.create(
        model=MODEL, max_tokens=4096, thinking=THINKING, tools=[ROLL_DICE], messages=history
    )
    assert reply.content[0].type == "thinking"
    assert text_of(reply) == "The tool returned 11."

    tampered = as_params(final)
    tampered[0]["signature"] = sign_thinking(thinking.thinking + " (edited)")
    history[1] = {"role": "assistant", "content": tampered}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL, max_tokens=4096, thinking=THINKING, tools=[ROLL_DICE], messages=history
        )
    assert "messages.1.content.0: Invalid `signature` in `thinking` block" in str(caught.value)
    assert caught.value.body["error"]["type"] == "invalid_request_error"

    edited = as_params(final)
    edited[0]["thinking"] = thinking.thinking.upper()
    history[1] = {"role": "assistant", "content": edited}
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        await client.messages.create(
            model=MODEL, max_tokens=4096, thinking=THINKING, tools=[ROLL_DICE], messages=history
        )

    dropped = as_params(final)[1:]
    history[1] = {"role": "assistant", "content": dropped}
    with pytest.raises(anthropic.BadRequestError, match="Expected `thinking` or `redacted_thinking`"):
        await client.messages.create(
            model=MODEL, max_tokens=4096, thinking=THINKING, tools=[ROLL_DICE], messages=history
        )


async def test_thinking_signature_depends_on_the_key() -> None:
    async with offline_model(key=b"another key") as model:
        message = await model.client.messages.create(
            model=MODEL, max_tokens=2048, thinking=THINKING, messages=[{"role": "user", "content": GREETING}]
        )
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert verify_thinking(thinking.thinking, thinking.signature, b"another key")
    assert not verify_thinking(thinking.thinking, thinking.signature, DEFAULT_KEY)
    assert text_of(message) == "Teamwork makes the dream work"


async def test_redacted_thinking_round_trip(client: anthropic.AsyncAnthropic) -> None:
    prompt = "[redacted] Call roll_dice with 8 sides."
    _, final = await collect(
        client,
        model=MODEL,
        max_tokens=4096,
        thinking=THINKING,
        tools=[ROLL_DICE],
        messages=[{"role": "user", "content": prompt}],
    )
    assert final.content[0].type == "redacted_thinking"
    assert verify_redacted(final.content[0].data, DEFAULT_KEY)
    call = final.content[-1]
    assert call.type == "tool_use" and call.input == {"num_sides": 8}
    history = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": as_params(final)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "2"}]},
    ]
    reply = await client.messages.create(
        model=MODEL, max_tokens=4096, thinking=THINKING, tools=[ROLL_DICE], messages=history
    )
    assert text_of(reply) == "The tool returned 2."
    forged = as_params(final)
    forged[0]["data"] = seal_redacted(b"forged", b"wrong key")
    history[1] = {"role": "assistant", "content": forged}
    with pytest.raises(anthropic.BadRequestError, match="Invalid `data` in `redacted_thinking` block"):
        await client.messages.create(
            model=MODEL, max_tokens=4096, thinking=THINKING, tools=[ROLL_DICE], messages=history
        )


# ---------------------------------------------------------------- validation

TOOL_USE = {"type": "tool_use", "id": "toolu_aaaaaaaaaaaaaaaaaaaaaaaa", "name": "roll_dice", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_aaaaaaaaaaaaaaaaaaaaaaaa", "content": "4"}
ASK = {"role": "user", "content": "roll"}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {"model": None}, "model: Field required"),
    ("model not a string", {"model": 42}, "model: Input should be a valid model name"),
    ("empty model", {"model": ""}, "model: Input should be a valid model name"),
    ("no max_tokens", {"max_tokens": None}, "max_tokens: Field required"),
    ("zero max_tokens", {"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ("string max_tokens", {"max_tokens": "100"}, "max_tokens: Input should be a valid integer"),
    ("bool max_tokens", {"max_tokens": True}, "max_tokens: Input should be a valid integer"),
    ("no messages", {"messages": None}, "messages: Field required"),
    ("empty messages", {"messages": []}, "messages: at least one message is required"),
    ("messages not a list", {"messages": {"role": "user"}}, "messages: Input should be a valid list"),
    (
        "system role",
        {"messages": [{"role": "system", "content": "hi"}]},
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        "assistant first",
        {"messages": [{"role": "assistant", "content": "hi"}, ASK]},
        'messages: first message must use the "user" role',
    ),
    (
        "empty text block",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        "messages.0.content.0.text: text content blocks must be non-empty",
    ),
    (
        "whitespace text block",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}]}]},
        "text content blocks must contain non-whitespace text",
    ),
    (
        "empty user content",
        {"messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content",
    ),
    (
        "unknown block type",
        {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
        "messages.0.content.0.type: Input tag 'video' does not match any of the expected tags",
    ),
    (
        "tool_use in a user message",
        {"messages": [{"role": "user", "content": [TOOL_USE]}]},
        "`tool_use` blocks are not allowed in `user` messages",
    ),
    (
        "tool_use without tool_result",
        {
            "messages": [
                ASK,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": "well?"},
            ]
        },
        "messages.1: tool_use ids were found without tool_result blocks immediately after: "
        "toolu_aaaaaaaaaaaaaaaaaaaaaaaa",
    ),
    (
        "tool_use as the last message",
        {"messages": [ASK, {"role": "assistant", "content": [TOOL_USE]}]},
        "tool_use ids were found without tool_result blocks immediately after",
    ),
    (
        "tool_result without tool_use",
        {"messages": [ASK, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [RESULT]}]},
        "messages.2.content.0: unexpected tool_use_id found in tool_result blocks: "
        "toolu_aaaaaaaaaaaaaaaaaaaaaaaa",
    ),
    (
        "tool_result two turns late",
        {
            "messages": [
                ASK,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [RESULT]},
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": [RESULT]},
            ]
        },
        "messages.4.content.0: unexpected tool_use_id found in tool_result blocks",
    ),
    (
        "duplicate tool_use ids",
        {
            "messages": [
                ASK,
                {"role": "assistant", "content": [TOOL_USE, TOOL_USE]},
                {"role": "user", "content": [RESULT]},
            ]
        },
        "messages.1.content.1: tool_use ids must be unique",
    ),
    (
        "thinking without signature",
        {
            "messages": [
                ASK,
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "a"}],
                },
                ASK,
            ]
        },
        "messages.1.content.0.signature: Field required",
    ),
    (
        "thinking with a forged signature",
        {
            "messages": [
                ASK,
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": "hm", "signature": "c2lnbmF0dXJl"}],
                },
                ASK,
            ]
        },
        "messages.1.content.0: Invalid `signature` in `thinking` block",
    ),
    (
        "redacted thinking with bad data",
        {
            "messages": [
                ASK,
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "bm90IHNpZ25lZA=="}]},
                ASK,
            ]
        },
        "messages.1.content.0: Invalid `data` in `redacted_thinking` block",
    ),
    (
        "budget under 1024",
        {"thinking": {"type": "enabled", "budget_tokens": 1000}},
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
    ),
    (
        "budget not under max_tokens",
        {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 2048}},
        "`max_tokens` must be greater than `thinking.budget_tokens`",
    ),
    (
        "input_schema not an object schema",
        {"tools": [{"name": "t", "input_schema": {"type": "string"}}]},
        "tools.0.custom.input_schema.type: Input should be 'object'",
    ),
    ("input_schema missing", {"tools": [{"name": "t"}]}, "tools.0.custom.input_schema: Field required"),
    (
        "bad tool name",
        {"tools": [{"name": "has space", "input_schema": {"type": "object"}}]},
        "tools.0.custom.name: String should match pattern",
    ),
    ("duplicate tool names", {"tools": [ROLL_DICE, ROLL_DICE]}, "tools: Tool names must be unique."),
    (
        "tool_choice names an unknown tool",
        {"tools": [ROLL_DICE], "tool_choice": {"type": "tool", "name": "fly"}},
        "tool_choice.tool.name: Tool 'fly' not found in the provided tools",
    ),
    (
        "thinking with forced tool use",
        {"tools": [ROLL_DICE], "tool_choice": {"type": "any"}, "thinking": THINKING},
        "Thinking may not be enabled when tool_choice forces tool use.",
    ),
    (
        "thinking on, last tool_use turn without thinking first",
        {
            "thinking": THINKING,
            "tools": [ROLL_DICE],
            "messages": [
                ASK,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [RESULT]},
            ],
        },
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`",
    ),
    ("unknown top-level key", {"frobnicate": 1}, "frobnicate: Extra inputs are not permitted"),
    ("stream not a bool", {"stream": "yes"}, "stream: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("case", "overrides", "message"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_requests_are_rejected(
    offline: Offline, case: str, overrides: dict[str, Any], message: str
) -> None:
    request = {k: v for k, v in body(**overrides).items() if v is not None}
    error = await bad_request(offline.client, request)
    assert error.status_code == 400
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == "invalid_request_error"
    assert message in error.body["error"]["message"], case
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert offline.stats.rejected == 1
    assert offline.stats.completed == 0


async def test_valid_tool_history_is_accepted(client: anthropic.AsyncAnthropic) -> None:
    history = [ASK, {"role": "assistant", "content": [TOOL_USE]}, {"role": "user", "content": [RESULT]}]
    message = await client.messages.create(model=MODEL, max_tokens=256, tools=[ROLL_DICE], messages=history)
    assert text_of(message) == "The tool returned 4."


async def test_unknown_path_and_wrong_method(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.post("/v1/completions-of-doom", cast_to=Message, body=body())
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.APIStatusError) as wrong:
        await client.get("/v1/messages", cast_to=Message)
    assert wrong.value.status_code == 405
    assert wrong.value.body["type"] == "error"


async def test_body_over_32_mb_is_rejected(offline: Offline) -> None:
    huge = "x" * (MAX_BODY_BYTES + 1024)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await offline.client.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": huge}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"
    follow_up = await offline.client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": GREETING}]
    )
    assert text_of(follow_up) == "Teamwork makes the dream work"


# ---------------------------------------------------------------- test hooks


async def test_overloaded_error_mid_stream(offline: Offline) -> None:
    received: list[str] = []
    stream = await offline.client.messages.create(
        model=MODEL,
        max_tokens=1024,
        stream=True,
        messages=[{"role": "user", "content": "write 50 words please [[error:overloaded]]"}],
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for event in stream:
            if event.type == "content_block_delta":
                received.append(event.delta.text)
    assert len(received) == 3
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async with offline.client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "hi [[error:overloaded]]"}]
        ) as streaming:
            await streaming.get_final_message()
    with pytest.raises(anthropic.OverloadedError):
        await offline.client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "hi [[error:overloaded]]"}]
        )
    assert offline.stats.errors == 3


async def test_immediate_http_error(offline: Offline) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        await offline.client.messages.create(
            model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "hi [[http:529]]"}]
        )
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError):
        await offline.client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi [[http:429]]"}]
        )


async def test_max_tokens_cuts_text(client: anthropic.AsyncAnthropic) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": GREETING}],
    }
    events, final = await collect(client, **params)
    assert text_of(final) == "Teamwork makes the"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3
    assert [e.type for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    plain = await client.messages.create(**params)
    assert text_of(plain) == "Teamwork makes the" and plain.stop_reason == "max_tokens"


async def test_max_tokens_cuts_tool_arguments(client: anthropic.AsyncAnthropic) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "tools": [ROLL_DICE],
        "messages": [{"role": "user", "content": ROLL_16 + " [[max_tokens]]"}],
    }
    events, final = await collect(client, **params)
    assert final.stop_reason == "max_tokens"
    assert final.content[-1].type == "tool_use"
    fragments = "".join(
        e.delta.partial_json for e in events if e.type == "content_block_delta" and e.index == 1
    )
    assert fragments and fragments != '{"num_sides": 16}'
    assert '{"num_sides": 16}'.startswith(fragments)
    assert final.content[-1].input != {"num_sides": 16}
    plain = await client.messages.create(**params)
    assert plain.stop_reason == "max_tokens"
    assert plain.content[-1].type == "tool_use" and plain.content[-1].input != {"num_sides": 16}


async def test_max_tokens_hook_cuts_the_reply_not_the_thinking(client: anthropic.AsyncAnthropic) -> None:
    _, final = await collect(
        client,
        model=MODEL,
        max_tokens=2048,
        thinking=THINKING,
        messages=[{"role": "user", "content": GREETING + " [[max_tokens]]"}],
    )
    assert final.stop_reason == "max_tokens"
    thinking, text = final.content
    assert thinking.type == "thinking" and verify_thinking(thinking.thinking, thinking.signature)
    assert text.type == "text" and text.text == "Teamwork makes"


# ---------------------------------------------------------------- pacing, timestamps, disconnects


async def test_pacing_slows_the_stream() -> None:
    async with offline_model(tokens_per_second=200) as model:
        started = time.perf_counter()
        async with model.client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "write 20 words"}]
        ) as stream:
            final = await stream.get_final_message()
        elapsed = time.perf_counter() - started
    assert final.usage.output_tokens == 20
    assert elapsed >= 0.08


async def test_per_request_pacing_override(client: anthropic.AsyncAnthropic) -> None:
    started = time.perf_counter()
    message = await client.messages.create(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "write 10 words [[tps:100]]"}]
    )
    assert time.perf_counter() - started >= 0.08
    assert message.usage.output_tokens == 10


async def test_every_delta_carries_a_send_timestamp(client: anthropic.AsyncAnthropic) -> None:
    before = time.time_ns()
    async with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=1024, stream=True, messages=[{"role": "user", "content": "count to 40"}]
    ) as response:
        events = [sse async for sse in anthropic.AsyncStream.raw_events(response.http_response)]
    after = time.time_ns()
    deltas = [sse for sse in events if sse.event == "content_block_delta"]
    assert len(deltas) == 40
    stamps = []
    for sse in deltas:
        assert sse.raw[0].startswith(": t="), sse.raw
        stamps.append(int(sse.raw[0][4:]))
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after
    others = [sse for sse in events if sse.event != "content_block_delta"]
    assert all(not sse.raw[0].startswith(":") for sse in others)
    assert any(sse.event == "ping" for sse in others)


async def wait_for(predicate: Any, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("tokens_per_second", [0.0, 50.0])
async def test_client_disconnect_is_seen(tokens_per_second: float) -> None:
    async with offline_model(tokens_per_second=tokens_per_second) as model:
        stream = await model.client.messages.create(
            model=MODEL,
            max_tokens=5_000_000,
            stream=True,
            messages=[{"role": "user", "content": "write 5000000 words"}],
        )
        seen = 0
        async for event in stream:
            if event.type == "content_block_delta":
                seen += 1
                if seen == 5:
                    break
        assert model.stats.active_streams == 1
        closed_at = time.monotonic()
        await stream.close()
        assert await wait_for(lambda: model.stats.disconnects == 1)
        noticed = time.monotonic() - closed_at
        assert model.stats.active_streams == 0
        assert model.stats.completed == 0
        assert model.stats.output_tokens < 5_000_000
    assert noticed < 1.0


async def test_stats_count_completed_requests(offline: Offline) -> None:
    await offline.client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    await collect(
        offline.client, model=MODEL, max_tokens=64, messages=[{"role": "user", "content": GREETING}]
    )
    assert offline.stats.snapshot() == {
        "requests": 3,
        "active_streams": 0,
        "completed": 3,
        "disconnects": 0,
        "rejected": 0,
        "errors": 0,
        "output_tokens": offline.stats.output_tokens,
        "disconnect_times": [],
    }
    assert offline.stats.output_tokens > 10


# ---------------------------------------------------------------- standalone


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_standalone_main_serves_the_sdk() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway.llm.offline", "--port", str(port), "--tokens-per-second", "1000"],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key="test", max_retries=0)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                message = await client.messages.create(
                    model=MODEL, max_tokens=64, messages=[{"role": "user", "content": GREETING}]
                )
                break
            except anthropic.APIConnectionError:
                assert proc.returncode is None, "the offline model exited"
                assert time.monotonic() < deadline, "the offline model did not start"
                await asyncio.sleep(0.1)
    finally:
        await client.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert text_of(message) == "Teamwork makes the dream work"


async def test_stats_endpoint_reports_disconnect_times() -> None:
    import httpx2

    from gateway.llm.offline import create_app

    app = create_app()
    app.state.stats.disconnected()
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://offline") as client:
        r = await client.get("/v1/stats")
    assert r.status_code == 200
    data = r.json()
    assert data["disconnects"] == 1 and len(data["disconnect_times"]) == 1 and data["disconnect_times"][0] > 0
