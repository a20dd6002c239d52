from __future__ import annotations

from typing import get_args

from protocol.events import EventRunStatus
from protocol.runs import (
    EVENT_STATUSES,
    FAILING_STOP_REASONS,
    TERMINAL_STATUS,
    TERMINAL_STATUSES,
    RunStatus,
    StopReason,
)


def test_run_statuses_are_the_spec_ones() -> None:
    assert {str(status) for status in RunStatus} == {
        "queued",
        "running",
        "awaiting_approval",
        "completed",
        "failed",
        "cancelled",
        "cancelling",
    }
    assert TERMINAL_STATUSES == {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
    assert [status for status in RunStatus if status.terminal] == ["completed", "failed", "cancelled"]


def test_cancelling_is_never_an_event_status() -> None:
    assert RunStatus.CANCELLING not in EVENT_STATUSES
    assert EVENT_STATUSES == set(RunStatus) - {RunStatus.CANCELLING}
    # The literal spelt out for the schema agrees with the enum.
    assert set(get_args(EventRunStatus)) == {str(status) for status in EVENT_STATUSES}


def test_each_stop_reason_gives_the_spec_terminal_status() -> None:
    assert TERMINAL_STATUS == {
        "end_turn": "completed",
        "max_steps": "completed",
        "refusal": "completed",
        "error": "failed",
        "llm_api_error": "failed",
        "invalid_tool_call": "failed",
        "max_tokens_exceeded": "failed",
        "cancelled": "cancelled",
    }
    assert set(TERMINAL_STATUS) == set(StopReason)
    assert all(status.terminal for status in TERMINAL_STATUS.values())
    assert StopReason.REFUSAL.terminal_status is RunStatus.COMPLETED


def test_failing_stop_reasons_are_those_that_fail_the_run() -> None:
    assert FAILING_STOP_REASONS == {"error", "llm_api_error", "invalid_tool_call", "max_tokens_exceeded"}
