"""Run event models: the sample dicts of docs/internals.md round-trip; bad ones are refused."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import ValidationError

from protocol import EVENT_MODELS, EVENT_TYPES, SERVER_FRAME_TYPES, validate_ack_result, validate_event
from protocol.events import DELTA_EVENT_TYPES, AnyRunEvent, AnyServerFrame, validate_server_frame
from protocol.results import ACK_RESULTS, HelloResult, RunStartResult

from .samples import DATE, all_events, events


@pytest.mark.parametrize("event", all_events(), ids=lambda e: e["message_type"])
def test_every_sample_event_round_trips(event: dict[str, Any]) -> None:
    model = validate_event(event)
    assert type(model) is EVENT_MODELS[event["message_type"]]
    assert model.model_dump(mode="json", exclude_unset=True) == event


def test_samples_cover_every_event_type() -> None:
    assert list(events()) == list(EVENT_TYPES)


def test_event_types_drift_guard() -> None:
    union_types = [
        get_args(model.model_fields["message_type"].annotation)[0] for model in get_args(AnyRunEvent)
    ]
    assert union_types == list(EVENT_TYPES)
    assert list(EVENT_MODELS) == list(EVENT_TYPES)
    assert DELTA_EVENT_TYPES < set(EVENT_TYPES)
    frame_types = [get_args(model.model_fields["type"].annotation)[0] for model in get_args(AnyServerFrame)]
    assert frame_types == list(SERVER_FRAME_TYPES)


def sample(message_type: str, index: int = 0, **changes: Any) -> dict[str, Any]:
    """A sample event with ``changes`` applied (a value of ... deletes the field)."""
    event = events()[message_type][index]
    for key, value in changes.items():
        if value is ...:
            del event[key]
        else:
            event[key] = value
    return event


INVALID = [
    ("cancelling is no event status", sample("run_status", status="cancelling")),
    ("terminal status without stop_reason", sample("run_status", status="completed")),
    ("running with a stop_reason", sample("run_status", stop_reason="end_turn")),
    ("stop_reason giving another status", sample("run_status", 3, stop_reason="error")),
    ("failed by end_turn", sample("run_status", 4, stop_reason="end_turn")),
    ("run_status with a message id", sample("run_status", id="message-1")),
    ("unknown message_type", {**sample("assistant_message"), "message_type": "system_message"}),
    ("unknown field", sample("assistant_message", extra="x")),
    ("message without date", sample("assistant_message", date=...)),
    ("message without otid", sample("assistant_message", otid=...)),
    ("message without step_id", sample("assistant_message", step_id=...)),
    ("date not UTC", sample("assistant_message", date="2025-06-01T12:00:00+02:00")),
    ("date without zone", sample("assistant_message", date="2025-06-01T12:00:00")),
    ("date not a date", sample("assistant_message", date="yesterday")),
    ("content a number", sample("assistant_message", content=5)),
    ("reasoning source", sample("reasoning_message", source="non_reasoner_model")),
    ("hidden state", sample("hidden_reasoning_message", state="omitted")),
    ("tool call without id", sample("tool_call_message", tool_call={"name": "f", "arguments": "{}"})),
    (
        "tool call arguments an object",
        sample("tool_call_message", tool_call={"tool_call_id": "t", "arguments": {}}),
    ),
    ("approval request empty", sample("approval_request_message", tool_calls=[])),
    (
        "approval request without name",
        sample("approval_request_message", tool_calls=[{"tool_call_id": "t", "arguments": "{}"}]),
    ),
    (
        "approval response approve a string",
        sample("approval_response_message", approvals=[{"tool_call_id": "t", "approve": "1"}]),
    ),
    (
        "tool return status",
        sample(
            "tool_return_message", tool_returns=[{"tool_call_id": "t", "status": "ok", "tool_return": "1"}]
        ),
    ),
    ("error_message retryable missing", sample("error_message", retryable=...)),
    ("stop_reason unknown", sample("stop_reason", stop_reason="timeout")),
    ("usage negative", sample("usage_statistics", prompt_tokens=-1)),
    ("usage a float", sample("usage_statistics", total_tokens=1.0)),
    ("usage a string", sample("usage_statistics", step_count="2")),
]


@pytest.mark.parametrize("event", [case[1] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_events_are_refused(event: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate_event(event)


def test_dates_in_utc_are_accepted_in_both_spellings() -> None:
    for date in (DATE, "2025-06-01T12:00:00+00:00", "2025-06-01T12:00:00Z"):
        assert (
            validate_event(sample("assistant_message", date=date)).model_dump(exclude_unset=True)["date"]
            == date
        )


def test_optional_fields_may_be_null() -> None:
    assert validate_event(sample("reasoning_message", signature=None)).signature is None  # type: ignore[union-attr]
    usage = validate_event(sample("usage_statistics", cached_input_tokens=None))
    assert usage.cached_input_tokens is None  # type: ignore[union-attr]
    call = validate_event(
        sample("tool_call_message", 1, tool_call={"tool_call_id": "t", "name": None, "arguments": "{"})
    )
    assert call.tool_call.name is None  # type: ignore[union-attr]


def frame(event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "event", "run_id": "run-1", "seq": 5, "event": event} | fields


@pytest.mark.parametrize(
    "bad",
    [
        frame(sample("assistant_message"), seq=0),
        frame(sample("assistant_message"), seq="5"),
        frame(sample("assistant_message"), seq_from=5),
        frame(sample("assistant_message"), seq_from=6),
        frame(sample("assistant_message"), seq_from=0),
        frame(sample("run_status"), seq_from=3),
        frame(sample("tool_return_message"), seq_from=3),
        frame(sample("assistant_message"), run_id=""),
        frame(sample("assistant_message"), extra=1),
        {"type": "ack", "id": "1"},
        {"type": "ack", "id": "", "result": {}},
        {"type": "error", "id": "1", "error": {"code": "oops", "message": "m", "retryable": False}},
        {"type": "error", "error": {"code": "internal", "message": "m", "retryable": False}},
        {"type": "goodbye", "code": 1234, "reason": "x"},
        {"type": "hello", "id": "1"},
    ],
)
def test_invalid_server_frames_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate_server_frame(bad)


def test_merged_deltas_frame() -> None:
    for message_type in sorted(DELTA_EVENT_TYPES):
        model = validate_server_frame(frame(sample(message_type), seq_from=2))
        assert model.seq_from == 2 and model.seq == 5  # type: ignore[union-attr]


ACKS: dict[str, list[dict[str, Any]]] = {
    "hello": [
        {
            "connection_id": "conn-1",
            "protocol": "agentgw.v1",
            "server": {"name": "agent-gateway", "version": "0.1.0"},
            "heartbeat_s": 20,
            "limits": {"max_frame_bytes": 1048576, "max_subscriptions": 100},
        }
    ],
    "run.start": [
        {"run_id": "run-1", "epoch": "ep-1", "status": "running"},
        {"run_id": "r", "epoch": "e", "status": "queued"},
    ],
    "run.subscribe": [
        {"run_id": "run-1", "status": "running", "last_seq": 0, "epoch": "ep-1", "recovered": True}
    ],
    "run.unsubscribe": [{}],
    "run.cancel": [{"run_id": "run-1", "status": "cancelling"}, {"run_id": "run-1", "status": "completed"}],
    "approval.respond": [{"run_id": "run-1", "pending": ["toolu_2"]}, {"run_id": "run-1", "pending": []}],
    "ping": [{}],
}


def test_ack_results_cover_every_command() -> None:
    assert set(ACKS) == set(ACK_RESULTS)


@pytest.mark.parametrize(("command_type", "result"), [(t, r) for t, rs in ACKS.items() for r in rs])
def test_ack_results_validate(command_type: str, result: dict[str, Any]) -> None:
    model = validate_ack_result(command_type, result)
    assert model.model_dump(mode="json", exclude_unset=True) == result
    validate_server_frame({"type": "ack", "id": "1", "result": result})


@pytest.mark.parametrize(
    ("command_type", "result"),
    [
        ("hello", ACKS["hello"][0] | {"protocol": "agentgw.v2"}),
        ("hello", ACKS["hello"][0] | {"heartbeat_s": 0}),
        ("run.start", {"run_id": "run-1", "status": "running"}),
        ("run.subscribe", ACKS["run.subscribe"][0] | {"recovered": "yes"}),
        ("run.subscribe", ACKS["run.subscribe"][0] | {"last_seq": -1}),
        ("run.cancel", {"run_id": "run-1", "status": "stopping"}),
        ("ping", {"pong": True}),
    ],
)
def test_invalid_ack_results_are_refused(command_type: str, result: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate_ack_result(command_type, result)


def test_hello_protocol_is_the_subprotocol() -> None:
    from protocol.limits import SUBPROTOCOL

    assert get_args(HelloResult.model_fields["protocol"].annotation) == (SUBPROTOCOL,)
    assert RunStartResult.model_validate(ACKS["run.start"][0]).status == "running"
