"""decode_command: every command decodes; every bad input gets the right code and field."""

from __future__ import annotations

from typing import Any, get_args

import orjson
import pytest
from pydantic import ValidationError

from protocol import (
    COMMAND_MODELS,
    COMMAND_TYPES,
    ApprovalRespond,
    CancelMode,
    ErrorCode,
    Hello,
    IfBusy,
    ProtocolError,
    RunCancel,
    RunStart,
    RunSubscribe,
    decode_command,
)
from protocol.commands import AnyCommand
from protocol.limits import MAX_COMMAND_ID_LENGTH, MAX_REPORTED_ERRORS, MAX_STEPS_CAP

from .samples import commands

VALID = [(command_type, frame) for command_type, frames in commands().items() for frame in frames]


@pytest.mark.parametrize(("command_type", "frame"), VALID, ids=[f["id"] for _, f in VALID])
@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_every_command_decodes(command_type: str, frame: dict[str, Any], as_bytes: bool) -> None:
    data = orjson.dumps(frame)
    command = decode_command(data if as_bytes else data.decode())
    assert type(command) is COMMAND_MODELS[command_type]
    assert command.type == command_type
    assert command.id == frame["id"]
    # Every field the client sent comes back as sent (defaults fill the rest).
    assert command.model_dump(mode="json", exclude_unset=True) == frame


def test_samples_cover_every_command_type() -> None:
    assert set(commands()) == set(COMMAND_TYPES)


def test_run_start_defaults() -> None:
    command = decode_command(orjson.dumps(commands()["run.start"][0]))
    assert isinstance(command, RunStart)
    assert command.stream_tokens is True
    assert command.max_steps is None
    assert command.idempotency_key is None
    assert command.if_busy is IfBusy.REJECT
    assert command.messages[0].otid is None


def test_run_start_full() -> None:
    command = decode_command(orjson.dumps(commands()["run.start"][1]))
    assert isinstance(command, RunStart)
    assert command.if_busy is IfBusy.QUEUE
    assert command.max_steps == 10
    assert command.messages[0].otid == "otid-1"
    parts = command.messages[1].content
    assert isinstance(parts, list) and parts[0].text == "and another"


def test_other_defaults() -> None:
    subscribe = decode_command(b'{"type": "run.subscribe", "id": "1", "run_id": "r"}')
    assert isinstance(subscribe, RunSubscribe) and subscribe.after == 0 and subscribe.epoch is None
    cancel = decode_command(b'{"type": "run.cancel", "id": "1", "run_id": "r"}')
    assert isinstance(cancel, RunCancel) and cancel.mode is CancelMode.IMMEDIATE
    hello = decode_command(b'{"type": "hello", "id": "1"}')
    assert isinstance(hello, Hello) and hello.token is None and hello.client is None


def test_unknown_fields_are_ignored_everywhere() -> None:
    frame = commands()["approval.respond"][1]
    frame["future_field"] = {"anything": [1, 2]}
    frame["decisions"][0]["confidence"] = 0.9
    command = decode_command(orjson.dumps(frame))
    assert isinstance(command, ApprovalRespond)
    assert "future_field" not in command.model_dump()
    assert "confidence" not in command.decisions[0].model_dump()
    start = commands()["run.start"][1]
    start["messages"][1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    start["messages"][0]["name"] = "bob"
    assert isinstance(decode_command(orjson.dumps(start)), RunStart)


def test_commands_are_frozen() -> None:
    command = decode_command(b'{"type": "ping", "id": "1"}')
    with pytest.raises(ValidationError):
        command.id = "2"  # type: ignore[misc]


def test_longest_id_is_accepted() -> None:
    command_id = "x" * MAX_COMMAND_ID_LENGTH
    assert decode_command(orjson.dumps({"type": "ping", "id": command_id})).id == command_id


def test_max_steps_cap_is_accepted() -> None:
    frame = commands()["run.start"][0] | {"max_steps": MAX_STEPS_CAP}
    command = decode_command(orjson.dumps(frame))
    assert isinstance(command, RunStart) and command.max_steps == MAX_STEPS_CAP


def test_command_types_drift_guard() -> None:
    """COMMAND_TYPES, COMMAND_MODELS and the Command union list the same commands."""
    union_types = [model.model_fields["type"].annotation for model in get_args(AnyCommand)]
    assert [get_args(literal)[0] for literal in union_types] == list(COMMAND_TYPES)
    assert list(COMMAND_MODELS) == list(COMMAND_TYPES)
    assert all(
        COMMAND_MODELS[name] is model for name, model in zip(COMMAND_TYPES, get_args(AnyCommand), strict=True)
    )


# -- bad input -------------------------------------------------------------------------------


def decode_error(data: str | bytes | dict[str, Any]) -> ProtocolError:
    """Decode ``data`` (a dict is encoded first), expecting a ProtocolError."""
    if isinstance(data, dict):
        data = orjson.dumps(data)
    with pytest.raises(ProtocolError) as caught:
        decode_command(data)
    return caught.value


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"{'type': 'ping'}", b"nul", b'{"type": "ping", "id": "1"} x', b"NaN", b"\xff\xfe", "\ud800"],
)
def test_invalid_json_is_a_bad_request(data: str | bytes) -> None:
    error = decode_error(data)
    assert error.code is ErrorCode.BAD_REQUEST
    assert error.message.startswith("invalid JSON: ")
    assert error.command_id is None
    assert error.retryable is False


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"[]", "an array"),
        (b'"ping"', "a string"),
        (b"1", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_a_non_object_is_a_bad_request(data: bytes, kind: str) -> None:
    error = decode_error(data)
    assert error.code is ErrorCode.BAD_REQUEST
    assert error.message == f"a command should be a JSON object, not {kind}"


@pytest.mark.parametrize(
    ("frame", "message", "echoed"),
    [
        ({"id": "7"}, "missing command type", None),
        ({"id": "7", "type": None}, "missing command type", None),
        ({"id": "7", "type": "run.stop"}, "unknown command type 'run.stop'", "run.stop"),
        ({"id": "7", "type": ""}, "unknown command type ''", ""),
        ({"id": "7", "type": "PING"}, "unknown command type 'PING'", "PING"),
        ({"id": "7", "type": 3}, "command type should be a string, not a number", None),
        ({"id": "7", "type": ["ping"]}, "command type should be a string, not an array", None),
        ({"id": "7", "type": {"a": 1}}, "command type should be a string, not an object", None),
    ],
)
def test_missing_or_unknown_type(frame: dict[str, Any], message: str, echoed: str | None) -> None:
    error = decode_error(frame)
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert error.message == message
    assert error.details == {"type": echoed}
    assert error.command_id == "7"


def test_a_long_unknown_type_is_echoed_cut() -> None:
    error = decode_error({"id": "7", "type": "x" * 1000})
    assert error.details == {"type": "x" * 64}


def start(**changes: Any) -> dict[str, Any]:
    """A valid run.start with ``changes`` applied (a value of ... deletes the field)."""
    frame = commands()["run.start"][0]
    for key, value in changes.items():
        if value is ...:
            del frame[key]
        else:
            frame[key] = value
    return frame


def message(**fields: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "hi"} | fields]


BAD_FIELDS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, frame, field, message)
    ("id missing", start(id=...), "id", "Field required"),
    ("id empty", start(id=""), "id", "String should have at least 1 character"),
    ("id too long", start(id="x" * 65), "id", "String should have at most 64 characters"),
    ("id not a string", start(id=7), "id", "Input should be a valid string"),
    ("agent_id missing", start(agent_id=...), "agent_id", "Field required"),
    ("agent_id empty", start(agent_id=""), "agent_id", "String should have at least 1 character"),
    ("messages missing", start(messages=...), "messages", "Field required"),
    (
        "messages empty",
        start(messages=[]),
        "messages",
        "List should have at least 1 item after validation, not 0",
    ),
    ("messages not a list", start(messages={"role": "user"}), "messages", "Input should be an array"),
    ("message not an object", start(messages=["hi"]), "messages.0", "Input should be an object"),
    (
        "role assistant",
        start(messages=message(role="assistant")),
        "messages.0.role",
        "Input should be 'user'",
    ),
    ("role missing", start(messages=[{"content": "hi"}]), "messages.0.role", "Field required"),
    ("content missing", start(messages=[{"role": "user"}]), "messages.0.content", "Field required"),
    (
        "content a number",
        start(messages=message(content=5)),
        "messages.0.content",
        "Input should be a string or a list of content parts",
    ),
    (
        "content null",
        start(messages=message(content=None)),
        "messages.0.content",
        "Input should be a string or a list of content parts",
    ),
    (
        "content empty string",
        start(messages=message(content="")),
        "messages.0.content",
        "String should have at least 1 character",
    ),
    (
        "content empty list",
        start(messages=message(content=[])),
        "messages.0.content",
        "List should have at least 1 item after validation, not 0",
    ),
    (
        "part of unknown type",
        start(messages=message(content=[{"type": "image", "text": "x"}])),
        "messages.0.content.0.type",
        "Input should be 'text'",
    ),
    (
        "part without text",
        start(messages=message(content=[{"type": "text"}])),
        "messages.0.content.0.text",
        "Field required",
    ),
    (
        "part text a number",
        start(messages=message(content=[{"type": "text", "text": 1}])),
        "messages.0.content.0.text",
        "Input should be a valid string",
    ),
    (
        "otid empty",
        start(messages=message(otid="")),
        "messages.0.otid",
        "String should have at least 1 character",
    ),
    (
        "stream_tokens a string",
        start(stream_tokens="true"),
        "stream_tokens",
        "Input should be a valid boolean",
    ),
    ("stream_tokens 1", start(stream_tokens=1), "stream_tokens", "Input should be a valid boolean"),
    ("max_steps 0", start(max_steps=0), "max_steps", "Input should be greater than or equal to 1"),
    ("max_steps negative", start(max_steps=-3), "max_steps", "Input should be greater than or equal to 1"),
    ("max_steps over cap", start(max_steps=101), "max_steps", "Input should be less than or equal to 100"),
    ("max_steps a string", start(max_steps="5"), "max_steps", "Input should be a valid integer"),
    ("max_steps a float", start(max_steps=5.0), "max_steps", "Input should be a valid integer"),
    ("max_steps a bool", start(max_steps=True), "max_steps", "Input should be a valid integer"),
    ("if_busy unknown", start(if_busy="wait"), "if_busy", "Input should be 'reject' or 'queue'"),
    (
        "idempotency_key empty",
        start(idempotency_key=""),
        "idempotency_key",
        "String should have at least 1 character",
    ),
    (
        "idempotency_key too long",
        start(idempotency_key="k" * 257),
        "idempotency_key",
        "String should have at most 256 characters",
    ),
    (
        "hello token a number",
        {"type": "hello", "id": "1", "token": 5},
        "token",
        "Input should be a valid string",
    ),
    (
        "hello client a string",
        {"type": "hello", "id": "1", "client": "web"},
        "client",
        "Input should be an object",
    ),
    (
        "hello client no version",
        {"type": "hello", "id": "1", "client": {"name": "web"}},
        "client.version",
        "Field required",
    ),
    ("subscribe run_id missing", {"type": "run.subscribe", "id": "1"}, "run_id", "Field required"),
    (
        "subscribe after negative",
        {"type": "run.subscribe", "id": "1", "run_id": "r", "after": -1},
        "after",
        "Input should be greater than or equal to 0",
    ),
    (
        "subscribe after a string",
        {"type": "run.subscribe", "id": "1", "run_id": "r", "after": "3"},
        "after",
        "Input should be a valid integer",
    ),
    (
        "unsubscribe run_id a number",
        {"type": "run.unsubscribe", "id": "1", "run_id": 5},
        "run_id",
        "Input should be a valid string",
    ),
    (
        "cancel mode unknown",
        {"type": "run.cancel", "id": "1", "run_id": "r", "mode": "now"},
        "mode",
        "Input should be 'immediate' or 'after_step'",
    ),
    (
        "respond decisions missing",
        {"type": "approval.respond", "id": "1", "run_id": "r"},
        "decisions",
        "Field required",
    ),
    (
        "respond decisions empty",
        {"type": "approval.respond", "id": "1", "run_id": "r", "decisions": []},
        "decisions",
        "List should have at least 1 item after validation, not 0",
    ),
    (
        "respond approve a string",
        {
            "type": "approval.respond",
            "id": "1",
            "run_id": "r",
            "decisions": [{"tool_call_id": "t", "approve": "yes"}],
        },
        "decisions.0.approve",
        "Input should be a valid boolean",
    ),
    (
        "respond approve 0",
        {
            "type": "approval.respond",
            "id": "1",
            "run_id": "r",
            "decisions": [{"tool_call_id": "t", "approve": 0}],
        },
        "decisions.0.approve",
        "Input should be a valid boolean",
    ),
    (
        "respond approve missing",
        {"type": "approval.respond", "id": "1", "run_id": "r", "decisions": [{"tool_call_id": "t"}]},
        "decisions.0.approve",
        "Field required",
    ),
    (
        "respond tool_call_id missing",
        {"type": "approval.respond", "id": "1", "run_id": "r", "decisions": [{"approve": True}]},
        "decisions.0.tool_call_id",
        "Field required",
    ),
    (
        "respond reason a number",
        {
            "type": "approval.respond",
            "id": "1",
            "run_id": "r",
            "decisions": [{"tool_call_id": "t", "approve": False, "reason": 3}],
        },
        "decisions.0.reason",
        "Input should be a valid string",
    ),
    ("ping id missing", {"type": "ping"}, "id", "Field required"),
]


@pytest.mark.parametrize(
    ("frame", "field", "text"), [case[1:] for case in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
def test_bad_fields_are_named(frame: dict[str, Any], field: str, text: str) -> None:
    error = decode_error(frame)
    assert error.code is ErrorCode.BAD_REQUEST
    assert error.retryable is False
    assert error.details["errors"] == [{"field": field, "message": text}]
    assert error.message == f"invalid {frame['type']}: {field}: {text}"


def test_the_id_is_echoed_when_valid() -> None:
    assert decode_error(start(agent_id="")).command_id == "c1"
    assert decode_error({"type": "nope", "id": "abc"}).command_id == "abc"
    # An invalid id cannot be echoed.
    assert decode_error(start(id="x" * 65, agent_id="")).command_id is None
    assert decode_error(start(id=7)).command_id is None
    assert decode_error({"type": "nope", "id": ["abc"]}).command_id is None


def test_several_bad_fields_are_all_listed() -> None:
    error = decode_error(start(agent_id=5, stream_tokens="no", messages=message(role="system")))
    assert error.details == {
        "errors": [
            {"field": "agent_id", "message": "Input should be a valid string"},
            {"field": "messages.0.role", "message": "Input should be 'user'"},
            {"field": "stream_tokens", "message": "Input should be a valid boolean"},
        ]
    }
    assert error.message == "invalid run.start: agent_id: Input should be a valid string (and 2 more)"


def test_a_flood_of_bad_fields_is_cut() -> None:
    decisions = [{"tool_call_id": "t", "approve": "yes"}] * 50
    error = decode_error({"type": "approval.respond", "id": "1", "run_id": "r", "decisions": decisions})
    assert len(error.details["errors"]) == MAX_REPORTED_ERRORS
    assert error.details["error_count"] == 50
    assert error.details["errors"][9] == {
        "field": "decisions.9.approve",
        "message": "Input should be a valid boolean",
    }
    assert error.message.endswith("(and 49 more)")
