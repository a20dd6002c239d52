"""The run lifecycle as data. Everything that changes a run's status goes through `advance`.

    queued ──start──▶ running ──park──▶ awaiting_approval
      │                 │  ▲                  │
      │                 │  └──────resume──────┘
      ▼                 ▼                     ▼
    cancelled      completed / failed / cancelled  (terminal: no way out)

`TRANSITIONS[status][action]` is the new status; a missing entry is an illegal move and
raises `IllegalTransition` (a bug in the gateway, never a client's fault).
"""

from __future__ import annotations

from enum import StrEnum

from protocol.runs import RunStatus

Status = RunStatus  # the protocol's statuses; `cancelling` is ack-only and has no row here


class Action(StrEnum):
    START = "start"
    PARK = "park"  # wait for approval decisions, holding no task
    RESUME = "resume"  # every pending call decided
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"


TRANSITIONS: dict[Status, dict[Action, Status]] = {
    Status.QUEUED: {
        Action.START: Status.RUNNING,
        Action.CANCEL: Status.CANCELLED,
        Action.FAIL: Status.FAILED,
    },
    Status.RUNNING: {
        Action.PARK: Status.AWAITING_APPROVAL,
        Action.COMPLETE: Status.COMPLETED,
        Action.FAIL: Status.FAILED,
        Action.CANCEL: Status.CANCELLED,
    },
    Status.AWAITING_APPROVAL: {
        Action.RESUME: Status.RUNNING,
        Action.CANCEL: Status.CANCELLED,
        Action.FAIL: Status.FAILED,
    },
    Status.COMPLETED: {},
    Status.FAILED: {},
    Status.CANCELLED: {},
}

TERMINAL = frozenset(s for s, moves in TRANSITIONS.items() if not moves)
LIFECYCLE = frozenset(TRANSITIONS)  # every status a run can be in (all but ack-only `cancelling`)

# Stop reason -> the action that ends the run with it (PROTOCOL.md section 4).
STOP_ACTIONS: dict[str, Action] = {
    "end_turn": Action.COMPLETE,
    "max_steps": Action.COMPLETE,
    "refusal": Action.COMPLETE,
    "error": Action.FAIL,
    "llm_api_error": Action.FAIL,
    "invalid_tool_call": Action.FAIL,
    "max_tokens_exceeded": Action.FAIL,
    "cancelled": Action.CANCEL,
}


class IllegalTransition(RuntimeError):
    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"illegal run transition: {action} from {status}")
        self.status = status
        self.action = action


def advance(status: str, action: Action) -> Status:
    """The status after `action`, or IllegalTransition."""
    try:
        return TRANSITIONS[RunStatus(status)][action]
    except (KeyError, ValueError):
        raise IllegalTransition(status, action) from None


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def diagram() -> str:
    """A Mermaid state diagram drawn from the table (docs/protocol.md embeds it)."""
    lines = ["stateDiagram-v2", "    [*] --> queued", "    [*] --> running"]
    for src, moves in TRANSITIONS.items():
        for action, dst in moves.items():
            lines.append(f"    {src.value} --> {dst.value}: {action.value}")
    lines.extend(f"    {s.value} --> [*]" for s in sorted(TERMINAL))
    return "\n".join(lines)
