"""Sample frames and run events, shaped exactly as PROTOCOL.md and docs/internals.md say.

Shared by the protocol tests; each sample is a fresh dict (call the functions) so that a
test may mutate it.
"""

from __future__ import annotations

from typing import Any

DATE = "2025-06-01T12:00:00.123456Z"


def commands() -> dict[str, list[dict[str, Any]]]:
    """For each command type, a minimal and a full valid command."""
    return {
        "hello": [
            {"type": "hello", "id": "h1"},
            {"type": "hello", "id": "h2", "token": "secret", "client": {"name": "web", "version": "1.0"}},
        ],
        "run.start": [
            {
                "type": "run.start",
                "id": "c1",
                "agent_id": "agent-1",
                "messages": [{"role": "user", "content": "Hello"}],
            },
            {
                "type": "run.start",
                "id": "c2",
                "agent_id": "agent-1",
                "messages": [
                    {"role": "user", "content": "Roll a die", "otid": "otid-1"},
                    {"role": "user", "content": [{"type": "text", "text": "and another"}]},
                ],
                "stream_tokens": False,
                "max_steps": 10,
                "idempotency_key": "key-1",
                "if_busy": "queue",
            },
        ],
        "run.subscribe": [
            {"type": "run.subscribe", "id": "s1", "run_id": "run-1"},
            {"type": "run.subscribe", "id": "s2", "run_id": "run-1", "after": 7, "epoch": "ep-1"},
        ],
        "run.unsubscribe": [{"type": "run.unsubscribe", "id": "u1", "run_id": "run-1"}],
        "run.cancel": [
            {"type": "run.cancel", "id": "x1", "run_id": "run-1"},
            {"type": "run.cancel", "id": "x2", "run_id": "run-1", "mode": "after_step"},
        ],
        "approval.respond": [
            {
                "type": "approval.respond",
                "id": "a1",
                "run_id": "run-1",
                "decisions": [{"tool_call_id": "toolu_1", "approve": True}],
            },
            {
                "type": "approval.respond",
                "id": "a2",
                "run_id": "run-1",
                "decisions": [
                    {"tool_call_id": "toolu_1", "approve": True, "reason": "fine"},
                    {"tool_call_id": "toolu_2", "approve": False, "reason": "too risky"},
                ],
            },
        ],
        "ping": [{"type": "ping", "id": "p1"}],
    }


def _message(message_type: str, otid: str = "otid-a", step_id: str | None = "step-1") -> dict[str, Any]:
    """The fields every message event carries, ``message_type`` first."""
    return {"message_type": message_type, "id": "message-1", "otid": otid, "step_id": step_id, "date": DATE}


def events() -> dict[str, list[dict[str, Any]]]:
    """For each message_type, sample events covering its optional fields."""
    return {
        "run_status": [
            {"message_type": "run_status", "status": "running"},
            {"message_type": "run_status", "status": "queued"},
            {"message_type": "run_status", "status": "awaiting_approval"},
            {"message_type": "run_status", "status": "completed", "stop_reason": "end_turn"},
            {"message_type": "run_status", "status": "failed", "stop_reason": "llm_api_error"},
            {"message_type": "run_status", "status": "cancelled", "stop_reason": "cancelled"},
        ],
        "user_message": [
            {**_message("user_message", otid="otid-user", step_id=None), "content": "Hello"},
            {
                **_message("user_message", otid="otid-user", step_id=None),
                "content": [{"type": "text", "text": "Hello"}],
            },
        ],
        "reasoning_message": [
            {**_message("reasoning_message"), "reasoning": "Let me think", "source": "reasoner_model"},
            {
                **_message("reasoning_message"),
                "reasoning": "",
                "source": "reasoner_model",
                "signature": "EqQBCkYIBBgCIkB",
            },
        ],
        "hidden_reasoning_message": [
            {**_message("hidden_reasoning_message"), "state": "redacted", "hidden_reasoning": "EmwKAhgB"}
        ],
        "assistant_message": [{**_message("assistant_message"), "content": "Teamwork makes"}],
        "tool_call_message": [
            {
                **_message("tool_call_message"),
                "tool_call": {"tool_call_id": "toolu_1", "name": "roll_dice", "arguments": ""},
            },
            {
                **_message("tool_call_message"),
                "tool_call": {"tool_call_id": "toolu_1", "arguments": '{"num_'},
            },
            {
                **_message("tool_call_message"),
                "tool_call": {
                    "tool_call_id": "toolu_2",
                    "name": "roll_dice",
                    "arguments": '{"num_sides": 16}',
                },
            },
        ],
        "approval_request_message": [
            {
                **_message("approval_request_message"),
                "tool_calls": [
                    {"tool_call_id": "toolu_1", "name": "roll_dice", "arguments": '{"num_sides": 16}'},
                    {"tool_call_id": "toolu_2", "name": "roll_dice", "arguments": '{"num_sides": 6}'},
                ],
            }
        ],
        "approval_response_message": [
            {
                **_message("approval_response_message"),
                "approvals": [
                    {"tool_call_id": "toolu_1", "approve": True},
                    {"tool_call_id": "toolu_2", "approve": False, "reason": "too risky"},
                ],
            }
        ],
        "tool_return_message": [
            {
                **_message("tool_return_message"),
                "tool_returns": [
                    {"tool_call_id": "toolu_1", "status": "success", "tool_return": "7"},
                    {
                        "tool_call_id": "toolu_2",
                        "status": "error",
                        "tool_return": "denied: too risky",
                        "stdout": [],
                        "stderr": ["Traceback ..."],
                    },
                ],
            }
        ],
        "error_message": [
            {
                "message_type": "error_message",
                "error_type": "llm_api_error",
                "message": "The model API is overloaded",
                "retryable": True,
            },
            {
                "message_type": "error_message",
                "id": "message-9",
                "otid": "otid-e",
                "step_id": "step-2",
                "date": DATE,
                "error_type": "internal",
                "message": "internal error",
                "retryable": False,
            },
        ],
        "stop_reason": [{"message_type": "stop_reason", "stop_reason": "end_turn"}],
        "usage_statistics": [
            {
                "message_type": "usage_statistics",
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "total_tokens": 150,
                "step_count": 2,
            },
            {
                "message_type": "usage_statistics",
                "prompt_tokens": 1200,
                "completion_tokens": 30,
                "total_tokens": 1230,
                "step_count": 1,
                "cached_input_tokens": 1000,
                "cache_write_tokens": 100,
            },
        ],
    }


def all_events() -> list[dict[str, Any]]:
    """Every sample event, flattened."""
    return [event for samples in events().values() for event in samples]
