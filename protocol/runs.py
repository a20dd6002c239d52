"""Run statuses and stop reasons (PROTOCOL.md section 4), and how they relate.

A run ends exactly once, with a :class:`StopReason`. The stop reason alone decides the
terminal :class:`RunStatus` (:data:`TERMINAL_STATUS`), and the run's event log closes with
``[error_message,] stop_reason, usage_statistics, run_status(terminal, stop_reason)`` in that
order; the ``error_message`` is there exactly when the stop reason is in
:data:`FAILING_STOP_REASONS`.

The order in which the live statuses may follow each other is the server's run state
machine (``gateway/runs``), not part of this module.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "EVENT_STATUSES",
    "FAILING_STOP_REASONS",
    "TERMINAL_STATUS",
    "TERMINAL_STATUSES",
    "RunStatus",
    "StopReason",
]


class RunStatus(StrEnum):
    """Where a run is in its life."""

    #: Accepted while its agent was busy (``if_busy: "queue"``); starts when the agent is free.
    QUEUED = "queued"
    #: Calling the model or running tools.
    RUNNING = "running"
    #: Parked until every pending tool call is decided; holds no model request open.
    AWAITING_APPROVAL = "awaiting_approval"
    #: Terminal: stopped by ``end_turn``, ``max_steps`` or ``refusal``.
    COMPLETED = "completed"
    #: Terminal: stopped by an error; an ``error_message`` preceded the stop.
    FAILED = "failed"
    #: Terminal: stopped by ``run.cancel``.
    CANCELLED = "cancelled"
    #: Ack-only: a ``run.cancel`` ack says the cancel was accepted and the run is stopping.
    #: Never appears in a ``run_status`` event and is never persisted.
    CANCELLING = "cancelling"

    @property
    def terminal(self) -> bool:
        """Whether the run has ended: nothing about it changes any more."""
        return self in TERMINAL_STATUSES


#: The statuses a run ends in.
TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
)

#: The statuses a ``run_status`` event may carry: all but ``cancelling``.
EVENT_STATUSES: frozenset[RunStatus] = frozenset(RunStatus) - {RunStatus.CANCELLING}


class StopReason(StrEnum):
    """Why a run ended (Letta's stop reasons)."""

    #: The model finished its turn without calling a tool.
    END_TURN = "end_turn"
    #: The run took ``max_steps`` steps and the model still wanted to go on.
    MAX_STEPS = "max_steps"
    #: The model refused to answer.
    REFUSAL = "refusal"
    #: Any failure of the gateway itself (a bug, a lost process, a store error).
    ERROR = "error"
    #: The model API failed (HTTP error, overload, a broken stream) beyond the client's retries.
    LLM_API_ERROR = "llm_api_error"
    #: The model called a tool that does not exist, or with arguments that are not JSON.
    INVALID_TOOL_CALL = "invalid_tool_call"
    #: The model hit its output token limit in a way the run cannot recover from.
    MAX_TOKENS_EXCEEDED = "max_tokens_exceeded"
    #: ``run.cancel``.
    CANCELLED = "cancelled"

    @property
    def terminal_status(self) -> RunStatus:
        """The status a run stopped for this reason ends in."""
        return TERMINAL_STATUS[self]


#: The terminal status each stop reason gives (spec section 4). Total over StopReason.
TERMINAL_STATUS: dict[StopReason, RunStatus] = {
    StopReason.END_TURN: RunStatus.COMPLETED,
    StopReason.MAX_STEPS: RunStatus.COMPLETED,
    StopReason.REFUSAL: RunStatus.COMPLETED,
    StopReason.ERROR: RunStatus.FAILED,
    StopReason.LLM_API_ERROR: RunStatus.FAILED,
    StopReason.INVALID_TOOL_CALL: RunStatus.FAILED,
    StopReason.MAX_TOKENS_EXCEEDED: RunStatus.FAILED,
    StopReason.CANCELLED: RunStatus.CANCELLED,
}

#: The stop reasons of a failed run: the log carries an ``error_message`` just before their
#: ``stop_reason`` event. Exactly those mapped to ``failed``.
FAILING_STOP_REASONS: frozenset[StopReason] = frozenset(
    reason for reason, status in TERMINAL_STATUS.items() if status is RunStatus.FAILED
)
