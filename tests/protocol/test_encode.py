"""The encoders: exact envelope shapes and key order, and frames that validate."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from protocol import (
    CloseCode,
    CommandError,
    ErrorCode,
    RunStatus,
    StopReason,
    encode_ack,
    encode_command_error,
    encode_error,
    encode_event,
    encode_goodbye,
    validate_server_frame,
)
from protocol.events import AckFrame, ErrorFrame, EventFrame, GoodbyeFrame

from .samples import all_events, events


def test_encode_ack() -> None:
    data = encode_ack("c1", {"run_id": "run-1", "epoch": "ep", "status": RunStatus.RUNNING})
    assert data == b'{"type":"ack","id":"c1","result":{"run_id":"run-1","epoch":"ep","status":"running"}}'
    assert isinstance(validate_server_frame(data), AckFrame)


def test_encode_ack_defaults_to_an_empty_result() -> None:
    assert encode_ack("p1") == b'{"type":"ack","id":"p1","result":{}}'
    assert encode_ack("p1", {}) == b'{"type":"ack","id":"p1","result":{}}'


def test_encode_error() -> None:
    data = encode_error("c1", ErrorCode.AGENT_BUSY, "agent is busy", details={"active_run_id": "run-0"})
    assert orjson.loads(data) == {
        "type": "error",
        "id": "c1",
        "error": {
            "code": "agent_busy",
            "message": "agent is busy",
            "retryable": True,
            "details": {"active_run_id": "run-0"},
        },
    }
    assert list(orjson.loads(data)) == ["type", "id", "error"]
    assert isinstance(validate_server_frame(data), ErrorFrame)


def test_encode_error_without_id_nor_details() -> None:
    data = encode_error(None, ErrorCode.BAD_REQUEST, "invalid JSON: ...")
    assert data == (
        b'{"type":"error","id":null,"error":'
        b'{"code":"bad_request","message":"invalid JSON: ...","retryable":false}}'
    )
    assert isinstance(validate_server_frame(data), ErrorFrame)


def test_encode_error_retryable_can_be_overridden() -> None:
    error = orjson.loads(encode_error("1", ErrorCode.INTERNAL, "internal error", retryable=False))["error"]
    assert error["retryable"] is False


def test_encode_command_error() -> None:
    error = CommandError(ErrorCode.NOT_FOUND, "run not found", command_id="s1")
    assert error.retryable is False and error.details == {}
    assert encode_command_error(error) == (
        b'{"type":"error","id":"s1","error":{"code":"not_found","message":"run not found","retryable":false}}'
    )
    busy = CommandError(ErrorCode.AGENT_BUSY, "busy", details={"active_run_id": "r"}, command_id="c")
    assert orjson.loads(encode_command_error(busy))["error"]["details"] == {"active_run_id": "r"}
    assert str(busy) == "agent_busy: busy"


def test_encode_event() -> None:
    event = {
        "message_type": "assistant_message",
        "id": "m",
        "otid": "o",
        "step_id": "s",
        "date": "x",
        "content": "Hi",
    }
    data = encode_event("run-1", 5, event)
    assert data == (
        b'{"type":"event","run_id":"run-1","seq":5,"event":{"message_type":"assistant_message",'
        b'"id":"m","otid":"o","step_id":"s","date":"x","content":"Hi"}}'
    )


def test_encode_event_with_seq_from_puts_it_last() -> None:
    event = events()["assistant_message"][0]
    decoded = orjson.loads(encode_event("run-1", 9, event, seq_from=6))
    assert list(decoded) == ["type", "run_id", "seq", "event", "seq_from"]
    assert decoded == {"type": "event", "run_id": "run-1", "seq": 9, "event": event, "seq_from": 6}
    frame = validate_server_frame(decoded)
    assert isinstance(frame, EventFrame) and frame.seq_from == 6


def test_encode_event_encodes_enums_as_values() -> None:
    event = {"message_type": "run_status", "status": RunStatus.COMPLETED, "stop_reason": StopReason.END_TURN}
    assert orjson.loads(encode_event("r", 3, event))["event"] == {
        "message_type": "run_status",
        "status": "completed",
        "stop_reason": "end_turn",
    }


@pytest.mark.parametrize("event", all_events(), ids=lambda e: e["message_type"])
def test_every_sample_event_encodes_to_a_valid_frame(event: dict[str, object]) -> None:
    data = encode_event("run-1", 42, dict(event))
    frame = validate_server_frame(data)
    assert isinstance(frame, EventFrame)
    assert frame.model_dump(mode="json", exclude_unset=True) == orjson.loads(data)


def test_encode_goodbye() -> None:
    data = encode_goodbye(CloseCode.GOING_AWAY, "server shutting down")
    assert data == b'{"type":"goodbye","code":1001,"reason":"server shutting down"}'
    assert isinstance(validate_server_frame(data), GoodbyeFrame)
    assert encode_goodbye(4408, "slow consumer") == b'{"type":"goodbye","code":4408,"reason":"slow consumer"}'


def test_goodbye_never_carries_1006() -> None:
    with pytest.raises(ValidationError):
        validate_server_frame(encode_goodbye(CloseCode.ABNORMAL_CLOSURE, "lost"))


def test_encoders_produce_utf8_text() -> None:
    data = encode_event("r", 1, {**events()["assistant_message"][0], "content": "héllo 🌍"})
    assert "héllo 🌍" in data.decode("utf-8")
